"""`POST /v1/matches/hash` and `/v1/matches/file`: match without judging, within the tenant's banks, the
shared banks and the tenant's own verdicts (docs/near-duplicates.md)."""

from __future__ import annotations

import io

from PIL import Image, ImageOps
from skimage import data as skdata

from tests.fixtures.api import ApiServer, api  # noqa: F401
from tests.fixtures.service import Service, service  # noqa: F401
from worker.inference.hashing.pdq import pdq_of


def test_a_file_matches_shared_banks_and_only_its_own_tenants_banks(service: Service, api: ApiServer) -> None:  # noqa: F811
    photo = Image.fromarray(skdata.chelsea()).convert("RGB")
    known = pdq_of(photo).hex
    acme, beta = api.tenant("acme", "read"), api.tenant("beta", "read")
    hashes = service.tmp / "known.txt"
    hashes.write_text(f"{known} cat-1\n")
    for args in (
        ("banks", "create", "industry", "--shared"),
        ("banks", "import", "industry", str(hashes)),
        ("banks", "create", "private", "--tenant", "acme"),
        ("banks", "import", "private", str(hashes), "--tenant", "acme"),
    ):
        run = service.cli(*args)
        assert run.returncode == 0, (args, run.stderr)

    buffer = io.BytesIO()
    ImageOps.mirror(photo).resize((300, 200)).save(buffer, "JPEG", quality=55)
    upload = buffer.getvalue()
    with api.client(acme) as client:
        answer = client.post("/v1/matches/file", content=upload).json()
    assert sorted(m["bank"] for m in answer["matches"]) == ["industry", "private"], answer
    assert all(m["id"] == "cat-1" and m["distance"] <= 31 for m in answer["matches"])
    with api.client(beta) as client:
        answer = client.post("/v1/matches/file", content=upload).json()
        assert [m["bank"] for m in answer["matches"]] == ["industry"], answer
        assert answer["near_duplicates"] == []
        exact = client.post("/v1/matches/hash", json={"pdq": known}).json()
        assert exact["matches"] == [{"bank": "industry", "id": "cat-1", "distance": 0}]
        flat = client.post("/v1/matches/hash", json={"pdq": known, "quality": 10}).json()
        assert flat["matches"] == []  # under the quality floor: never matched
        bad = client.post("/v1/matches/hash", json={"pdq": "z" * 64})
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "BAD_ARGUMENT"
        broken = client.post("/v1/matches/file", content=b"not an image")
        assert broken.status_code >= 400 and broken.json()["error"]["code"] in (
            "CORRUPT_IMAGE",
            "UNSUPPORTED_FORMAT",
        )
        empty = client.post("/v1/matches/file", content=b"")  # found by schemathesis: it answered 500
        assert empty.status_code == 422 and empty.json()["error"]["code"] == "CORRUPT_IMAGE", empty.text
    with api.client() as anonymous:
        assert anonymous.post("/v1/matches/hash", json={"pdq": known}).status_code == 401


def _upload(client, data: bytes, name: str) -> str:  # type: ignore[no-untyped-def]
    accepted = client.post("/v1/scans", files=[("file", (name, data, "image/jpeg"))])
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["jobs"][0]["job_id"])


def _done(client, job_id: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            assert job["status"] == "done", job
            return job  # type: ignore[no-any-return]
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not done in 120 s")


def test_tenants_reuse_only_their_own_verdicts_through_the_api(service: Service, api: ApiServer) -> None:  # noqa: F811
    """The same photo: acme uploads it, beta uploads a re-encoded copy (judged: another tenant's verdict is
    never reused), acme uploads a re-encoded copy (answered from acme's verdict, no model input)."""
    photo = Image.fromarray(skdata.chelsea()).convert("RGB")

    def jpeg(image: Image.Image, quality: int) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()

    service.start_worker()
    acme, beta = api.tenant("acme", "submit,read"), api.tenant("beta", "submit,read")
    with api.client(acme) as a, api.client(beta) as b:
        first = _done(a, _upload(a, jpeg(photo, 92), "cat.jpg"))
        other = _done(b, _upload(b, jpeg(photo.resize((400, 267)), 45), "cat-small.jpg"))
        again = _done(a, _upload(a, jpeg(photo.resize((500, 333)), 50), "cat-again.jpg"))
    assert other["near_duplicate_of"] is None, other
    assert again["near_duplicate_of"] == first["job_id"], again
    assert int(again["near_distance"]) <= 31  # type: ignore[call-overload]
    assert (again["label"], again["fake_score"]) == (first["label"], first["fake_score"])
