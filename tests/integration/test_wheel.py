"""The wheel works outside the checkout, one extra at a time: built, then installed with one extra into a
fresh virtual environment in another folder (torch first, `pip install torch==2.13.0`, as the README
says), with no access to this tree.

The default suite installs `[worker]` alone and runs what a newcomer runs: `dfscan db upgrade` and a
default `dfscan scan` (faces on) of a folder with a face photo and a video. The other extras (and the
base install) are `slow`: each is a fresh install of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from db.migrate import current, head
from tests.fixtures.databases import fresh_postgres_url, postgres_available
from tests.fixtures.models import REAL_FAKE, save_tiny_vit

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"  # the README's pin; on CPU hosts it comes from local disk
# What only another role needs: an inference worker installs none of it.
NOT_FOR_THE_WORKER = {
    "flower",
    "datasets",
    "matplotlib",
    "accelerate",
    "psutil",
    "facenet-pytorch",
    "torchvision",
}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DFSCAN_", "PYTHON", "VIRTUAL_ENV"))}


def run(
    args: list[str | Path],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    expect: int = 0,
) -> str:
    out = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == expect, (
        f"{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT],
        cwd=dist,
    )
    (built,) = dist.glob("dfscan-*.whl")
    return built


def fresh_venv(where: Path, wheel: Path, extras: str, *, torch: bool) -> Path:
    """A new venv at ``where`` with ``wheel[extras]`` and its dependencies installed from the indexes
    (nothing from this venv), with the README's torch pin when the extra needs torch. Returns its bin
    folder."""
    venv = where / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=where)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile"]
    run([*pip, *([TORCH] if torch else []), f"{wheel}[{extras}]" if extras else str(wheel)], cwd=where)
    where_is = run([python, "-c", "import db.migrate as m; print(m.__file__, m.ALEMBIC_DIR)"], cwd=where)
    assert str(ROOT) not in where_is and "site-packages" in where_is, where_is
    return venv / "bin"


def installed(bin_dir: Path) -> set[str]:
    names = run(
        [
            bin_dir / "python",
            "-c",
            "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))",
        ],
        cwd=bin_dir,
    )
    return {name.strip().lower().replace("_", "-") for name in names.splitlines() if name.strip()}


def test_the_worker_extra_alone_migrates_and_scans_a_face_photo_and_a_video_with_default_settings(
    tmp_path: Path, wheel: Path
) -> None:
    skimage_data = pytest.importorskip("skimage.data", reason="the face photo is scikit-image's astronaut")
    from tests.fixtures.videos import make_clip

    bin_dir = fresh_venv(tmp_path, wheel, "worker", torch=True)
    have = installed(bin_dir)
    assert {"dfscan", "torch", "transformers", "av", "onnxruntime"} <= have
    assert not have & NOT_FOR_THE_WORKER, have & NOT_FOR_THE_WORKER
    weights = run(
        [bin_dir / "python", "-c", "from worker.inference.faces import mtcnn as m; print(m._weights_dir())"],
        cwd=tmp_path,
    )
    assert weights.strip().endswith("site-packages/worker/inference/weights"), weights

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(folder / "astronaut.jpg", quality=92)
    (folder / "clip.mp4").write_bytes(make_clip(seconds=2.0))
    (folder / "notes.txt").write_text("not an image")
    model = save_tiny_vit(tmp_path / "model", REAL_FAKE, image_size=32)
    url = f"sqlite:///{tmp_path / 'scan.db'}"
    # Default settings but the model (a tiny random ViT) and the database: faces on (auto).
    env = {**clean_env(), "DFSCAN_DATABASE_URL": url, "DFSCAN_MODEL": str(model), "HF_HUB_OFFLINE": "1"}

    run([bin_dir / "dfscan", "db", "upgrade"], cwd=tmp_path, env=env)
    assert current(url) == head()
    # Exit 1: the text file fails (UNSUPPORTED_FORMAT) while the photo and the clip are judged.
    out = run([bin_dir / "dfscan", "scan", folder, "--format", "json"], cwd=tmp_path, env=env, expect=1)
    rows = {Path(r["source"]).name: r for r in map(json.loads, out.splitlines())}
    assert sorted(rows) == ["astronaut.jpg", "clip.mp4", "notes.txt"]
    face = rows["astronaut.jpg"]
    assert (face["status"], face["judged_on"], len(face["faces"])) == ("done", "faces", 1), face
    assert "+faces:auto:mtcnn" in face["model_version"]
    clip = rows["clip.mp4"]
    assert (clip["status"], clip["media"]) == ("done", "video"), clip
    assert rows["notes.txt"]["error_code"] == "UNSUPPORTED_FORMAT"


# --- every other extra, each alone in a fresh venv (minutes each: slow) ---------------------------------


@pytest.mark.slow
def test_the_base_install_submits_and_migrates_without_torch(tmp_path: Path, wheel: Path) -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    bin_dir = fresh_venv(tmp_path, wheel, "", torch=False)
    have = installed(bin_dir)
    assert "torch" not in have and "transformers" not in have and not have & NOT_FOR_THE_WORKER
    run([bin_dir / "python", "-c", "import producer.client, worker.sweeper, worker.delivery"], cwd=tmp_path)
    with fresh_postgres_url() as url:
        run(
            [bin_dir / "dfscan", "db", "upgrade"],
            cwd=tmp_path,
            env={**clean_env(), "DFSCAN_DATABASE_URL": url},
        )
        assert current(url) == head()


@pytest.mark.slow
def test_the_train_extra_alone_evaluates_a_checkpoint(tmp_path: Path, wheel: Path) -> None:
    pytest.importorskip("skimage", reason="the data set's scenes need scikit-image's astronaut photo")
    from tests.fixtures.faces import write_face_folder

    bin_dir = fresh_venv(tmp_path, wheel, "train", torch=True)
    have = installed(bin_dir)
    assert {"datasets", "accelerate", "matplotlib", "transformers"} <= have
    assert "flower" not in have
    data = write_face_folder(tmp_path / "data", {"test": 2})
    model = save_tiny_vit(tmp_path / "model", REAL_FAKE, image_size=32)
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    run(
        [bin_dir / "dfscan", "evaluate", "--model", model, "--data", data, "--out", "report"],
        cwd=tmp_path,
        env=env,
    )
    assert json.loads((tmp_path / "report" / "report.json").read_text())["n"] == 4
    assert (tmp_path / "report" / "roc.png").stat().st_size > 0  # matplotlib drew it
    run([bin_dir / "python", "-c", "import worker.training.train, datasets"], cwd=tmp_path)


@pytest.mark.slow
def test_the_flower_extra_alone_installs_the_monitor_without_the_model(tmp_path: Path, wheel: Path) -> None:
    bin_dir = fresh_venv(tmp_path, wheel, "flower", torch=False)
    have = installed(bin_dir)
    assert "flower" in have and "torch" not in have and "transformers" not in have
    # The gate patches Flower's app and command line: both import from the installed flower.
    run(
        [bin_dir / "python", "-c", "from dfscan.cli.flower import install_gate; install_gate('u:p')"],
        cwd=tmp_path,
    )
    assert "--port" in run([bin_dir / "dfscan", "flower", "--help"], cwd=tmp_path)


@pytest.mark.slow
def test_the_docs_extra_alone_installs_mkdocs_material(tmp_path: Path, wheel: Path) -> None:
    bin_dir = fresh_venv(tmp_path, wheel, "docs", torch=False)
    assert {"mkdocs", "mkdocs-material"} <= installed(bin_dir)
    run([bin_dir / "python", "-c", "import material"], cwd=tmp_path)
    assert "version" in run([bin_dir / "mkdocs", "--version"], cwd=tmp_path)


@pytest.mark.slow
def test_the_dev_extra_alone_brings_every_role_and_the_test_tools(tmp_path: Path, wheel: Path) -> None:
    bin_dir = fresh_venv(tmp_path, wheel, "dev", torch=True)
    have = installed(bin_dir)
    assert {"pytest", "pytest-timeout", "ruff", "mypy", "scikit-image", "psutil"} <= have
    assert {"flower", "datasets", "matplotlib", "accelerate", "transformers", "torch"} <= have
    for tool in ("pytest", "ruff", "mypy"):
        run([bin_dir / tool, "--version"], cwd=tmp_path)
    run([bin_dir / "python", "-c", "import skimage.data, psutil, flower, datasets, worker.app"], cwd=tmp_path)
