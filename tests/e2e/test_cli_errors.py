"""One error path for every command: a malformed or unknown id, a bad argument, a bad date is one line
``error CODE: message`` on stderr and a non-zero exit, never a traceback; and `dfscan scan`'s exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from db import jobs
from db.migrate import upgrade
from db.session import new_engine, new_session_factory
from tests.e2e.test_scan_cli import dfscan
from tests.fixtures.corpus import make_corpus
from tests.fixtures.models import REAL_FAKE, save_tiny_vit

UNKNOWN = str(uuid.UUID(int=0x5EED))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A migrated SQLite database (the id commands need no broker to say an id is unknown)."""
    folder = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{folder / 'dfscan.db'}"
    upgrade(url)
    return {"DFSCAN_DATABASE_URL": url, "DFSCAN_BROKER_URL": "redis://127.0.0.1:1/0"}


def _one_error_line(run: subprocess.CompletedProcess[str], code: str, exit_code: int) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == exit_code, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"error {code}: "), run.stderr
    return lines[0]


# Every command that takes an id, with the id in its place ({} is replaced).
ID_COMMANDS = [
    ("status", "{}"),
    ("results", "{}"),
    ("results", "--cursor", "{}"),
    ("check", "{}"),
    ("webhooks", "redeliver", "{}"),
    ("webhooks", "redeliver", "--submission", "{}"),
    ("webhooks", "list", "--submission", "{}"),
    ("train", "status", "{}"),
    ("train", "cancel", "{}"),
]
# `results SUBMISSION` and `webhooks ... --submission` with an unknown id are empty answers, not errors.
UNKNOWN_IS_EMPTY = {
    ("results", "{}"),
    ("webhooks", "redeliver", "--submission", "{}"),
    ("webhooks", "list", "--submission", "{}"),
}


@pytest.mark.parametrize("command", ID_COMMANDS, ids=lambda c: " ".join(c))
@pytest.mark.parametrize("bad", ["not-a-uuid", "1234", "0b5e3f6a-51c2-4f0e-9a4c-2d1e8b7c6a9"])
def test_a_malformed_id_is_one_bad_argument_line(
    command: tuple[str, ...], bad: str, store: dict[str, str], tmp_path: Path
) -> None:
    run = dfscan(*(bad if part == "{}" else part for part in command), cwd=tmp_path, env=store)
    line = _one_error_line(run, "BAD_ARGUMENT", 2)
    assert repr(bad) in line and "UUID" in line


@pytest.mark.parametrize("command", ID_COMMANDS, ids=lambda c: " ".join(c))
def test_an_unknown_id_is_unknown_id_or_an_empty_answer(
    command: tuple[str, ...], store: dict[str, str], tmp_path: Path
) -> None:
    run = dfscan(*(UNKNOWN if part == "{}" else part for part in command), cwd=tmp_path, env=store)
    if command in UNKNOWN_IS_EMPTY:
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
        return
    line = _one_error_line(run, "UNKNOWN_ID", 1)
    assert UNKNOWN in line


@pytest.mark.parametrize(
    ("args", "code", "exit_code", "says"),
    [
        (("results", "--since", "yesterdayish"), "BAD_ARGUMENT", 2, "not a date"),
        (("results", "--label", "maybe"), "BAD_ARGUMENT", 2, "fake or real"),
        (("results", "--limit", "0"), "BAD_ARGUMENT", 2, "--limit"),
        (("webhooks", "redeliver"), "BAD_ARGUMENT", 2, "--failed"),
        (("webhooks", "redeliver", UNKNOWN, "--failed"), "BAD_ARGUMENT", 2, "not both"),
        (("webhooks", "redeliver", "--since", "soon"), "BAD_ARGUMENT", 2, "not a date"),
        (("models", "promote"), "BAD_ARGUMENT", 2, "--default"),
        (("models", "promote", "no-such-version"), "UNKNOWN_ID", 1, "not registered"),
        (("models", "rollback"), "NOTHING_TO_ROLL_BACK", 1, "DFSCAN_MODEL"),
        (("no-such-command",), "BAD_ARGUMENT", 2, "No such command"),
        (("status",), "BAD_ARGUMENT", 2, "Missing argument"),
        (("check", UNKNOWN, "--deadline", "soon"), "BAD_ARGUMENT", 2, "--deadline"),
        (("submit", "a.png", "--callback-url", "http://10.0.0.1/x"), "BLOCKED_DESTINATION", 2, "10.0.0.1"),
        (
            ("submit", "a.png", "--callback-url", "https://hooks.example.com/" + "a" * 2100),
            "CALLBACK_URL_TOO_LONG",
            2,
            "2048",
        ),
        (("submit", "a.png", "--callback-url", "https://u:hunter2@10.0.0.1/x"), "BLOCKED_DESTINATION", 2, ""),
    ],
)
def test_bad_arguments_are_one_line_with_a_code(
    args: tuple[str, ...], code: str, exit_code: int, says: str, store: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "a.png").write_bytes(b"not read before the callback is checked")
    line = _one_error_line(dfscan(*args, cwd=tmp_path, env=store), code, exit_code)
    assert says in line
    assert "hunter2" not in line


def test_results_since_yesterday_and_paging_through_the_cli(store: dict[str, str], tmp_path: Path) -> None:
    engine = new_engine(store["DFSCAN_DATABASE_URL"])
    with new_session_factory(engine).begin() as session:
        _, rows, _ = jobs.create_submission(session, [f"/img/{i}.png" for i in range(5)], client_ref="post-9")
        for row in rows:
            jobs.finish_failed(session, row.id, code="CORRUPT_IMAGE", message="bad")
    engine.dispose()
    since = dfscan(
        "results",
        "--since",
        "yesterday",
        "--client-ref",
        "post-9",
        "--format",
        "json",
        cwd=tmp_path,
        env=store,
    )
    assert since.returncode == 0, since.stderr
    assert [json.loads(line)["source"] for line in since.stdout.splitlines()] == [
        f"/img/{i}.png" for i in range(5)
    ]
    first = dfscan(
        "results", "--code", "CORRUPT_IMAGE", "--limit", "3", "--format", "json", cwd=tmp_path, env=store
    )
    assert first.returncode == 0 and "more results: add --cursor " in first.stderr, first.stderr
    cursor = first.stderr.split("--cursor ")[1].split()[0]
    rest = dfscan(
        "results", "--code", "CORRUPT_IMAGE", "--cursor", cursor, "--format", "json", cwd=tmp_path, env=store
    )
    sources = [json.loads(line)["source"] for line in (first.stdout + rest.stdout).splitlines()]
    assert sources == [f"/img/{i}.png" for i in range(5)] and "more results" not in rest.stderr
    none = dfscan("results", "--code", "TOO_LARGE", "--format", "json", cwd=tmp_path, env=store)
    assert none.returncode == 0 and none.stdout == ""


# --- `dfscan scan`: 0 all judged, 1 some failed, 2 usage, 4 --fail-on fake -----------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vit(tmp_path_factory.mktemp("models") / "tiny", REAL_FAKE, seed=3)


def test_scan_exit_codes(tmp_path: Path, model: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    good = [path for path, expected in corpus.values() if expected is None]
    bad = next(path for path, expected in corpus.values() if expected is not None)
    env = {"DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'scan.db'}"}
    judged = dfscan("scan", *map(str, good), "--model", str(model), "--format", "json", cwd=tmp_path, env=env)
    assert judged.returncode == 0, judged.stderr
    labels = [json.loads(line)["label"] for line in judged.stdout.splitlines()]
    some_failed = dfscan("scan", str(good[0]), str(bad), "--model", str(model), cwd=tmp_path, env=env)
    assert some_failed.returncode == 1, some_failed.stderr
    usage = dfscan("scan", str(good[0]), "--faces", "sometimes", "--model", str(model), cwd=tmp_path, env=env)
    _one_error_line(usage, "BAD_ARGUMENT", 2)
    fail_on = dfscan(
        "scan", *map(str, good), "--fail-on", "fake", "--model", str(model), cwd=tmp_path, env=env
    )
    assert fail_on.returncode == (4 if "fake" in labels else 0), (labels, fail_on.stderr)
    # A threshold of 0 makes every verdict fake: --fail-on fake must then exit 4, also beside a failure.
    all_fake = {**env, "DFSCAN_THRESHOLD": "0"}
    fake = dfscan(
        "scan", str(good[0]), str(bad), "--fail-on", "fake", "--model", str(model), cwd=tmp_path, env=all_fake
    )
    assert fake.returncode == 4, fake.stderr
    plain = dfscan("scan", str(good[0]), "--model", str(model), cwd=tmp_path, env=all_fake)
    assert plain.returncode == 0 and "fake" in plain.stdout, plain.stderr
    assert "threshold" in plain.stdout  # the threshold each verdict used is shown beside p(fake)


def test_hub_retry_warnings_print_once(tmp_path: Path) -> None:
    code = (
        "from dfscan.cli.main import _setup_logging\n"
        "_setup_logging(False)\n"
        "from huggingface_hub.utils import logging as hub_logging\n"
        "hub_logging.get_logger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("Retrying in 1s [Retry 1/5].") == 1, run.stderr


def test_models_list_shows_the_default_model_and_its_threshold(store: dict[str, str], tmp_path: Path) -> None:
    env = {**store, "DFSCAN_THRESHOLD": "0.9", "DFSCAN_MODEL": "/models/base"}
    listed = dfscan("models", "list", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    default = next(row for row in rows if row["version"] == "default")
    assert default == {**default, "serving": True, "path": "/models/base", "threshold": 0.9}
    table = dfscan("models", "list", cwd=tmp_path, env=env)
    assert "0.9000" in table.stdout and "DFSCAN_MODEL" in table.stdout
    again = dfscan("models", "promote", "--default", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "already serves" in again.stderr
