"""Near-duplicates through the service: a re-encoded re-upload by the same tenant is answered from its
verdict without a model input; another tenant's verdict is never reused (docs/near-duplicates.md)."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

from PIL import Image
from skimage import data as skdata
from sqlalchemy import select, update

from db.models import Verdict, VerdictHash
from db.session import new_engine, new_session_factory
from tests.fixtures.service import Service

OTHER_TENANT = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def _photo(folder: Path, name: str, *, quality: int | None = None, scale: float = 1.0) -> Path:
    image = Image.fromarray(skdata.chelsea()).convert("RGB")
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
                select(Verdict).where(
                    Verdict.job_id.in_([uuid.UUID(str(second["job_id"])), uuid.UUID(str(third["job_id"]))])
                )
            )
        }
        stored = by_job[str(third["job_id"])]
        assert str(stored.near_duplicate_of) == second["job_id"]
        assert stored.infer_ms == 0.0, "the re-upload went through the model"
        assert by_job[str(second["job_id"])].infer_ms > 0.0
        hashes = session.scalars(select(VerdictHash.job_id)).all()
        assert len(hashes) == 3  # every verdict stores its hash, reused or not
