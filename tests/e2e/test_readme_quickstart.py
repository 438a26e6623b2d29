"""The README's quick starts, run as written, so the README cannot drift from the CLI.

The commands are read from the README's code blocks, not copied here: renaming a command or an option,
or changing what it prints, fails these tests until the README says the same. Two substitutions only,
because a test reaches no hub and shares its machine: a tiny random checkpoint stands in for the hub
model (``DFSCAN_MODEL``), and the service block's Postgres, Redis and upload folder are the test's own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from dfscan.settings import Settings
from tests.fixtures.cli import resolve
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from tests.fixtures.service import Service
from tests.fixtures.videos import make_clip
from tests.fixtures.webhook_receiver import free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp")


def section_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block under ``heading``, comments and blanks dropped."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match, f"README has no '## {heading}' section"
    block = re.search(r"```bash\n(.*?)```", match.group(1), flags=re.S)
    assert block, f"README's '{heading}' section has no bash block"
    lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line]


def dfscan_args(line: str) -> list[str] | None:
    """The arguments after `dfscan` (however the README spells its path), or None for another command."""
    words = shlex.split(line)
    if words and Path(words[0]).name == "dfscan":
        return words[1:]
    return None


def dfscan_shim(directory: Path) -> Path:
    """`.venv/bin/dfscan` (what `make setup` creates) for this interpreter and this checkout."""
    bin_dir = directory / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "dfscan"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dfscan.cli.main "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((120, 160, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)


def make_sources(args: list[str], cwd: Path, home: Path) -> list[Path]:
    """Create what a `dfscan scan`/`submit` line names: a file for each file name, a folder of images
    for anything else (with one in a sub-folder when the line says --recursive). Returns the files made."""
    made: list[Path] = []
    recursive = "--recursive" in args or "-r" in args
    command, rest = resolve(args)
    takes_value = {
        opt
        for param in command.params
        if param.param_type_name == "option" and not param.is_flag
        for opt in param.opts
    }
    for arg, before in zip(rest, ["", *rest[:-1]], strict=True):
        if arg.startswith("-") or "://" in arg or before in takes_value:
            continue
        path = Path(arg.replace("~", str(home), 1) if arg.startswith("~") else arg)
        path = path if path.is_absolute() else cwd / path
        if path.exists():
            continue
        if path.suffix.lower() in VIDEO_SUFFIXES:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(make_clip(seconds=2.0))
            made.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            write_image(path, len(made))
            made.append(path)
        else:
            for name in ("a.jpg", "b.png", "nested/c.jpg") if recursive else ("a.jpg", "b.png"):
                write_image(path / name, len(made))
                made.append(path / name)
    return made


def run(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def start_in_background(
    line: str, cwd: Path, env: dict[str, str], log: Path, ready: Callable[[], bool]
) -> subprocess.Popen[bytes]:
    """Run ``line`` as a long-lived process logging to ``log``; return once ``ready()`` holds (or fail with
    the log's tail when the process dies or two minutes pass: a ceiling, not a timing claim)."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=cwd,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
        time.sleep(0.2)
    return proc


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFSCAN_")}
    env.update({"HF_HUB_OFFLINE": "1", "DFSCAN_THREADS": "1", "COLUMNS": "250", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def test_the_readme_names_real_commands_and_options_in_every_quick_start() -> None:
    blocks = {
        heading: section_block(heading)
        for heading in ("Install and test", "Quick start: scan on one machine", "Quick start: the service")
    }
    assert blocks["Install and test"] == ["make setup", "make test"]
    checked = 0
    for lines in blocks.values():
        for line in lines:
            words = shlex.split(line)
            if words[0] == "export":
                name = words[1].split("=", 1)[0]
                assert name.startswith("DFSCAN_") and name[7:].lower() in Settings.model_fields, line
            elif (args := dfscan_args(line)) is not None:
                command, rest = resolve(args)
                command.make_context(f"dfscan {args[0]}", rest)  # raises on an unknown option or value
                checked += 1
    assert checked >= 8


def test_the_embedded_quick_start_runs_as_written(tmp_path: Path) -> None:
    lines = section_block("Quick start: scan on one machine")
    assert any((dfscan_args(line) or [""])[0] == "scan" for line in lines)
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    model = save_tiny_vit(tmp_path / "model", REAL_FAKE, seed=5)
    bin_dir = dfscan_shim(work)
    env = clean_env(HOME=str(home), DFSCAN_MODEL=str(model), PATH=f"{bin_dir}:{os.environ['PATH']}")

    judged: set[str] = set()
    for line in lines:
        args = dfscan_args(line)
        assert args is not None, f"the embedded quick start runs dfscan only, not {line!r}"
        made = make_sources(args, work, home) if args[0] == "scan" else []
        result = run(line, work, env)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        if args[0] != "scan":
            continue
        summary = " ".join(result.stderr.split())
        assert "0 failed" in summary and "results stored in sqlite:///dfscan.db" in summary, line
        if "--format" in args and args[args.index("--format") + 1] == "json":
            rows = [json.loads(text) for text in result.stdout.splitlines() if text.strip()]
            assert {row["status"] for row in rows} == {"done"}, rows
            assert {row["label"] for row in rows} <= {"real", "fake"}
            assert all(
                0 <= row["fake_score"] <= 1 and row["model_version"].startswith("model@") for row in rows
            )
            assert {Path(row["source"]).name for row in rows} == {p.name for p in made}
            videos = [row for row in rows if Path(row["source"]).suffix in VIDEO_SUFFIXES]
            assert all(row["media"] == "video" and row["frames"] for row in videos)
        judged |= {p.name for p in made}

    db = sqlite3.connect(work / "dfscan.db")  # every file made, the nested one too, has a verdict
    done = db.execute(
        "select source from scan_jobs join verdicts on verdicts.job_id = scan_jobs.id"
    ).fetchall()
    assert sorted(Path(source).name for (source,) in done) == sorted(judged)
    assert db.execute("select count(*) from scan_jobs where state != 'done'").fetchone() == (0,)


def test_the_service_quick_start_runs_as_written(service: Service, tmp_path: Path) -> None:
    """Shell 1 starts the worker; every other line runs in order with the submission id it printed."""
    lines = section_block("Quick start: the service")
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = dfscan_shim(work)
    env = {
        **service.env,
        "COLUMNS": "250",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    roots: list[str] = []
    commands: list[str] = []
    for line in lines:
        words = shlex.split(line)
        if words[0] == "export":
            name, value = words[1].split("=", 1)
            assert name in env, f"{name} is not one of the service's settings"
            if name == "DFSCAN_ALLOWED_ROOTS":
                roots = value.split(",")
            # The README's value names its own servers; the test's are the service fixture's.
            assert value.split(":", 1)[0] == env[name].split(":", 1)[0] or name == "DFSCAN_ALLOWED_ROOTS"
        else:
            commands.append(line)
    assert roots, "the service quick start sets DFSCAN_ALLOWED_ROOTS"

    def local(line: str) -> str:
        for root in roots:
            line = line.replace(root, str(service.images))
        return line

    submission = ""
    worker: subprocess.Popen[bytes] | None = None
    log = tmp_path / "worker.log"
    try:
        for line in map(local, commands):
            args = dfscan_args(line)
            assert args is not None, line
            if args[0] == "db":
                result = run(line, work, env)
                assert result.returncode == 0, result.stderr
            elif args[0] == "worker":
                worker = start_in_background(
                    line, work, env, log, lambda: "ready." in log.read_text(errors="replace")
                )
            elif args[0] == "submit":
                made = make_sources(args, work, work)
                result = run(line, work, env)
                assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
                found = re.search(r"submission (\S+): (\d+) jobs", result.stderr)
                assert found, result.stderr
                submission = found.group(1)
                assert int(found.group(2)) == len(made)
            else:
                assert submission, f"{line!r} comes before the submit that names SUBMISSION"
                result = run(line.replace("SUBMISSION", submission), work, env)
                assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
                if args[0] == "status":
                    assert f"done={len(made)}" in result.stdout and "failed=0" in result.stdout, result.stdout
                if "--format" in args and args[args.index("--format") + 1] == "json":
                    rows = [json.loads(text) for text in result.stdout.splitlines() if text.strip()]
                    assert all(row["status"] == "done" for row in rows)
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
    assert submission and worker is not None


def test_the_http_quick_start_runs_as_written(service: Service, tmp_path: Path) -> None:
    """The API in the background, a tenant, a key captured by `$(...)`, an upload with curl, then the
    results with the submission id the upload answered (the README's port is replaced by a free one)."""
    lines = section_block("Quick start: the HTTP API")
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = dfscan_shim(work)
    port = str(free_port())
    env = {
        **service.env,
        "DFSCAN_UPLOAD_STORE": str(tmp_path / "uploads"),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
    }
    assert service.cli("db", "upgrade").returncode == 0
    service.env["DFSCAN_UPLOAD_STORE"] = env["DFSCAN_UPLOAD_STORE"]
    service.start_worker()
    api: subprocess.Popen[bytes] | None = None
    log = tmp_path / "api.log"
    submission = ""
    try:
        for line in (line.replace("8000", port) for line in lines):
            if line.endswith("&"):  # the server, in the background
                assert (dfscan_args(line.rstrip("& ")) or [""])[0] == "api", line
                api = start_in_background(
                    line.rstrip("& "),
                    work,
                    env,
                    log,
                    lambda: run(f"curl -sf http://127.0.0.1:{port}/healthz", work, env).returncode == 0,
                )
            elif line.startswith("KEY=$("):
                result = run(line[len("KEY=$(") : line.rindex(")")], work, env)
                assert result.returncode == 0, result.stderr
                env["KEY"] = result.stdout.strip()
                assert env["KEY"], result.stderr
            elif line.startswith("curl") and "/v1/scans" in line:
                for name in re.findall(r"file=@(\S+)", line):
                    made = make_sources(["scan", name], work, work)
                    assert made, name
                result = run(line, work, env)
                assert result.returncode == 0, result.stderr
                submission = json.loads(result.stdout)["submission_id"]
            elif line.startswith("curl"):
                assert submission, f"{line!r} comes before the upload that names SUBMISSION"
                line = line.replace("SUBMISSION", submission)
                deadline = time.monotonic() + 180
                while True:  # the worker judges the upload: poll, as a client would
                    result = run(line, work, env)
                    assert result.returncode == 0, result.stderr
                    rows = json.loads(result.stdout)["results"]
                    if all(row["status"] in ("done", "failed") for row in rows):
                        break
                    assert time.monotonic() < deadline, rows
                    time.sleep(0.5)
                assert [row["status"] for row in rows] == ["done"], rows
                assert 0 <= rows[0]["fake_score"] <= 1
            else:
                result = run(line, work, env)
                assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    finally:
        if api is not None and api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(30)
    assert submission and env.get("KEY")
