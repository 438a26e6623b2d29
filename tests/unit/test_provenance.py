"""Provenance: C2PA manifests signed by a test certificate made here (valid, tampered after signing,
AI-declared, capture-declared), IPTC/XMP digital source types, EXIF and PNG software, the caps on
hostile declarations, and the verdict carrying it beside an unchanged score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dfscan.verdicts import Provenance, Verdict
from tests.fixtures.models import DEEPFAKE_REAL, save_tiny_vit
from tests.fixtures.provenance import (
    jpeg_with_software,
    plain_jpeg,
    png_with,
    signed_jpeg,
    tampered,
    xmp_packet,
)
from worker.inference.images.decode import ImagePolicy
from worker.inference.judge import Judge
from worker.inference.model.classifier import Classifier, load_classifier
from worker.inference.provenance import ProvenancePolicy, read_provenance
from worker.inference.sources.read import SourcePolicy

POLICY = ProvenancePolicy()


def test_a_signed_manifest_declaring_trained_algorithmic_media_is_valid_and_declared_ai() -> None:
    found = read_provenance(signed_jpeg("trainedAlgorithmicMedia"), POLICY)

    assert found.manifest is True
    assert found.signature_valid is True and found.signature_errors == ()
    assert found.signer == "dfscan test signer / dfscan tests"
    assert found.claim_generator == "dfscan-test-generator 1.0"
    assert found.actions == ("c2pa.created",)
    assert found.digital_source_type == "trainedAlgorithmicMedia"
    assert (found.declared_by, found.declared_ai, found.error) == ("c2pa", True, None)


def test_a_manifest_tampered_after_signing_is_invalid_and_says_why() -> None:
    signed = signed_jpeg("trainedAlgorithmicMedia")
    found = read_provenance(tampered(signed), POLICY)

    assert found.manifest is True
    assert found.signature_valid is False
    assert "assertion.dataHash.mismatch" in found.signature_errors
    # What it declared is still reported, beside the failed check: the reader weighs both.
    assert found.declared_ai is True
    assert read_provenance(signed, POLICY).signature_valid is True  # the same file before the flip


def test_a_capture_declaration_is_declared_ai_false_and_another_type_is_null() -> None:
    capture = read_provenance(signed_jpeg("digitalCapture"), POLICY)
    # C2PA requires a source type on c2pa.created: one outside the IPTC vocabulary says nothing.
    other = read_provenance(signed_jpeg("privateVocabularyType"), POLICY)

    assert (capture.digital_source_type, capture.declared_ai) == ("digitalCapture", False)
    assert other.manifest is True and other.signature_valid is True
    assert (other.digital_source_type, other.declared_ai) == ("privateVocabularyType", None)


def test_a_composite_with_generated_parts_is_declared_ai_whatever_the_first_action_says() -> None:
    iptc = "http://cv.iptc.org/newscodes/digitalsourcetype/"
    actions = [
        {"action": "c2pa.created", "digitalSourceType": iptc + "digitalCapture"},
        {"action": "c2pa.edited", "digitalSourceType": iptc + "compositeWithTrainedAlgorithmicMedia"},
    ]
    found = read_provenance(signed_jpeg(actions=actions), POLICY)

    assert found.actions == ("c2pa.created", "c2pa.edited")
    assert (found.digital_source_type, found.declared_ai) == ("compositeWithTrainedAlgorithmicMedia", True)


def test_a_plain_file_declares_nothing() -> None:
    assert read_provenance(plain_jpeg(), POLICY) == Provenance()


def test_xmp_declarations_and_software_are_read_without_a_manifest() -> None:
    png = png_with(xmp_packet("trainedAlgorithmicMedia", "Generator 3"), software="sd-webui 1.9")
    found = read_provenance(png, POLICY)

    assert found.manifest is False and found.signature_valid is None
    assert (found.digital_source_type, found.declared_by, found.declared_ai) == (
        "trainedAlgorithmicMedia",
        "xmp",
        True,
    )
    assert found.software == "sd-webui 1.9"  # the PNG Software chunk before XMP CreatorTool
    assert read_provenance(png_with(xmp_packet(creator_tool="Generator 3")), POLICY).software == "Generator 3"
    assert read_provenance(jpeg_with_software("GIMP 2.10"), POLICY).software == "GIMP 2.10"


def test_an_element_form_declaration_is_read() -> None:
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description>'
        "<Iptc4xmpExt:DigitalSourceType>http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
        "</Iptc4xmpExt:DigitalSourceType></rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    assert read_provenance(png_with(xmp), POLICY).declared_ai is False


def test_an_xmp_packet_over_the_cap_is_not_read_and_says_so() -> None:
    big = png_with(xmp_packet("trainedAlgorithmicMedia", padding=300_000))
    found = read_provenance(big, POLICY)

    assert found.declared_ai is None and found.digital_source_type is None
    assert found.error is not None and "xmp: no packet end within 262144 bytes" in found.error
    assert read_provenance(big, ProvenancePolicy(max_xmp_bytes=400_000)).declared_ai is True


def test_hostile_declarations_cost_a_bounded_search() -> None:
    # An unterminated packet followed by 8 MB of '<' (the worst input for the patterns' alternatives),
    # and manifest markers with no manifest behind them.
    hostile = plain_jpeg() + b"<x:xmpmeta " + b"<" * 8_000_000 + b"jumb c2pa" * 1000
    found = read_provenance(hostile, POLICY)

    assert found.declared_ai is None
    assert found.error is not None and "xmp: no packet end" in found.error
    long_name = png_with(xmp_packet("x" * 5000 + "trainedAlgorithmicMedia"))
    assert read_provenance(long_name, POLICY).declared_ai is None  # a 5 kB value is not a declaration


def test_a_manifest_report_over_the_cap_is_present_but_unread() -> None:
    found = read_provenance(signed_jpeg(), ProvenancePolicy(max_manifest_json=100))

    assert found.manifest is True and found.signature_valid is None and found.declared_ai is None
    assert found.error == "c2pa: manifest report over 100 bytes: not read"


def test_a_reader_failure_is_reported_and_the_rest_is_still_read() -> None:
    def crash(*_: object) -> Provenance:
        raise MemoryError("reader over its memory limit")

    png = png_with(xmp_packet("digitalCapture"), software="camera") + b"jumb c2pa"
    found = read_provenance(png, POLICY, isolate=crash)

    assert found.manifest is True and found.signature_valid is None
    assert found.error == "c2pa: MemoryError: reader over its memory limit"
    assert (found.declared_ai, found.declared_by, found.software) == (False, "xmp", "camera")


def test_provenance_round_trips_through_the_stored_row_and_output() -> None:
    found = read_provenance(signed_jpeg(), POLICY)
    verdict = Verdict(
        source="x", status="done", label="real", fake_score=0.1, threshold=0.5, provenance=found
    )

    row = verdict.row()
    assert json.loads(json.dumps(row["provenance"])) == found.output()
    assert verdict.output()["provenance"]["declared_ai"] is True
    back = Verdict.from_stored(source="x", status="done", error_code=None, error=None, row=row)
    assert back.provenance == found


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    torch.set_num_threads(1)
    path = save_tiny_vit(tmp_path_factory.mktemp("model") / "m", DEEPFAKE_REAL, seed=2, head_scale=30.0)
    return load_classifier(str(path))


@pytest.mark.parametrize("processes", [0, 1])
def test_the_verdict_carries_provenance_beside_an_unchanged_score(
    tmp_path: Path, detector: Classifier, processes: int
) -> None:
    signed = tmp_path / "signed.jpg"
    signed.write_bytes(signed_jpeg("trainedAlgorithmicMedia", image=plain_jpeg((120, 90), (30, 160, 90))))
    images = ImagePolicy(decode_processes=processes)
    sources = SourcePolicy(allowed_roots=(tmp_path,))
    reading = Judge(detector, sources=sources, images=images, provenance=POLICY)
    blind = Judge(detector, sources=sources, images=images)
    try:
        read, unread = reading.judge(str(signed)), blind.judge(str(signed))
        again = reading.judge(str(signed))  # the memo answers the score; provenance is read again
    finally:
        reading.close()
        blind.close()

    assert read.done and unread.done, (read.error, unread.error)
    assert read.fake_score == unread.fake_score and read.model_version == unread.model_version
    assert unread.provenance is None
    assert read.provenance is not None and read.provenance.signature_valid is True
    assert read.provenance.declared_ai is True
    assert again.provenance == read.provenance


@pytest.mark.parametrize("where", ["label", "boxes", "truncated"])
def test_a_damaged_manifest_store_is_reported_never_raised(where: str) -> None:
    signed = bytearray(signed_jpeg())
    start = signed.find(b"jumb")
    if where == "label":  # the store's own description box
        signed[start + 8 : start + 40] = bytes(32)
    elif where == "boxes":  # sizes and contents further in: claim, signature, assertions
        for offset in range(start + 200, min(len(signed), start + 20_000), 97):
            signed[offset] ^= 0xA5
    else:  # cut inside the manifest
        signed = signed[: start + 600]
    found = read_provenance(bytes(signed), POLICY)

    if where == "label":  # no recognisable store: read as absent (a stripped manifest looks the same)
        assert found == Provenance()
    else:  # a store that is there but broken: present, not valid, and why
        assert found.manifest is True and found.signature_valid is False, found
        assert found.error is not None and found.error.startswith("c2pa: ")
        assert found.declared_ai is None  # nothing read from a broken store is reported as declared
