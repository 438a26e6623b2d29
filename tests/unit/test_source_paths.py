"""read_source on local paths: confinement to the allowed roots, hostile files (FIFOs, sockets, symlinks swapped
in, over-long and non-UTF-8 names) and the byte caps. URLs are tests/unit/test_sources.py."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import pytest

from dfscan.exceptions import (
    DfscanError,
    PathNotAllowedError,
    SourceNotFoundError,
    TooLargeError,
    UnsupportedSourceError,
)
from worker.inference.sources import read as sources
from worker.inference.sources.read import SourcePolicy, read_source


def refused(kind: type[DfscanError], source: str, policy: SourcePolicy) -> DfscanError:
    """Call read_source, expecting ``kind``; return the error for more checks."""
    with pytest.raises(kind) as info:
        read_source(source, policy)
    return info.value


# --- paths ---------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "sub" / "a.jpg").write_bytes(b"jpeg-bytes")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    return images


def test_paths_under_a_root_are_read(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = SourcePolicy(allowed_roots=(root,))
    assert read_source(str(root / "sub" / "a.jpg"), policy) == b"jpeg-bytes"
    monkeypatch.chdir(root)
    assert read_source("sub/a.jpg", policy) == b"jpeg-bytes"
    (root / "inside-link.jpg").symlink_to(root / "sub" / "a.jpg")
    assert read_source(str(root / "inside-link.jpg"), policy) == b"jpeg-bytes"


def test_paths_are_refused_without_roots(root: Path) -> None:
    error = refused(PathNotAllowedError, str(root / "sub" / "a.jpg"), SourcePolicy())
    assert error.code == "PATH_NOT_ALLOWED"
    assert "no allowed roots" in error.message


def test_escapes_from_the_root_are_refused(root: Path) -> None:
    policy = SourcePolicy(allowed_roots=(root,))
    (root / "out-link.txt").symlink_to(root.parent / "secret.txt")
    (root / "dir-link").symlink_to(root.parent)
    (root.parent / "images-evil").mkdir()
    (root.parent / "images-evil" / "x.jpg").write_bytes(b"x")
    for path in (
        f"{root}/../secret.txt", f"{root}/sub/../../secret.txt", f"{root}/out-link.txt", f"{root}/dir-link/secret.txt",
        f"{root}-evil/x.jpg", "/etc/passwd", f"{root}/../nothing-here.jpg",
    ):  # fmt: skip
        error = refused(PathNotAllowedError, path, policy)
        assert "resolves outside the allowed roots" in error.message


def test_missing_files_under_a_root_are_not_found(root: Path) -> None:
    error = refused(
        SourceNotFoundError,
        str(root / "missing.jpg"),
        SourcePolicy(allowed_roots=(root,)),
    )
    assert error.message == f"path {str(root / 'missing.jpg')!r} does not exist"
    assert error.code == "FILE_NOT_FOUND" and error.permanent
    refused(
        SourceNotFoundError,
        str(root / "sub" / "a.jpg" / "x"),
        SourcePolicy(allowed_roots=(root,)),
    )


def test_only_regular_files_are_read(root: Path) -> None:
    os.mkfifo(root / "pipe")
    policy = SourcePolicy(allowed_roots=(root, Path("/dev"), Path("/proc")))
    for path in (str(root / "pipe"), str(root / "sub"), str(root)):
        error = refused(PathNotAllowedError, path, policy)
        assert "not a regular file" in error.message
    for path in ("/dev/zero", "/dev/null", "/proc/self/environ", "/proc/self/cmdline"):
        error = refused(PathNotAllowedError, path, policy)
        assert "kernel pseudo-filesystem" in error.message
    refused(PathNotAllowedError, "/dev/zero", SourcePolicy(allowed_roots=(Path("/"),)))


def test_files_over_the_cap_are_refused(root: Path) -> None:
    (root / "exact.bin").write_bytes(b"e" * 100)
    (root / "over.bin").write_bytes(b"o" * 101)
    policy = SourcePolicy(allowed_roots=(root,), max_bytes=100)
    assert read_source(str(root / "exact.bin"), policy) == b"e" * 100
    error = refused(TooLargeError, str(root / "over.bin"), policy)
    assert (
        error.message
        == f"file {str(root / 'over.bin')!r} has 101 bytes, more than the 100-byte limit (limit: bytes)"
    )


def test_a_symlink_swapped_in_after_the_check_is_refused(root: Path) -> None:
    # _open_beneath gets the already-resolved path; a symlink there means one was swapped in since.
    (root / "sub" / "swapped.jpg").symlink_to(root.parent / "secret.txt")
    (root / "linkdir").symlink_to(root / "sub")
    for real in (
        root / "sub" / "swapped.jpg",
        root / "sub" / "swapped.jpg" / "x",
        root / "linkdir" / "a.jpg",
    ):
        with pytest.raises(PathNotAllowedError) as info:
            sources._open_beneath(str(root), str(real), "img.jpg")
        assert info.value.message == "refused path 'img.jpg': a symlink appeared while opening it"


# --- names that are not UTF-8, sockets, over-long names ------------------------------------------


def test_a_non_utf8_name_travels_as_a_file_url_and_is_read_under_the_path_rules(root: Path) -> None:
    from producer.sources import list_folder, path_source

    raw = os.fsencode(root) + b"/sub/bad\xff\xe9 name?.jpg"
    Path(os.fsdecode(raw)).write_bytes(b"latin-bytes")
    (root / "sub" / "100%FF.jpg").write_bytes(b"percent")  # a UTF-8 name with '%' stays a plain path
    listed = list_folder(root / "sub", recursive=False)
    url = f"file://{root}/sub/bad%FF%E9%20name%3F.jpg"
    assert listed == [str(root / "sub" / "100%FF.jpg"), str(root / "sub" / "a.jpg"), url]
    assert path_source(os.fsdecode(raw)) == url
    for source in listed:
        source.encode("utf-8")  # storable in a text column and a JSON message
    policy = SourcePolicy(allowed_roots=(root,))
    assert read_source(url, policy) == b"latin-bytes"
    assert read_source(url.replace("file://", "file://localhost"), policy) == b"latin-bytes"
    assert read_source(str(root / "sub" / "100%FF.jpg"), policy) == b"percent"
    # The path rules hold for the URL spelling too: a root elsewhere refuses it, and messages show the URL.
    error = refused(PathNotAllowedError, url, SourcePolicy(allowed_roots=(root.parent / "elsewhere",)))
    assert url in error.message
    error = refused(SourceNotFoundError, f"file://{root}/sub/gone%FF.jpg", policy)
    assert f"file://{root}/sub/gone%FF.jpg" in error.message
    Path(os.fsdecode(os.fsencode(root) + b"/out\xff")).symlink_to(root.parent / "secret.txt")
    refused(PathNotAllowedError, f"file://{root}/out%FF", policy)


@pytest.mark.parametrize(
    "source",
    [
        "file:///etc/passwd",  # spells a UTF-8 name: give the path itself
        "file:///tmp/100%25FF.jpg",
        "file://other-host/x%FF.jpg",
        "file:///x%FF.jpg?q=1",
        "file:x%FF.jpg",  # relative
        "file:///x%FF%00.jpg",  # a NUL byte
    ],
)
def test_file_urls_other_than_a_non_utf8_name_are_unsupported(source: str) -> None:
    refused(UnsupportedSourceError, source, SourcePolicy(allowed_roots=(Path("/"),)))


def test_a_unix_socket_is_refused_for_good(root: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock.jpg"))
    try:
        error = refused(PathNotAllowedError, str(root / "sock.jpg"), SourcePolicy(allowed_roots=(root,)))
    finally:
        listener.close()
    assert error.permanent and "not regular" in error.message


def test_an_over_long_name_is_not_found_for_good(root: Path) -> None:
    for path in (root / ("n" * 256 + ".jpg"), root / ("d" * 300) / "a.jpg"):
        error = refused(SourceNotFoundError, str(path), SourcePolicy(allowed_roots=(root,)))
        assert error.permanent and "too long" in error.message


def test_submit_lists_with_names_that_are_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from producer.sources import expand_targets

    listing = tmp_path / "list.txt"
    listing.write_bytes(
        b"# a comment\n/srv/up/caf\xe9.png\n/srv/up/ok.png\nhttps://img.example/caf\xe9.jpg\n"
        b"https://img.example/\xd1\x84.jpg\n\n"
    )
    expected = [
        "file:///srv/up/caf%E9.png",
        "/srv/up/ok.png",
        "https://img.example/caf%E9.jpg",
        "https://img.example/\u0444.jpg",
    ]
    assert expand_targets([f"@{listing}"]) == expected
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(listing.read_bytes())))
    assert expand_targets(["-"]) == expected
    for source in expected:
        source.encode("utf-8")


# --- videos: a larger byte cap, only for bytes that are a video ------------------------------------


def _video_and_lookalike() -> tuple[bytes, bytes]:
    from tests.fixtures.videos import make_clip

    video = make_clip(seconds=1.0)
    return video, b"\xff\xd8\xff\xe0" + b"j" * (len(video) - 4)  # a 'JPEG' of the same size


def test_a_video_file_may_use_the_video_cap_and_nothing_else_may(root: Path) -> None:
    video, other = _video_and_lookalike()
    (root / "clip.jpg").write_bytes(video)  # the name says nothing: the bytes say video
    (root / "big.mp4").write_bytes(other)  # nor here: the bytes say not video
    (root / "avif.mp4").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"a" * len(video))  # an image brand
    policy = SourcePolicy(allowed_roots=(root,), max_bytes=1000, max_video_bytes=len(video))
    assert read_source(str(root / "clip.jpg"), policy) == video
    error = refused(TooLargeError, str(root / "big.mp4"), policy)
    assert error.message.endswith("more than the 1000-byte limit (limit: bytes)")
    refused(TooLargeError, str(root / "avif.mp4"), policy)
    error = refused(
        TooLargeError,
        str(root / "clip.jpg"),
        SourcePolicy(allowed_roots=(root,), max_bytes=1000, max_video_bytes=len(video) - 1),
    )
    assert error.message.endswith(f"more than the {len(video) - 1}-byte limit for videos (limit: bytes)")
    # without a video cap, videos get max_bytes like everything else
    refused(TooLargeError, str(root / "clip.jpg"), SourcePolicy(allowed_roots=(root,), max_bytes=1000))
