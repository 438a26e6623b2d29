"""The shape of the system, checked: a light producer, a pure core, and reference pages generated from the code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dfscan.docs_reference import PAGES
from dfscan.exceptions import LIMITS, error_codes
from dfscan.settings import CURRENT, FIXED

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "module", ["producer.client", "producer.check", "producer.sources", "dfscan.cli.main", "worker.messages"]
)
def test_the_producer_side_imports_no_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


@pytest.mark.parametrize("core", ["worker/inference", "worker/training"])
def test_the_cores_import_no_celery_sql_or_redis(core: str) -> None:
    banned = {"celery", "kombu", "redis", "sqlalchemy", "db", "producer", "psycopg2", "alembic"}
    for path in (ROOT / core).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.relative_to(ROOT)} imports {name}"


def test_the_reference_pages_are_what_the_code_generates() -> None:
    for name, render in PAGES.items():
        committed = (ROOT / "docs" / name).read_text()
        assert committed == render(), f"docs/{name} is stale: run `python -m dfscan.docs_reference`"


def test_every_error_code_is_in_the_errors_page() -> None:
    page = (ROOT / "docs" / "errors.md").read_text()
    missing = [code for code in error_codes() if f"| `{code}` |" not in page]
    assert not missing, f"docs/errors.md lacks {missing}"
    assert "| `INTERNAL_ERROR` |" in page and "| `TOO_LARGE` |" in page
    assert all(f"| `{limit}` |" in page for limit in LIMITS)


def test_every_setting_and_fixed_value_is_in_the_settings_page() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    missing = [name for name in (*CURRENT, *FIXED) if f"| `DFSCAN_{name.upper()}` |" not in page]
    assert not missing, f"docs/settings.md lacks {missing}; run `python -m dfscan.docs_reference`"
    assert "| `DFSCAN_MODEL` | `prithivMLmods/Deep-Fake-Detector-Model` |" in page
    assert "| `DFSCAN_CONNECT_TIMEOUT` | `5.0` | fixed |" in page


def test_the_readme_names_the_commands_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("make setup", "make test"):
        assert command in README and command in ci


# The layers of the system and what each may import (besides itself and third-party packages). The
# graph is a tree rooted at the contract: the core knows no database, the database layer knows no
# core, the worker edge, the producer and the HTTP API do not know each other, and only the CLI sees
# everything.
COMPONENTS: dict[str, tuple[str, ...]] = {
    "contract": (
        "dfscan.exceptions",
        "dfscan.settings",
        "dfscan.queueing",
        "dfscan.verdicts",
        "dfscan.broker",
        "dfscan.webhooks",
        "dfscan.urlguard",
        "dfscan.pinned_http",
        "dfscan.ids",
        "dfscan.hashindex",
        "dfscan.tenants",
        "dfscan.media",
        "dfscan.uploads",
        # The review console's pure parts (agreement, SVG, export layout, media store, cookie signing).
        "dfscan.console",
        "dfscan.calibration",
        "dfscan.options",
    ),
    "db": ("db",),
    "core": ("worker.inference", "worker.training"),
    "outbox": ("dfscan.outbox", "dfscan.exporter"),
    "producer": ("producer",),
    "edge": (
        "worker.app",
        "worker.tasks",
        "worker.runtime",
        "worker.sweeper",
        "worker.leases",
        "worker.metrics",
        "worker.metrics_server",
        "worker.delivery",
        "worker.breakers",
        "worker.messages",
        "worker.training_tasks",
        "worker.near",
    ),
    "api": ("dfscan.api", "dfscan.console.web"),
    "cli": ("dfscan.cli", "dfscan.docs_reference"),
}
MAY_IMPORT: dict[str, set[str]] = {
    "contract": set(),
    "db": {"contract"},
    "core": {"contract"},
    "outbox": {"contract", "db"},
    "producer": {"contract", "db", "outbox"},
    "edge": {"contract", "db", "core", "outbox"},
    # The HTTP API is an edge beside the producer: it writes jobs and sends their messages (outbox).
    # dfscan.api.matches hashes an uploaded image as the worker does and searches the worker's index
    # (worker.inference.hashing, worker.near: no torch): the API's one use of the core and an edge.
    "api": {"contract", "db", "outbox", "core", "edge"},
    "cli": {"contract", "db", "core", "outbox", "producer", "edge", "api"},
}


def _component(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for name, prefixes in COMPONENTS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), name)
    return best[1] if best else None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):  # function-level (lazy) imports count too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_import_graph_is_a_tree_of_layers() -> None:
    violations = []
    for package in ("dfscan", "db", "producer", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            imports = _imports(path)
            source = _component(module)
            if source is None and not imports:
                continue  # an empty package __init__
            assert source is not None, f"{module} belongs to no layer: add it to COMPONENTS"
            for imported in imports:
                target = _component(imported)
                if target is None or target == source:
                    continue
                if target not in MAY_IMPORT[source]:
                    violations.append(f"{module} ({source}) imports {imported} ({target})")
    assert not violations, "layering broken:\n" + "\n".join(sorted(set(violations)))


# Inside the inference core: its subpackages and top modules, and which of the others each may import.
# Reading a source, decoding video and faces know nothing of the rest; images (animations follow the
# video sampling plan) and the model build on them; the region road builds on those; the Judge on the
# road; the factory on everything. A new edge is a design decision: state it here.
CORE_MAY_IMPORT: dict[str, set[str]] = {
    "lanes": set(),
    "hardware": set(),  # what the machine offers (GPU, memory, cores): torch only
    "hashing": set(),
    "sources": set(),
    "faces": set(),
    "video": {"sources"},
    "images": {"hashing", "lanes", "video"},
    "model": {"hashing", "lanes", "images"},
    "budget": {"images", "lanes", "sources", "video"},
    "regions": {"budget", "faces", "model", "video"},
    "annotate": {"regions"},
    "provenance": set(),  # what a source declares: bytes in, a Provenance out (the Judge isolates it)
    "outcomes": {"hashing", "regions"},  # a judged source's facts as verdict fields; a failed verdict
    # provenance, second opinion (a clip's: gathered across frames by the video rule)
    "signals": {"budget", "images", "model", "provenance", "regions", "video"},
    # The Judge's two paths; "judge" only for its type (under TYPE_CHECKING: no import at run time).
    "judge_image": {"budget", "hashing", "images", "judge", "model", "outcomes", "regions", "signals"},
    "judge_video": {
        "budget",
        "hashing",
        "images",
        "judge",
        "model",
        "outcomes",
        "regions",
        "signals",
        "video",
    },
    "judge": {
        "budget",
        "faces",
        "hashing",
        "images",
        "judge_image",
        "judge_video",
        "lanes",
        "model",
        "outcomes",
        "provenance",
        "regions",
        "signals",
        "sources",
        "video",
    },
    "factory": {
        "budget",
        "faces",
        "hashing",
        "images",
        "judge",
        "lanes",
        "model",
        "provenance",
        "regions",
        "sources",
        "video",
    },
}


def _core_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["worker", "inference"] and len(parts) > 2 else None


def test_the_inference_core_is_a_map_of_subpackages() -> None:
    core = ROOT / "worker" / "inference"
    found = {p.stem if p.is_file() else p.name for p in core.iterdir() if p.suffix == ".py" or p.is_dir()}
    found -= {"__init__", "__pycache__", "weights"}
    assert found == set(CORE_MAY_IMPORT), f"worker/inference holds {sorted(found)}: update CORE_MAY_IMPORT"
    violations = []
    for path in sorted(core.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        source = _core_part(module)
        if source is None:
            continue
        for imported in _imports(path):
            target = _core_part(imported)
            if target is not None and target != source and target not in CORE_MAY_IMPORT[source]:
                violations.append(f"{module} ({source}) imports {imported} ({target})")
    assert not violations, "core layering broken:\n" + "\n".join(sorted(set(violations)))
