"""Provenance: what an image or video declares about its origin, read beside the model's score.

Three sources, each bounded like every other parser:

- **C2PA** (c2pa-python, the Content Authenticity Initiative's reader): the embedded manifest store,
  its active manifest's signature and hash checks, claim generator, actions and the
  ``digitalSourceType`` of its actions. The native reader only runs when the bytes contain the
  manifest store's JUMBF label (``c2pa``): a file without one costs a byte search. Remote manifests,
  OCSP and trust-list fetches are off (nothing leaves the host). Its JSON answer is capped
  (:attr:`ProvenancePolicy.max_manifest_json`). With ``DFSCAN_DECODE_PROCESSES`` the native reader runs
  in a decode child, under its memory limit and CPU deadline, like a decode.
- **XMP** (IPTC ``Iptc4xmpExt:DigitalSourceType``, ``xmp:CreatorTool``): the first ``<x:xmpmeta>``
  packet, read only when it ends within :attr:`ProvenancePolicy.max_xmp_bytes`, searched with bounded
  regular expressions (no XML parser, so no entity expansion).
- **EXIF / PNG text** ``Software``: Pillow's header parse of the image (no pixels are decoded).

``declared_ai`` is True when the declared IPTC digital source type is generated media
(:data:`AI_SOURCE_TYPES`), False when it is a capture (:data:`CAPTURE_SOURCE_TYPES`), None when nothing
(or something else) is declared. A C2PA declaration wins over XMP. Nothing here changes p(fake).

Reading never fails a verdict: what could not be read is named in :attr:`Provenance.error` and the
rest is reported.
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image

from dfscan.verdicts import Provenance

# The IPTC NewsCodes digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/) that say the
# media was generated or composited with generated parts ...
AI_SOURCE_TYPES = frozenset(
    {
        "trainedAlgorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
        "algorithmicMedia",
        "compositeSynthetic",
    }
)
# ... and those that say it was captured from the world (a camera, a scan, a screen).
CAPTURE_SOURCE_TYPES = frozenset(
    {
        "digitalCapture",
        "computationalCapture",
        "negativeFilm",
        "positiveFilm",
        "print",
        "compositeCapture",
        "screenCapture",
        "virtualRecording",
    }
)

# Longest string kept from a declaration (generator names, software, error text) and most actions kept.
_MAX_TEXT = 200
_MAX_ACTIONS = 32


@dataclass(frozen=True)
class ProvenancePolicy:
    """What provenance reading may cost. ``c2pa``: read C2PA manifests (the native reader);
    ``max_xmp_bytes``: an XMP packet longer than this is not read; ``max_manifest_json``: a manifest
    store whose JSON report is longer than this is reported as present but unread."""

    c2pa: bool = True
    max_xmp_bytes: int = 256 * 1024
    max_manifest_json: int = 1024 * 1024


def read_provenance(
    data: bytes, policy: ProvenancePolicy, *, media: str = "image", isolate: Any = None
) -> Provenance:
    """The provenance of ``data`` (an image's or a video's bytes). ``isolate(fn, *args)``, when given,
    runs the native C2PA reader elsewhere (a decode child) and returns its result."""
    found = Provenance()
    errors: list[str] = []
    if policy.c2pa and _has_c2pa_marker(data):
        try:
            manifest = isolate(read_c2pa, data, policy) if isolate is not None else read_c2pa(data, policy)
            found = manifest
        except Exception as exc:  # a crash, a timeout or a limit in the reader: say so, keep the rest
            found = Provenance(manifest=True, error=_short(f"c2pa: {type(exc).__name__}: {exc}"))
    if found.error:
        errors.append(found.error)
    xmp_type, creator_tool, xmp_error = _read_xmp(data, policy.max_xmp_bytes)
    if xmp_error:
        errors.append(xmp_error)
    software = _software(data) if media == "image" else None
    source_type, declared_by = found.digital_source_type, found.declared_by
    if source_type is None and xmp_type is not None:
        source_type, declared_by = xmp_type, "xmp"
    return replace(
        found,
        digital_source_type=source_type,
        declared_by=declared_by,
        declared_ai=declared_ai(source_type),
        software=software or creator_tool,
        error="; ".join(errors) or None,
    )


def declared_ai(source_type: str | None) -> bool | None:
    """True for a generated-media source type, False for a capture, None for none or another."""
    if source_type in AI_SOURCE_TYPES:
        return True
    if source_type in CAPTURE_SOURCE_TYPES:
        return False
    return None


def short_source_type(value: str) -> str:
    """The vocabulary's short name of an IPTC digital source type URI (or the value, shortened)."""
    return _short(value.strip().rstrip("/").rsplit("/", 1)[-1])


# --- C2PA -------------------------------------------------------------------------------------------

# The label of a C2PA manifest store's JUMBF superbox; every embedding (JPEG APP11, PNG caBX, BMFF uuid,
# RIFF C2PA chunk) carries it in the clear.
_C2PA_LABEL = b"c2pa"
_JUMBF = b"jumb"


def _has_c2pa_marker(data: bytes) -> bool:
    return _JUMBF in data and _C2PA_LABEL in data


_context: Any = None
_context_lock = threading.Lock()


def _c2pa_context() -> Any:
    """One c2pa Context per process: no trust-list, OCSP or remote-manifest fetches."""
    global _context
    with _context_lock:
        if _context is None:
            import c2pa

            settings = {
                "verify": {"verify_trust": False, "remote_manifest_fetch": False, "ocsp_fetch": False}
            }
            _context = c2pa.Context(c2pa.Settings.from_json(json.dumps(settings)))
        return _context


def read_c2pa(data: bytes, policy: ProvenancePolicy) -> Provenance:
    """The C2PA manifest store embedded in ``data`` (no manifest: an empty Provenance)."""
    import c2pa

    try:
        reader = c2pa.Reader.try_create(io.BytesIO(data), context=_c2pa_context())
    except c2pa.C2paError as exc:  # a store that is there but broken (bad JUMBF, unsupported format)
        return Provenance(manifest=True, signature_valid=False, error=_short(f"c2pa: {exc}"))
    if reader is None:
        return Provenance()
    with reader:
        report = reader.json()
    if len(report) > policy.max_manifest_json:
        return Provenance(
            manifest=True, error=f"c2pa: manifest report over {policy.max_manifest_json} bytes: not read"
        )
    return manifest_provenance(json.loads(report))


def manifest_provenance(store: dict[str, Any]) -> Provenance:
    """The fields of a C2PA manifest store report (c2pa's ``Reader.json()``) that a moderator reads."""
    state = store.get("validation_state")
    manifest = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [str(item.get("code")) for item in results.get("failure") or () if isinstance(item, dict)]
    if not failures:  # older reports: a flat validation_status list
        failures = [str(item.get("code")) for item in store.get("validation_status") or ()]
    valid = None if state is None else state in ("Valid", "Trusted")
    actions: list[str] = []
    source_types: list[str] = []
    for assertion in manifest.get("assertions") or ():
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or ():
            actions.append(_short(str(action.get("action"))))
            if action.get("digitalSourceType"):
                source_types.append(short_source_type(str(action["digitalSourceType"])))
    # An AI declaration anywhere among the actions is the declaration; else the first one made.
    source_type = next((t for t in source_types if t in AI_SOURCE_TYPES), None) or next(
        iter(source_types), None
    )
    signature = manifest.get("signature_info") or {}
    signer = " / ".join(str(signature[k]) for k in ("common_name", "issuer") if signature.get(k)) or None
    return Provenance(
        manifest=True,
        signature_valid=valid,
        signature_errors=tuple(_short(code) for code in failures[:_MAX_ACTIONS]),
        signer=_short(signer) if signer else None,
        claim_generator=_generator(manifest),
        actions=tuple(actions[:_MAX_ACTIONS]),
        digital_source_type=source_type,
        declared_by="c2pa" if source_type else None,
    )


def _generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("name"):
        first = info[0]
        return _short(" ".join(str(first[k]) for k in ("name", "version") if first.get(k)))
    generator = manifest.get("claim_generator")
    return _short(str(generator)) if generator else None


# --- XMP --------------------------------------------------------------------------------------------

_XMP_START = b"<x:xmpmeta"
_XMP_END = b"</x:xmpmeta>"
# Any namespace prefix; an attribute, an element's text, or an rdf:resource. Every repetition is bounded.
_SOURCE_TYPE = re.compile(
    r"""[\w.-]{1,40}:DigitalSourceType(?:\s*=\s*["']([^"'<>]{1,300})["']"""
    r"""|\s+rdf:resource\s*=\s*["']([^"'<>]{1,300})["']"""
    r"""|\s*>\s*([^<>]{1,300}?)\s*<)"""
)
_CREATOR_TOOL = re.compile(
    r"""xmp:CreatorTool(?:\s*=\s*["']([^"'<>]{1,300})["']|\s*>\s*([^<>]{1,300}?)\s*<)"""
)


def _read_xmp(data: bytes, cap: int) -> tuple[str | None, str | None, str | None]:
    """The digital source type and creator tool of the first XMP packet, or why it was not read."""
    start = data.find(_XMP_START)
    if start < 0:
        return None, None, None
    end = data.find(_XMP_END, start, start + cap)
    if end < 0:
        return None, None, f"xmp: no packet end within {cap} bytes: not read"
    text = data[start : end + len(_XMP_END)].decode("utf-8", errors="replace")
    source_type = _first(_SOURCE_TYPE.search(text))
    creator = _first(_CREATOR_TOOL.search(text))
    return (
        (short_source_type(source_type) if source_type else None),
        (_short(creator) if creator else None),
        None,
    )


def _first(match: re.Match[str] | None) -> str | None:
    if match is None:
        return None
    return next((group for group in match.groups() if group), None)


# --- EXIF / PNG text ----------------------------------------------------------------------------------

_EXIF_SOFTWARE = 0x0131


def _software(data: bytes) -> str | None:
    """EXIF Software (tag 0x0131) or a PNG Software text chunk, from Pillow's header parse (never
    ``getexif()``: for a PNG it decodes the pixels to look for EXIF after them)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            value: object = None
            raw = image.info.get("exif")
            if isinstance(raw, bytes):
                exif = Image.Exif()
                exif.load(raw)
                value = exif.get(_EXIF_SOFTWARE)
            elif hasattr(image, "tag_v2"):  # TIFF: its first IFD holds the EXIF base tags
                value = image.tag_v2.get(_EXIF_SOFTWARE)
            value = value or image.info.get("Software")
    except Exception:  # not an image Pillow opens, or a broken header: no software to report
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return _short(str(value).strip("\x00 ")) if value else None


def _short(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"
