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
    with api.client() as anonymous:
        assert anonymous.post("/v1/matches/hash", json={"pdq": known}).status_code == 401
