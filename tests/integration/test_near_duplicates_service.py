"""Near-duplicates through the service: a re-encoded re-upload by the same tenant is answered from its
verdict without a model input; another tenant's verdict is never reused (docs/near-duplicates.md)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

from PIL import Image, ImageOps
from skimage import data as skdata
from sqlalchemy import select, update

from db.models import VerdictHash, VerdictRow
from db.session import new_engine, new_session_factory
from tests.fixtures.service import Service

OTHER_TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def _photo(
    folder: Path, name: str, *, quality: int | None = None, scale: float = 1.0, mirror: bool = False
) -> Path:
    image = Image.fromarray(skdata.chelsea()).convert("RGB")
    if mirror:
        image = ImageOps.mirror(image)
    if scale != 1.0:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
    path = folder / name
    if quality is None:
        image.save(path, "PNG")
    else:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        path.write_bytes(buffer.getvalue())
    return path


def _submit(service: Service, path: Path) -> dict[str, object]:
    run = service.cli("submit", str(path), "--wait", "--timeout", "120", "--format", "json")
    assert run.returncode == 0, run.stderr
    (row,) = [json.loads(line) for line in run.stdout.splitlines()]
    assert row["status"] == "done", row
    return row


def test_a_reencoded_reupload_reuses_its_own_tenants_verdict_never_another_tenants(service: Service) -> None:
    sessions = new_session_factory(new_engine(service.database_url))
    service.start_worker()
    first = _submit(service, _photo(service.images, "original.png"))
    assert first["near_duplicate_of"] is None and isinstance(first["pdq"], str) and len(first["pdq"]) == 64
    # The first upload becomes another tenant's (the worker has not read its hash yet: it reads rows past
    # its watermark at the next look-up, so it sees them as that tenant's).
    with sessions.begin() as session:
        session.execute(update(VerdictHash).values(tenant_id=OTHER_TENANT))

    second = _submit(service, _photo(service.images, "reencoded.jpg", quality=40, scale=0.7))
    assert second["near_duplicate_of"] is None, "another tenant's verdict was reused"
    assert second["cached"] is False

    third = _submit(service, _photo(service.images, "again.jpg", quality=60, scale=0.85))
    assert third["near_duplicate_of"] == second["job_id"], third
    assert 0 <= int(third["near_distance"]) <= 31  # type: ignore[call-overload]
    assert (third["label"], third["fake_score"]) == (second["label"], second["fake_score"])
    with sessions() as session:
        by_job = {
            str(v.job_id): v
            for v in session.scalars(
                select(VerdictRow).where(
                    VerdictRow.job_id.in_([uuid.UUID(str(second["job_id"])), uuid.UUID(str(third["job_id"]))])
                )
            )
        }
        stored = by_job[str(third["job_id"])]
        assert str(stored.near_duplicate_of) == second["job_id"]
        assert stored.infer_ms == 0.0, "the re-upload went through the model"
        assert by_job[str(second["job_id"])].infer_ms > 0.0
        hashes = session.scalars(select(VerdictHash.job_id)).all()
        assert len(hashes) == 3  # every verdict stores its hash, reused or not


def test_a_shared_bank_that_forces_fake_matches_every_tenants_reencoded_upload(service: Service) -> None:
    from worker.inference.hashing.pdq import pdq_of

    original = Image.fromarray(skdata.chelsea()).convert("RGB")
    known = service.tmp / "known.txt"
    known.write_text(f"# a partner's list\n{pdq_of(original).hex} partner-17\n")
    assert service.cli("banks", "create", "partner", "--shared", "--force-label", "fake").returncode == 0
    imported = service.cli("banks", "import", "partner", str(known))
    assert imported.returncode == 0 and "imported 1" in imported.stdout, imported.stderr
    bad = service.tmp / "bad.csv"
    bad.write_text("signal_type,signal_value,id\npdq,abc,1\n")
    refused = service.cli("banks", "import", "partner", str(bad))
    assert refused.returncode == 2 and "line 2" in refused.stderr, refused.stderr

    service.start_worker()
    row = _submit(service, _photo(service.images, "mirrored.jpg", quality=50, scale=0.6, mirror=True))
    assert row["matches"] and row["matches"][0]["bank"] == "partner", row  # type: ignore[index]
    assert row["matches"][0]["id"] == "partner-17"  # type: ignore[index]
    assert row["label"] == "fake"

    added = service.cli("banks", "add", "partner", "--from-job", str(row["job_id"]))
    assert added.returncode == 0, added.stderr
    exported = service.cli("banks", "export", "partner")
    lines = exported.stdout.splitlines()
    assert lines[0] == f"{pdq_of(original).hex} partner-17" and lines[1].endswith(str(row["job_id"]))
    as_csv = service.cli("banks", "export", "partner", "--csv").stdout.splitlines()
    assert as_csv[0] == "signal_type,signal_value,id" and len(as_csv) == 3
    listed = [json.loads(line) for line in service.cli("banks", "list", "--json").stdout.splitlines()]
    assert listed == [
        {"name": "partner", "entries": 2, "shared": True, "enabled": True, "force_label": "fake", "own": True}
    ]
