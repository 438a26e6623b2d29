"""The console's pure parts: agreement between model and reviewers, and the SVG it draws."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import pytest

from dfscan.console import agreement
from dfscan.console.agreement import Reviewed
from dfscan.console.svg import Box, Heat, Point, Thumb, face_boxes, timeline

SVG = "{http://www.w3.org/2000/svg}"


def _item(job: str, label: str, score: float, decision: str, day: int) -> Reviewed:
    return Reviewed(job, label, score, 0.5, decision, datetime(2026, 12, day, 12, tzinfo=timezone.utc))


ITEMS = [
    _item("a", "fake", 0.9, "fake", 1),
    _item("b", "fake", 0.6, "real", 1),
    _item("c", "real", 0.1, "real", 1),
    _item("d", "real", 0.45, "fake", 2),
    _item("e", "real", 0.2, "not_applicable", 2),
    _item("f", "fake", 0.99, "escalate", 3),
]


def test_confusion_counts_every_cell_and_keeps_na_and_escalate_out_of_the_rate() -> None:
    matrix = agreement.confusion(ITEMS)
    assert matrix.count("fake", "fake") == 1
    assert matrix.count("fake", "real") == 1
    assert matrix.count("real", "fake") == 1
    assert matrix.count("real", "real") == 1
    assert matrix.count("real", "not_applicable") == 1
    assert matrix.count("fake", "escalate") == 1
    assert matrix.comparable == 4
    assert matrix.disagreements == 2
    assert matrix.disagreement_rate == 0.5
    assert agreement.confusion([]).disagreement_rate is None


def test_confusion_refuses_an_unknown_decision() -> None:
    with pytest.raises(ValueError, match="unknown decision"):
        agreement.confusion([_item("x", "fake", 0.9, "maybe", 1)])


def test_disagreement_by_day_skips_days_with_nothing_comparable() -> None:
    points = agreement.disagreement_by_day(ITEMS)
    assert [(p.day.day, p.comparable, p.disagreements) for p in points] == [(1, 3, 1), (2, 1, 1)]
    assert points[0].rate == pytest.approx(1 / 3)


def test_furthest_orders_by_distance_from_the_decision() -> None:
    ranked = agreement.furthest(ITEMS, limit=3)
    assert [(item.job_id, round(d, 2)) for item, d in ranked[:2]] == [("b", 0.6), ("d", 0.55)]
    assert ranked[2][0].job_id in ("a", "c") and ranked[2][1] == pytest.approx(0.1)
    assert all(item.decision in ("fake", "real") for item, _ in agreement.furthest(ITEMS))


def test_face_boxes_draw_one_rect_per_face_in_order_with_its_score() -> None:
    boxes = [Box(10, 20, 30, 40, 0.91), Box(100, 5, 50, 50, 0.12)]
    root = ET.fromstring(face_boxes(400, 300, boxes, threshold=0.5))
    assert root.get("viewBox") == "0 0 400 300"
    rects = root.findall(f".//{SVG}rect")
    assert [r.get("data-face-index") for r in rects] == ["0", "1"]
    assert [(r.get("x"), r.get("y"), r.get("width"), r.get("height")) for r in rects] == [
        ("10", "20", "30", "40"),
        ("100", "5", "50", "50"),
    ]
    assert rects[0].get("stroke") != rects[1].get("stroke")  # fake and real differ
    assert [t.text for t in root.findall(f".//{SVG}text")] == ["0.91", "0.12"]
    assert "style=" not in face_boxes(400, 300, boxes, threshold=0.5)


def test_face_boxes_with_no_faces_is_an_empty_overlay_and_bad_sizes_are_refused() -> None:
    root = ET.fromstring(face_boxes(10, 10, [], threshold=0.5))
    assert root.findall(f".//{SVG}rect") == []
    with pytest.raises(ValueError):
        face_boxes(0, 10, [], threshold=0.5)


def test_timeline_marks_the_first_highest_frame_as_the_peak() -> None:
    points = [Point(0.0, 0.2), Point(1.0, 0.8), Point(2.0, 0.8), Point(3.0, 0.1)]
    root = ET.fromstring(timeline(points, 0.5, duration_s=4.0))
    peaks = [c for c in root.findall(f".//{SVG}circle") if c.get("class") == "peak"]
    assert len(peaks) == 1 and peaks[0].get("data-t") == "1"
    assert len([c for c in root.findall(f".//{SVG}circle") if c.get("class") == "frame"]) == 4
    assert root.find(f".//{SVG}polyline") is not None
    assert ET.fromstring(timeline([], 0.5)).find(f".//{SVG}polyline") is None


def test_heatmaps_are_cells_over_their_region_under_the_face_boxes() -> None:
    heats = [Heat((100, 50, 40, 20), [[0.0, 1.0], [0.5, 2.0]]), Heat(None, [[0.2, -1.0, 0.6]])]
    root = ET.fromstring(face_boxes(300, 200, [Box(10, 10, 20, 20, 0.9)], 0.5, heats))
    groups = root.findall(f"{SVG}g")
    assert [g.get("class") for g in groups] == ["heatmap", "heatmap", "face"]  # under the boxes
    first = [(c.get("x"), c.get("y"), c.get("width"), c.get("height")) for c in groups[0]]
    assert first == [("120", "50", "20", "10"), ("100", "60", "20", "10"), ("120", "60", "20", "10")]
    assert [c.get("fill-opacity") for c in groups[0]] == ["0.6", "0.3", "0.6"]  # clamped to [0, 1]
    whole = [(c.get("x"), c.get("width"), c.get("height")) for c in groups[1]]
    assert whole == [("0", "100", "200"), ("200", "100", "200")]  # the whole image; -1 is not drawn


def test_timeline_thumbnails_sit_under_the_chart_at_their_times_inside_the_plot() -> None:
    points = [Point(t, 0.3) for t in (0.0, 1.0, 2.0, 4.0)]
    thumbs = [Thumb(4.0, "/ui/previews/j/2"), Thumb(0.0, "/ui/previews/j/0"), Thumb(2.0, '/x"><script>')]
    plain = ET.fromstring(timeline(points, 0.5, duration_s=4.0))
    root = ET.fromstring(timeline(points, 0.5, duration_s=4.0, thumbs=thumbs, aspect=0.75))
    chart_h = float(plain.get("viewBox", "").split()[3])
    assert float(root.get("viewBox", "").split()[3]) > chart_h  # the row is added below the chart
    images = root.findall(f".//{SVG}image")
    assert [i.get("data-t") for i in images] == ["0", "2", "4"]  # in time order
    assert [i.get("href") for i in images] == ["/ui/previews/j/0", '/x"><script>', "/ui/previews/j/2"]
    xs = [float(i.get("x", "")) for i in images]
    widths = [float(i.get("width", "")) for i in images]
    assert xs == sorted(xs) and xs[0] >= 40 and xs[-1] + widths[-1] <= 640 - 10  # inside the plot
    assert all(float(i.get("y", "")) >= chart_h for i in images)
    assert float(images[0].get("height", "")) == pytest.approx(widths[0] * 0.75)
    assert "<script>" not in timeline(points, 0.5, thumbs=thumbs)  # the href is escaped
    assert ET.fromstring(timeline(points, 0.5)).find(f".//{SVG}image") is None


def test_export_writes_the_train_layout_and_a_manifest_of_every_job(tmp_path) -> None:
    import io
    import json

    from PIL import Image

    from dfscan.console.export import Decided, export
    from worker.training.data import load_labelled_data

    def png(colour: tuple[int, int, int]) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buf, "PNG")
        return buf.getvalue()

    when = datetime(2026, 12, 4, tzinfo=timezone.utc)
    items = [
        Decided(f"f{i}", "fake", "image", "PNG", "0" * 64, when, lambda i=i: png((200, i * 20, 0)))
        for i in range(5)
    ]
    items += [
        Decided(f"r{i}", "real", "image", "PNG", "1" * 64, when, lambda i=i: png((0, i * 20, 200)))
        for i in range(5)
    ]
    items += [
        Decided("gone", "fake", "image", "PNG", "2" * 64, when, lambda: None),
        Decided("esc", "escalate", "image", "PNG", "3" * 64, when, lambda: b"x"),
        Decided("vid", "real", "video", "MP4", "4" * 64, when, lambda: b"x"),
        Decided("heic", "real", "image", "HEIF", "5" * 64, when, lambda: b"x"),
    ]
    report = export(items, tmp_path, tenant="acme", since=when)
    assert report.written == {"fake": 5, "real": 5}
    assert sorted(p.name for p in (tmp_path / "fake").iterdir()) == [f"f{i}.png" for i in range(5)]
    manifest = json.loads(report.manifest.read_text())
    assert [e["job_id"] for e in manifest["jobs"]] == [i.job_id for i in items]
    assert {e["job_id"]: e.get("skipped") for e in manifest["jobs"] if "skipped" in e} == {
        "gone": "bytes no longer held",
        "esc": "decision escalate",
        "vid": "media video",
        "heic": "format HEIF not read by dfscan train",
    }
    data = load_labelled_data(tmp_path)  # the layout `dfscan train` reads
    assert sum(sum(c.values()) for c in data.counts().values()) == 10


def test_session_cookies_are_signed_bound_to_their_tenant_and_expire() -> None:
    import uuid as _uuid

    from dfscan.console.session import Signer, tokens_match

    signer = Signer("secret-a", max_age_s=3600)
    key, tenant = _uuid.uuid4(), _uuid.uuid4()
    value, session = signer.session_cookie(key, tenant)
    read = signer.read_session(value)
    assert read == session and read.tenant_id == tenant and read.key_id == key
    assert Signer("secret-b", max_age_s=3600).read_session(value) is None  # another deployment's key
    assert signer.read_session(value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]) is None
    assert signer.read_session("") is None and signer.read_session("garbage") is None
    login, token = signer.login_cookie()
    assert signer.read_login(login) == token
    assert signer.read_session(login) is None  # a sign-in cookie is not a session (its own salt)
    assert tokens_match(session.csrf, session.csrf)
    assert not tokens_match(session.csrf, "") and not tokens_match(None, session.csrf)
    expired = Signer("secret-a", max_age_s=0.0)
    import time as _time

    _time.sleep(1.1)
    assert expired.read_session(value) is None
