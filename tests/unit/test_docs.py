"""The manual names only what exists: dfscan commands and options, make targets, bench modules and
their options, and the README's links into docs/. (`make docs` checks the links between pages.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.fixtures.cli import resolve

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md"))
TEXTS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in [ROOT / "README.md", *PAGES]}


def bash_lines(text: str) -> list[str]:
    """Every command line of the text's ```bash blocks, continuations joined, comments kept out."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def dfscan_invocations(line: str) -> list[list[str]]:
    """The argument lists of every `dfscan` in a shell line (also after `exec`, `VAR=value`, `&&`, inside
    `$(...)`, and before a trailing `&`)."""
    found = []
    line = re.sub(r"\s(?:&|'&')\s*$", "", line.strip()).replace("$(", " ").replace(")", " ")
    for segment in re.split(r"\s(?:&&|\|\||;|\|)\s", line):
        words = shlex.split(segment)
        for i, word in enumerate(words):
            if word == "dfscan" or word.endswith("bin/dfscan"):
                found.append(words[i + 1 :])
                break
    return found


DFSCAN_LINES = [
    (name, line) for name, text in TEXTS.items() for line in bash_lines(text) if dfscan_invocations(line)
]


def test_the_docs_show_dfscan_commands() -> None:
    assert len(DFSCAN_LINES) >= 30
    assert {name for name, _ in DFSCAN_LINES} >= {"README.md", "docs/quickstart.md", "docs/deploy.md"}


@pytest.mark.parametrize(("page", "line"), DFSCAN_LINES)
def test_every_dfscan_command_in_the_docs_parses_with_the_real_cli(page: str, line: str) -> None:
    for args in dfscan_invocations(line):
        command, rest = resolve(args)
        command.make_context(f"dfscan {' '.join(args[:1])}", rest)  # raises on an unknown option or value


def code_spans(text: str) -> list[str]:
    spans = re.findall(r"(?<!`)`([^`\n][^`]*?)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    return [" ".join(span.split()) for span in spans] + bash_lines(text)


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = {
        (page, target)
        for page, text in TEXTS.items()
        for span in code_spans(text)
        for target in re.findall(r"(?:^|&& )make ([a-z][a-z-]*)", span)
    }
    assert {target for _, target in named} >= {"setup", "test", "docs", "faults", "bench"}
    missing = sorted((page, target) for page, target in named if target not in targets)
    assert not missing, f"Makefile has no such target: {missing}"


def test_every_bench_command_the_docs_name_exists_with_its_options() -> None:
    checked = 0
    for page, text in TEXTS.items():
        for span in code_spans(text):
            for module, rest in re.findall(r"python -m bench\.(\w+)((?: [^`]*)?)", span):
                source = (ROOT / "bench" / f"{module}.py").read_text()
                words = shlex.split(rest.replace("[", " ").replace("]", " "))
                subcommands = re.findall(r"add_parser\(\"(\w+)\"", source)
                if subcommands and words and not words[0].startswith("-"):
                    assert words[0] in subcommands, (page, span)
                for option in (word.split("=")[0] for word in words if word.startswith("--")):
                    assert f'"{option}"' in source, f"{page}: bench.{module} has no {option} ({span})"
                checked += 1
    assert checked >= 12


def slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (python-markdown's toc slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_the_readme_links_into_docs_point_at_pages_and_headings_that_exist() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", TEXTS["README.md"])
    assert len(links) >= 12
    for page, anchor in links:
        if not page.endswith(".md"):  # a picture or another file the README shows
            assert (ROOT / page).is_file(), f"README links to {page}, which does not exist"
            continue
        assert page in TEXTS, f"README links to {page}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", TEXTS[page], flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{page} has no heading #{anchor}"


# Words of how dfscan was built, not of what it is: the manual speaks in the present tense about the product.
HISTORY = [
    r"\bold main\b",
    r"\bissue \d+",
    r"\bthe seed\b",
    r"\bseed's\b",
    r"\bthis session\b",
    r"\bbefore this change\b",
]


@pytest.mark.parametrize("page", sorted(TEXTS))
def test_the_manual_tells_no_history(page: str) -> None:
    found = [m.group(0) for pattern in HISTORY for m in re.finditer(pattern, TEXTS[page], flags=re.I)]
    assert not found, f"{page} speaks of how dfscan was built: {found}"
