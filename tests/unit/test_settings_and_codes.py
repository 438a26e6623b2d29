"""Retired settings keep working for one release with a warning; the TOO_LARGE family names its limit and,
for one release, the code a client branched on before; the reference pages are generated from the code."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from dfscan.docs_reference import PAGES, main
from dfscan.exceptions import (
    LIMITS,
    RENAMED,
    DfscanError,
    HostNotFoundError,
    ImageTooLargeError,
    SourceNotFoundError,
    TooLargeError,
    VideoTooLargeError,
    error_codes,
    error_detail,
)
from dfscan.settings import CURRENT, FIXED, RETIRED, Settings
from dfscan.verdicts import Verdict
from worker.inference.factory import image_policy, source_policy, video_policy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_dfscan_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings read only what a test sets: no DFSCAN_ variable of the caller, no .env file."""
    import os

    for name in list(os.environ):
        if name.startswith("DFSCAN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# --- retired settings ----------------------------------------------------------------------------


def test_every_fixed_value_has_a_retired_field_and_none_is_still_a_setting() -> None:
    assert set(RETIRED) == set(FIXED)
    assert not set(CURRENT) & set(FIXED)
    for name, fixed in FIXED.items():
        assert fixed.why.strip(), name
        field = RETIRED[name]
        assert field.default is None and field.exclude, name
    assert all(limit.fixed in FIXED for limit in LIMITS.values() if limit.fixed)


def test_unset_retired_variables_give_the_fixed_values_and_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="dfscan.settings"):
        settings = Settings()
    assert not caplog.records
    assert {name: settings.fixed(name) for name in FIXED} == {name: f.value for name, f in FIXED.items()}
    assert source_policy(settings).connect_timeout == FIXED["connect_timeout"].value
    assert image_policy(settings).decode_timeout == FIXED["decode_timeout"].value
    assert video_policy(settings).max_frame_pixels == 4096 * 2304


def test_a_retired_variable_still_takes_effect_for_this_release_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DFSCAN_READ_TIMEOUT", "2.5")
    monkeypatch.setenv("DFSCAN_VIDEO_IN_FLIGHT", "6")
    monkeypatch.setenv("DFSCAN_FLOWER_PORT", "5600")
    with caplog.at_level(logging.WARNING, logger="dfscan.settings"):
        settings = Settings()
    assert source_policy(settings).read_timeout == 2.5
    assert source_policy(settings).connect_timeout == 5.0  # the others keep their fixed values
    assert video_policy(settings).in_flight == 6
    assert settings.fixed("flower_port") == 5600
    warned = {record.getMessage().split(" ", 1)[0]: record.getMessage() for record in caplog.records}
    assert set(warned) == {"DFSCAN_READ_TIMEOUT", "DFSCAN_VIDEO_IN_FLIGHT", "DFSCAN_FLOWER_PORT"}
    assert "from the next one, it is fixed at 10.0" in warned["DFSCAN_READ_TIMEOUT"]
    assert "`dfscan flower --port` sets it" in warned["DFSCAN_FLOWER_PORT"]


def test_a_retired_variable_is_still_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFSCAN_VIDEO_IN_FLIGHT", "0")
    with pytest.raises(ValidationError, match="video_in_flight"):
        Settings()


def test_a_retired_variable_in_a_dot_env_file_works_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ".env").write_text("DFSCAN_DECODE_TIMEOUT=9\n")
    with caplog.at_level(logging.WARNING, logger="dfscan.settings"):
        assert image_policy(Settings()).decode_timeout == 9.0
    assert "DFSCAN_DECODE_TIMEOUT is retired" in caplog.text


def test_dfscan_config_lists_settings_not_retired_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from dfscan.cli.main import app
    from dfscan.settings import get_settings

    monkeypatch.setenv("DFSCAN_CONNECT_TIMEOUT", "3")
    get_settings.cache_clear()
    try:
        out = CliRunner().invoke(app, ["config"])
    finally:
        get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    listed = [line.split("=", 1)[0] for line in out.stdout.splitlines() if line.startswith("DFSCAN_")]
    assert listed == [f"DFSCAN_{name.upper()}" for name in CURRENT]
    assert "DFSCAN_CONNECT_TIMEOUT" not in out.stdout


# --- the TOO_LARGE family --------------------------------------------------------------------------


def test_one_too_large_code_with_a_limit_and_the_former_code_for_each() -> None:
    codes = error_codes()
    assert "TOO_LARGE" in codes
    assert not {"IMAGE_TOO_LARGE", "VIDEO_TOO_LARGE", "NOT_FOUND"} & set(codes)
    assert {"FILE_NOT_FOUND", "HOST_NOT_FOUND", "IMAGE_TOO_COMPLEX"} <= set(codes)
    for cls in (TooLargeError, ImageTooLargeError, VideoTooLargeError):
        for name, limit in LIMITS.items():
            error = cls("over it", limit=name)
            assert (error.code, error.limit, error.permanent) == ("TOO_LARGE", name, True)
            assert error.message == f"over it (limit: {name})"
            assert error_detail(error.code, error.message) == {
                "limit": name,
                "former_code": limit.former_code,
            }
    assert (TooLargeError("x").limit, ImageTooLargeError("x").limit, VideoTooLargeError("x").limit) == (
        "bytes",
        "image_pixels",
        "frame_pixels",
    )
    with pytest.raises(ValueError, match="unknown limit 'parsecs'"):
        TooLargeError("x", limit="parsecs")


def test_the_former_codes_are_exactly_what_the_previous_release_stored() -> None:
    former = {name: limit.former_code for name, limit in LIMITS.items()}
    assert former == {
        "bytes": "TOO_LARGE",
        "image_pixels": "IMAGE_TOO_LARGE",
        "image_frames": "IMAGE_TOO_LARGE",
        "decode_memory": "IMAGE_TOO_LARGE",
        "decode_time": "IMAGE_TOO_COMPLEX",  # a decode child past its deadline
        "frame_pixels": "VIDEO_TOO_LARGE",
        "streams": "VIDEO_TOO_LARGE",
        "video_memory": "VIDEO_TOO_LARGE",
        "video_time": "VIDEO_TOO_LARGE",
    }
    assert RENAMED == {"FILE_NOT_FOUND": "NOT_FOUND", "HOST_NOT_FOUND": "NOT_FOUND"}
    assert (SourceNotFoundError.code, HostNotFoundError.code) == ("FILE_NOT_FOUND", "HOST_NOT_FOUND")


def test_a_client_of_the_old_codes_reads_them_from_the_stored_verdict() -> None:
    """What a client of the old codes does for one release: ``error_detail.former_code`` or ``error_code``,
    read from a verdict rebuilt from the job row (the same JSON as `dfscan results` and webhooks)."""

    def old_code(error: DfscanError) -> str:
        stored = Verdict.from_stored(
            source="s", status="failed", error_code=error.code, error=error.message, row=None
        )
        out = stored.output()
        return str((out["error_detail"] or {}).get("former_code") or out["error_code"])

    assert old_code(ImageTooLargeError("10000x10000 pixels")) == "IMAGE_TOO_LARGE"
    assert old_code(ImageTooLargeError("took 5 s", limit="decode_time")) == "IMAGE_TOO_COMPLEX"
    assert old_code(VideoTooLargeError("took 60 s", limit="video_time")) == "VIDEO_TOO_LARGE"
    assert old_code(TooLargeError("21 MiB")) == "TOO_LARGE"
    assert old_code(HostNotFoundError("no such host")) == "NOT_FOUND"
    assert old_code(SourceNotFoundError("no such file")) == "NOT_FOUND"
    from dfscan.exceptions import CorruptImageError

    assert old_code(CorruptImageError("truncated")) == "CORRUPT_IMAGE"
    done = Verdict(source="s", status="done", label="real", fake_score=0.1)
    assert done.output()["error_detail"] is None


def test_a_limit_survives_pickling_as_from_a_decode_child() -> None:
    error = pickle.loads(pickle.dumps(ImageTooLargeError("over the budget", limit="decode_memory")))
    assert type(error) is ImageTooLargeError and error.limit == "decode_memory"
    assert error.message == "over the budget (limit: decode_memory)"
    from dfscan.exceptions import HttpStatusError

    status = pickle.loads(pickle.dumps(HttpStatusError("503", status=503)))
    assert (status.status, status.permanent) == (503, False)


# --- the generated reference pages -----------------------------------------------------------------


def test_the_generator_writes_what_check_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dfscan.docs_reference as reference

    monkeypatch.setattr(reference, "DOCS", tmp_path / "docs")
    assert main(["--check"]) == 1  # nothing written yet
    assert main([]) == 0
    assert main(["--check"]) == 0
    page = tmp_path / "docs" / "settings.md"
    page.write_text(page.read_text().replace("`20971520`", "`1`"))
    assert main(["--check"]) == 1


def test_the_pages_show_each_default_and_its_reason() -> None:
    settings, errors = PAGES["settings.md"](), PAGES["errors.md"]()
    for name, field in CURRENT.items():
        row = next(line for line in settings.splitlines() if line.startswith(f"| `DFSCAN_{name.upper()}` |"))
        assert " ".join((field.description or "").split())[:40].replace("|", "\\|") in row, name
    assert "| `DFSCAN_MAX_BYTES` | `20971520` (20 MiB) |" in settings
    assert "| `DFSCAN_FLOWER_PORT` | `5555` | `dfscan flower --port` |" in settings
    assert "| `TOO_LARGE` | no |" in errors and "| `FETCH_TIMEOUT` | yes |" in errors
    assert "| `decode_time` |" in errors and "`4.0`, fixed" in errors
    assert "| `NOT_FOUND` | `FILE_NOT_FOUND`, `HOST_NOT_FOUND` |" in errors


def test_the_generator_runs_as_a_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dfscan.docs_reference", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
