"""Open untrusted video bytes and index their packets, decoding nothing: the checks before any frame.

Rules 1 to 4 of :mod:`worker.inference.video.decode`, which samples frames from what this module opens.
Pure: PyAV (FFmpeg) only.

1. **Kind from the bytes** (:func:`~worker.inference.sources.media.video_container`): an ISO-BMFF ``ftyp`` box
   whose brand is not an image brand (AVIF/HEIF are images) is MP4/MOV; the EBML magic ``1A 45 DF A3`` is
   Matroska/WebM. The name of a file or URL is never consulted. The demuxer is then *forced* to the sniffed
   one (FFmpeg probes nothing else). An MP4 whose top-level boxes run past the end is truncated.
2. **Allow-list** (:data:`CONTAINERS`): MP4/MOV with H.264 or H.265, Matroska/WebM with VP8, VP9 or AV1.
   Anything else (MPEG-4 part 2, FFV1, AVI, audio-only files) is ``UNSUPPORTED_FORMAT``.
3. **Caps from the headers**: bytes, streams, declared duration, width x height of the video stream;
   FFmpeg's own ``max_pixels`` option is set to the same cap on every decoder (a hard backstop).
4. **A demux pass indexes the packets** (:func:`index_packets`): timestamps and keyframe flags, the frame
   cap and the deadline counted in packets, timestamps that contradict the header refused.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import av.error

from dfscan.exceptions import (
    CorruptVideoError,
    DfscanError,
    TooLargeError,
    UnsupportedFormatError,
    VideoTooLargeError,
    VideoTooLongError,
)
from worker.inference.sources.media import video_container
from worker.inference.video.plan import Index

if TYPE_CHECKING:  # decode.py imports this module; the policy is only a type here
    from worker.inference.video.decode import VideoPolicy

logger = logging.getLogger(__name__)

MiB = 1024 * 1024

# Sniffed container -> (FFmpeg demuxer forced at open, codecs allowed in it). FFmpeg's decoder names.
CONTAINERS: dict[str, tuple[str, frozenset[str]]] = {
    "mp4": ("mov", frozenset({"h264", "hevc"})),
    "matroska": ("matroska", frozenset({"vp8", "vp9", "av1", "libdav1d"})),
}


def open_container(data: bytes, policy: VideoPolicy) -> av.container.InputContainer:
    kind = video_container(data)
    if kind is None:
        raise UnsupportedFormatError(
            f"not a video in an allowed container (MP4/MOV, WebM/MKV); starts with {data[:8]!r}"
        )
    if len(data) > policy.max_bytes:
        raise TooLargeError(f"video has {len(data)} bytes, more than the {policy.max_bytes}-byte video limit")
    if kind == "mp4":
        check_boxes(data)
    demuxer, codecs = CONTAINERS[kind]
    options = {"max_pixels": str(policy.max_frame_pixels)}
    try:
        container = av.open(
            io.BytesIO(data),
            mode="r",
            format=demuxer,
            options=options,
            container_options={"probesize": str(min(len(data), 5 * MiB) or 32), "analyzeduration": "2000000"},
        )
    except MemoryError as exc:
        raise VideoTooLargeError(
            "out of memory while reading the video's headers", limit="video_memory"
        ) from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise CorruptVideoError(f"{kind} data cannot be parsed: {reason(exc)}") from exc
    try:
        check_headers(container, kind, codecs, policy)
    except BaseException:
        container.close()
        raise
    return container


def check_boxes(data: bytes) -> None:
    """Walk the top-level ISO-BMFF boxes: one that runs past the end of the data means a truncated file.

    FFmpeg reads what it can of a cut-off ``moov`` and may report a file without its video track; a cut-off
    ``mdat`` loses the end of the clip. Both are broken downloads far more often than anything else, and
    are refused as truncated, as truncated images are.
    """
    offset, end = 0, len(data)
    while offset + 8 <= end:
        size = int.from_bytes(data[offset : offset + 4], "big")
        box = data[offset + 4 : offset + 8]
        if size == 1:
            if offset + 16 > end:
                break
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
        elif size == 0:
            return  # extends to the end of the file
        if size < 8:
            raise CorruptVideoError(f"MP4 box {box!r} at offset {offset} declares an impossible size {size}")
        if offset + size > end:
            raise CorruptVideoError(
                f"truncated MP4: box {box!r} at offset {offset} declares {size} bytes, only {end - offset} remain"
            )
        offset += size
    if offset != end:
        raise CorruptVideoError(f"truncated MP4: {end - offset} stray bytes after the last complete box")


def check_headers(
    container: av.container.InputContainer, kind: str, codecs: frozenset[str], policy: VideoPolicy
) -> None:
    streams = container.streams
    if len(streams) > policy.max_streams:
        raise VideoTooLargeError(
            f"video has {len(streams)} streams, over the cap of {policy.max_streams}", limit="streams"
        )
    if not streams.video:
        raise UnsupportedFormatError(f"{kind} file has no video stream (audio or data only)")
    stream = streams.video[0]
    ctx = stream.codec_context
    codec = (
        stream.codec_context.codec.name if ctx is not None else (stream.codec.name if stream.codec else "?")
    )
    if ctx is None or codec not in codecs:
        allowed = ", ".join(sorted(c for c in codecs if not c.startswith("lib")))
        raise UnsupportedFormatError(f"{kind} video coded with {codec!r}, not one of {allowed}")
    width, height = ctx.width, ctx.height
    if width <= 0 or height <= 0:
        raise CorruptVideoError(f"video declares an empty frame size {width}x{height}")
    if width * height > policy.max_frame_pixels:
        raise VideoTooLargeError(
            f"video frames are {width}x{height} = {width * height} pixels, over the cap of {policy.max_frame_pixels}"
        )
    declared = declared_seconds(container, stream)
    if declared is not None and declared > policy.max_seconds:
        raise VideoTooLongError(f"video declares {declared:.1f} s, over the cap of {policy.max_seconds:g} s")
    ctx.thread_count = policy.decode_threads
    ctx.options = {"max_pixels": str(policy.max_frame_pixels)}


def declared_seconds(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    """The duration the headers declare. A container's duration is where it ends (FFmpeg adds the start
    time to it), so its start is taken off: a 2 s clip that starts 2^40 ms in is 2 s long."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        seconds = container.duration / 1_000_000
        start = (container.start_time or 0) / 1_000_000
        return seconds - start if 0 < start < seconds else seconds
    return None


def index_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    policy: VideoPolicy,
    deadline: Callable[[str], None],
) -> Index:
    """Demux every packet of the video stream (no decoding): timestamps and keyframe flags.

    The deadline and the frame cap count packets, not distinct timestamps: a file that repeats one
    cluster (millions of packets over a few timestamps) stops at the cap or the deadline like any other."""
    tb = stream.time_base or Fraction(1, 90_000)
    max_frames = int(policy.max_seconds * policy.max_fps) + 1
    max_span = policy.max_seconds / tb
    entries: dict[int, bool] = {}
    order: list[bool] = []  # keyframe flag of every packet, in demux order
    durations: list[int] = []
    lo: int | None = None
    hi: int | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 and packet.pts is None and packet.dts is None:
                continue  # the flush packet at the end
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                continue
            order.append(bool(packet.is_keyframe))
            if len(order) > max_frames:
                raise VideoTooLongError(f"video has more than {max_frames} frames (packets)")
            if len(order) % 256 == 0:
                deadline("reading the video's index")
            entries[pts] = entries.get(pts, False) or bool(packet.is_keyframe)
            if packet.duration:
                durations.append(packet.duration)
            lo = pts if lo is None else min(lo, pts)
            hi = pts if hi is None else max(hi, pts)
            if hi - lo > max_span:
                raise VideoTooLongError(
                    f"video timestamps run past {policy.max_seconds:g} s (the header said otherwise)"
                )
    except DfscanError:
        raise
    except MemoryError as exc:
        raise VideoTooLargeError(
            "out of memory while indexing the video's packets", limit="video_memory"
        ) from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if not entries:
            raise CorruptVideoError(f"video packets cannot be read: {reason(exc)}") from exc
        logger.info("video index stops early at a broken packet: %s", reason(exc))
    deadline("reading the video's index")
    if not entries or lo is None or hi is None:
        raise CorruptVideoError("video stream has no packets")
    if len(entries) * 2 < len(order):
        return _sequential(container, stream, order)
    ordered = sorted(entries)
    step = (
        sorted(durations)[len(durations) // 2]
        if durations
        else (ordered[-1] - ordered[-2] if len(ordered) > 1 else 1)
    )
    return Index(
        pts=ordered, key=[entries[p] for p in ordered], time_base=tb, start=lo, end=hi + max(step, 1)
    )


def _sequential(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, order: list[bool]
) -> Index:
    """An index by frame order, for a stream whose timestamps repeat (fewer than half are distinct):
    frames are spread evenly over the declared duration (25 per second when none is declared)."""
    declared = declared_seconds(container, stream)
    seconds = (
        declared if declared is not None and math.isfinite(declared) and declared > 0 else len(order) / 25
    )
    logger.info("video timestamps repeat (%d packets): frames are told apart by their order", len(order))
    return Index(
        pts=list(range(len(order))),
        key=order,
        time_base=Fraction(seconds).limit_denominator(1_000_000) / len(order),
        start=0,
        end=len(order),
        sequential=True,
    )


def reason(exc: BaseException) -> str:
    text = str(exc).split("; last error log:")[0]
    return f"{type(exc).__name__}: {text}"[:300]
