"""`dfscan scan --annotate`: the picture comes from the frames the judge decoded; the source is read once."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tests.e2e.test_scan_cli import dfscan, json_rows
from tests.fixtures.http_server import serve_http
from tests.fixtures.models import REAL_FAKE, save_tiny_vit
from worker.inference.annotate import sheet_size


def _bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_annotating_urls_reads_each_once_and_draws_stills_and_animations(tmp_path: Path) -> None:
    still = _bytes(Image.new("RGB", (120, 90), (30, 140, 90)), "PNG")
    frames = [Image.new("RGB", (64, 48), (20 * i, 90, 200 - 20 * i)) for i in range(5)]
    gif = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200)
    model = save_tiny_vit(tmp_path / "m", REAL_FAKE)
    with serve_http({"/still.png": still, "/moving.gif": gif}) as server:
        env = {
            "DFSCAN_URL_ALLOWLIST": "127.0.0.1",
            "DFSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'scan.db'}",
        }
        urls = [server.url("/still.png"), server.url("/moving.gif")]
        args = ("scan", *urls, "--model", str(model), "--format", "json", "--annotate", "drawn")
        run = dfscan(*args, cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
        assert (server.hits["/still.png"], server.hits["/moving.gif"]) == (1, 1)  # no second read
    rows = {Path(r["source"]).name: r for r in json_rows(run.stdout)}
    assert rows["still.png"]["status"] == rows["moving.gif"]["status"] == "done"
    assert rows["still.png"]["frames"] is None
    assert [f["t"] for f in rows["moving.gif"]["frames"]] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert (rows["moving.gif"]["media"], rows["moving.gif"]["image_format"]) == ("image", "GIF")
    drawn = {p.name.split("-")[0]: p for p in (tmp_path / "drawn").iterdir()}
    with Image.open(drawn["still"]) as img:
        assert img.size == (120, 90)
        assert img.convert("RGB").getpixel((0, 45)) in {(230, 25, 25), (20, 170, 60)}  # the whole-image frame
    with Image.open(drawn["moving"]) as img:
        assert img.size == sheet_size(5)  # a contact sheet of the animation's frames
