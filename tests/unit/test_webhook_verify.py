"""``verify`` and the receiver snippets in the docs (docs/snippets/webhook_verify.py and .js) against
hostile signature headers: each returns False and never raises; only ASCII-digit timestamps and a
non-blank secret are accepted."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dfscan.webhooks import signature, signature_header, verify

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"
SECRET = "whsec-test"
BODY = b'{"id":"e1","type":"job.completed"}'
NOW = 1_796_000_000
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")

Verify = Callable[[str, str, bytes], bool]


def _sig(t: int = NOW, secret: str = SECRET) -> str:
    return signature(secret, BODY, t)


def _snippet_verify() -> Verify:
    namespace: dict[str, object] = {}
    exec(compile((SNIPPETS / "webhook_verify.py").read_text(), "webhook_verify.py", "exec"), namespace)
    fn = namespace["verify"]
    assert callable(fn)
    return fn  # type: ignore[return-value]


# (name, secret, header): every one must be refused.
HOSTILE: list[tuple[str, str, str]] = [
    ("superscript t", SECRET, f"t=²,v1={_sig()}"),
    ("non-ascii v1", SECRET, f"t={NOW},v1=é{_sig()[1:]}"),
    ("non-ascii v1 only", SECRET, f"t={NOW},v1=ééé"),
    ("underscored t", SECRET, f"t=1_796_000_000,v1={_sig()}"),
    ("plus t", SECRET, f"t=+{NOW},v1={_sig()}"),
    ("minus zero t", SECRET, f"t=-0{NOW},v1={_sig()}"),
    ("space before t", SECRET, f"t= {NOW},v1={_sig()}"),
    ("space after t", SECRET, f"t={NOW} ,v1={_sig()}"),
    ("spaced key", SECRET, f" t={NOW},v1={_sig()}"),
    ("arabic-indic t", SECRET, f"t={str(NOW).translate(ARABIC_INDIC)},v1={_sig()}"),
    ("fullwidth t", SECRET, f"t={''.join(chr(ord(c) + 0xFEE0) for c in str(NOW))},v1={_sig()}"),
    ("two t", SECRET, f"t={NOW},t={NOW + 1},v1={_sig()}"),
    ("no t", SECRET, f"v1={_sig()}"),
    ("huge t", SECRET, f"t={'9' * 400},v1={_sig()}"),
    ("float t", SECRET, f"t={NOW}.0,v1={_sig()}"),
    ("uppercase v1", SECRET, f"t={NOW},v1={_sig().upper()}"),
    ("short v1", SECRET, f"t={NOW},v1={_sig()[:-2]}"),
    ("v1 with newline", SECRET, f"t={NOW},v1={_sig()}\n"),
    ("old signature", SECRET, f"t={NOW - 301},v1={_sig(NOW - 301)}"),
    ("future signature", SECRET, f"t={NOW + 301},v1={_sig(NOW + 301)}"),
    ("wrong secret", SECRET, f"t={NOW},v1={_sig(secret='other')}"),
    ("empty secret", "", f"t={NOW},v1={_sig(secret='')}"),
    ("blank secret", "  ", f"t={NOW},v1={_sig(secret='  ')}"),
    ("empty header", SECRET, ""),
    ("no equals", SECRET, "garbage"),
    ("only commas", SECRET, ",,,,"),
    ("nul bytes", SECRET, f"t={NOW}\x00,v1={_sig()}"),
    ("surrogate", SECRET, f"t={NOW},v1=\udcff"),
]


def _python_verifiers() -> list[tuple[str, Verify]]:
    snippet = _snippet_verify()
    return [
        ("dfscan.webhooks.verify", lambda s, h, b: verify(s, h, b, now=NOW)),
        ("docs snippet (python)", lambda s, h, b: _at(NOW, lambda: snippet(s, h, b))),
    ]


def _at(now: float, call: Callable[[], bool]) -> bool:
    real = time.time
    time.time = lambda: now  # the snippet reads time.time(); no other thread depends on it here
    try:
        return call()
    finally:
        time.time = real


@pytest.mark.parametrize(("name", "verifier"), _python_verifiers())
def test_python_verifiers_refuse_every_hostile_header_without_raising(name: str, verifier: Verify) -> None:
    accepted = [case for case, secret, header in HOSTILE if verifier(secret, header, BODY) is not False]
    assert not accepted, f"{name} accepted {accepted}"
    assert verifier(SECRET, f"t={NOW},v1={_sig()}", BODY) is True
    assert verifier(SECRET, f"t={NOW},v1={'0' * 64},v1={_sig()}", BODY) is True  # a key rotation
    assert verifier(SECRET, f"t={NOW},v1={_sig()}", BODY + b" ") is False


def test_verify_never_raises_on_random_headers_bodies_and_types() -> None:
    rng = random.Random(17)
    alphabet = "t=v1,0123456789abcdef _+-²٣é\x00\udcff\n"
    for _ in range(3000):
        header = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 90)))
        assert verify(SECRET, header, BODY, now=NOW) is False
    for secret, header, body in [
        (None, "t=1", BODY),
        (SECRET, None, BODY),
        (SECRET, "t=1", "text"),
        (1, b"", 2),
    ]:
        assert verify(secret, header, body) is False  # type: ignore[arg-type]
    assert verify(SECRET, signature_header(SECRET, BODY, NOW), BODY, now=NOW, tolerance=float("nan")) is False


_NODE_DRIVER = """
const { verify } = require(process.argv[2]);
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
Date.now = () => cases.now * 1000;
const out = cases.items.map(([secret, header, body]) => {
  try { return verify(secret, header, Buffer.from(body, "latin1")); } catch (e) { return "threw: " + e; }
});
process.stdout.write(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_snippet_refuses_every_hostile_header_without_throwing(tmp_path: Path) -> None:
    driver = tmp_path / "driver.js"
    driver.write_text(_NODE_DRIVER)
    items = [
        [secret, header, BODY.decode("latin1")] for _, secret, header in HOSTILE if "\udcff" not in header
    ]
    items += [
        [SECRET, f"t={NOW},v1={_sig()}", BODY.decode("latin1")],
        [SECRET, f"t={NOW},v1={'0' * 64},v1={_sig()}", BODY.decode("latin1")],
    ]
    run = subprocess.run(
        ["node", str(driver), str(SNIPPETS / "webhook_verify.js")],
        input=json.dumps({"now": NOW, "items": items}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(run.stdout)
    assert results[-2:] == [True, True], results
    names = [name for name, _, header in HOSTILE if "\udcff" not in header]
    accepted = [name for name, result in zip(names, results[:-2], strict=True) if result is not False]
    assert not accepted, accepted
