"""Untrusted bytes to a few sampled RGB frames of a video, safely: sniffed kind, allow-list, caps, deadline.

Pure: PyAV (FFmpeg), NumPy and Pillow only. The rules, in the order they are applied:

1. **Kind from the bytes** (:func:`~worker.inference.media.video_container`): an ISO-BMFF ``ftyp`` box whose brand is not an image brand
   (AVIF/HEIF are images) is MP4/MOV; the EBML magic ``1A 45 DF A3`` is Matroska/WebM. The name of a file
   or URL is never consulted. The demuxer is then *forced* to the sniffed one (FFmpeg probes nothing else).
2. **Allow-list**: MP4/MOV with H.264 or H.265, Matroska/WebM with VP8, VP9 or AV1 (decoded by dav1d).
   Anything else (MPEG-4 part 2, FFV1, AVI, audio-only files) is ``UNSUPPORTED_FORMAT``.
3. **Caps from the headers, before any frame is decoded**: bytes (``TOO_LARGE``), streams
   (``VIDEO_TOO_LARGE``), declared duration (``VIDEO_TOO_LONG``), width x height of the video stream
   (``VIDEO_TOO_LARGE``). FFmpeg's own ``max_pixels`` option is set to the same cap on every decoder, so a
   stream whose parameter sets change size mid-stream is refused by the decoder too (a hard backstop).
4. **A demux pass (no decoding) indexes the packets**: presentation timestamps and keyframe flags. It
   catches timestamps that contradict the header (a moov atom that lies: ``VIDEO_TOO_LONG``) and caps the
   number of frames (``max_seconds * max_fps``), so the plan below never walks an unbounded list.
5. **Sampling plan, chosen by measurement** (``bench/video.py``): ``frames`` targets spread evenly over
   the duration (or ``fps`` per second). A keyframe within a quarter of the target spacing stands in for
   a target (one frame decoded); other targets are decoded exactly. Runs of frames to decode are merged:
   the decoder seeks to the keyframe before a target only when that keyframe lies past the frames it has
   already decoded, otherwise it decodes forward. So the plan never decodes more frames than decoding the
   whole file straight through, nor more than independent frame-exact seeks; with keyframes every second
   or two it decodes about one frame per sample. The number of frames the plan decodes is known before
   decoding starts.
6. **Decoding, bounded**: one frame at a time (a generator: never all frames in memory), scaled straight
   from YUV to RGB at reduced size by one reused swscale context (longest side ``frame_side``), on
   ``decode_threads`` threads. A deadline is checked between packets: the Judge's per-job budget
   (``BUDGET_EXCEEDED``: decoding counts, waiting for the model does not), else ``deadline_s`` of wall
   time (``VIDEO_TOO_LARGE``).
   Packets that fail to decode are skipped; if fewer than half the sampled frames decode, or none does,
   the video is ``CORRUPT_VIDEO``. Memory per job is bounded by the frame-pixel cap (the decoder's few
   reference frames), the packet index (capped) and one scaled RGB frame.
"""

from __future__ import annotations

import bisect
import io
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.error
from av.video.reformatter import VideoReformatter
from PIL import Image

from dfscan.exceptions import (
    CorruptVideoError,
    DfscanError,
    TooLargeError,
    UnsupportedFormatError,
    VideoTooLargeError,
    VideoTooLongError,
)
from worker.inference.media import video_container

__all__ = [
    "CONTAINERS",
    "OpenedVideo",
    "SampledFrame",
    "VideoInfo",
    "VideoPolicy",
    "open_video",
    "sample_frames",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024

# Sniffed container -> (FFmpeg demuxer forced at open, codecs allowed in it). FFmpeg's decoder names.
CONTAINERS: dict[str, tuple[str, frozenset[str]]] = {
    "mp4": ("mov", frozenset({"h264", "hevc"})),
    "matroska": ("matroska", frozenset({"vp8", "vp9", "av1", "libdav1d"})),
}


@dataclass(frozen=True)
class VideoPolicy:
    """What a video may be and how it is sampled. Defaults and why:

    200 MiB covers a few minutes of phone video at 1080p; 600 s is ten minutes (Sensity allows 30, but a
    worker judging 32 frames of a 30-minute file spends most of its time demuxing); 4096x2304 pixels per
    frame admits DCI 4K and UHD; 16 streams is more than any upload has (video, audio tracks, subtitles);
    32 frames as the DFDC winner; frames scaled to a longest side of 640 px, enough for the model's 224 px
    input and for face detection on a whole frame; 60 s of decoding per job; one decoder thread per job
    (a worker judges many jobs side by side); 240 frames per second bounds the packet index; 2 frames of a
    video in the model batcher at a time (see :mod:`worker.inference.regions`).
    """

    max_bytes: int = 200 * MiB
    max_seconds: float = 600.0
    max_frame_pixels: int = 4096 * 2304
    max_streams: int = 16
    frames: int = 32
    fps: float | None = None
    max_samples: int = 256
    frame_side: int = 640
    deadline_s: float = 60.0
    decode_threads: int = 1
    max_fps: float = 240.0
    in_flight: int = 2


@dataclass(frozen=True)
class VideoInfo:
    """What the headers and the packet index say about a video."""

    container: str
    codec: str
    width: int
    height: int
    duration_s: float
    frames: int
    keyframes: int
    streams: int
    size_bytes: int


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its presentation time in seconds from the start, the RGB image (scaled down to
    ``frame_side``) and ``size``, the frame's width and height as decoded, before that scaling (None:
    the image's own size)."""

    t: float
    image: Image.Image
    size: tuple[int, int] | None = None


@dataclass
class _Index:
    pts: list[int]  # presentation timestamps, ascending (stream time base)
    key: list[bool]  # keyframe flag per entry of pts
    time_base: Fraction
    start: int
    end: int  # pts just after the last frame


@dataclass
class _Run:
    seek_pts: int
    wanted: list[int] = field(default_factory=list)


@dataclass
class OpenedVideo:
    """A video whose caps passed and whose packets are indexed (:func:`open_video`): ``info`` now, the
    sampled frames when iterated (``frames``: a generator, one frame at a time)."""

    info: VideoInfo
    frames: Iterator[SampledFrame]


@contextmanager
def open_video(
    data: bytes, policy: VideoPolicy, *, check: Callable[[str], None] | None = None
) -> Iterator[OpenedVideo]:
    """Open ``data``, check every cap the headers and the packet index can answer, and give its info and
    a generator of its sampled frames: one demux pass for both. The container stays open inside the ``with`` block only.

    Raises (the frames also part-way through) UnsupportedFormatError, TooLargeError, CorruptVideoError,
    VideoTooLongError or VideoTooLargeError.

    ``check(what)`` is called between packets and raises to stop (a job's budget: its working seconds);
    by default a wall deadline of ``policy.deadline_s`` from now (``VIDEO_TOO_LARGE``).
    """
    deadline = check or _deadline(policy)
    with _open(data, policy) as container:
        stream = container.streams.video[0]
        index = _index(container, stream, policy, deadline)
        yield OpenedVideo(
            _info(container, stream, index, len(data)), _frames(container, stream, index, policy, deadline)
        )


def _deadline(policy: VideoPolicy) -> Callable[[str], None]:
    deadline = time.monotonic() + policy.deadline_s

    def check(what: str) -> None:
        if time.monotonic() > deadline:
            raise VideoTooLargeError(f"{what} took longer than {policy.deadline_s:g} s")

    return check


def sample_frames(data: bytes, policy: VideoPolicy) -> Iterator[SampledFrame]:
    """Yield the sampled frames of ``data`` in time order, one at a time.

    Raises (also part-way through) UnsupportedFormatError, TooLargeError, CorruptVideoError,
    VideoTooLongError or VideoTooLargeError.
    """
    with open_video(data, policy) as video:
        yield from video.frames


def _frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _Index,
    policy: VideoPolicy,
    deadline: Callable[[str], None],
) -> Iterator[SampledFrame]:
    wanted = _targets(index, policy)
    runs = plan_runs(index.pts, index.key, wanted, tolerance=_tolerance(index, len(wanted)))
    logger.debug(
        "sampling %d frames of %d in %d runs (%d frames to decode)",
        len(wanted),
        len(index.pts),
        len(runs),
        decode_cost(index.pts, runs),
    )
    yield from _decode_runs(container, stream, index, runs, policy, deadline)


# --- opening and checking ------------------------------------------------------------------------


def _open(data: bytes, policy: VideoPolicy) -> av.container.InputContainer:
    kind = video_container(data)
    if kind is None:
        raise UnsupportedFormatError(
            f"not a video in an allowed container (MP4/MOV, WebM/MKV); starts with {data[:8]!r}"
        )
    if len(data) > policy.max_bytes:
        raise TooLargeError(f"video has {len(data)} bytes, more than the {policy.max_bytes}-byte video limit")
    if kind == "mp4":
        _check_boxes(data)
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
        raise VideoTooLargeError("video too large: out of memory while reading its headers") from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise CorruptVideoError(f"{kind} data cannot be parsed: {_reason(exc)}") from exc
    try:
        _check_headers(container, kind, codecs, policy)
    except BaseException:
        container.close()
        raise
    return container


def _check_boxes(data: bytes) -> None:
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


def _check_headers(
    container: av.container.InputContainer, kind: str, codecs: frozenset[str], policy: VideoPolicy
) -> None:
    streams = container.streams
    if len(streams) > policy.max_streams:
        raise VideoTooLargeError(f"video has {len(streams)} streams, over the cap of {policy.max_streams}")
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
    declared = _declared_seconds(container, stream)
    if declared is not None and declared > policy.max_seconds:
        raise VideoTooLongError(f"video declares {declared:.1f} s, over the cap of {policy.max_seconds:g} s")
    ctx.thread_count = policy.decode_threads
    ctx.options = {"max_pixels": str(policy.max_frame_pixels)}


def _declared_seconds(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _index(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    policy: VideoPolicy,
    deadline: Callable[[str], None],
) -> _Index:
    """Demux every packet of the video stream (no decoding): timestamps and keyframe flags."""
    tb = stream.time_base or Fraction(1, 90_000)
    max_frames = int(policy.max_seconds * policy.max_fps) + 1
    max_span = policy.max_seconds / tb
    entries: dict[int, bool] = {}
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
            entries[pts] = entries.get(pts, False) or bool(packet.is_keyframe)
            if packet.duration:
                durations.append(packet.duration)
            lo = pts if lo is None else min(lo, pts)
            hi = pts if hi is None else max(hi, pts)
            if hi - lo > max_span:
                raise VideoTooLongError(
                    f"video timestamps run past {policy.max_seconds:g} s (the header said otherwise)"
                )
            if len(entries) > max_frames:
                raise VideoTooLongError(f"video has more than {max_frames} frames")
            if len(entries) % 256 == 0:
                deadline("reading the video's index")
    except DfscanError:
        raise
    except MemoryError as exc:
        raise VideoTooLargeError("video too large: out of memory while indexing its packets") from exc
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        if not entries:
            raise CorruptVideoError(f"video packets cannot be read: {_reason(exc)}") from exc
        logger.info("video index stops early at a broken packet: %s", _reason(exc))
    if not entries or lo is None or hi is None:
        raise CorruptVideoError("video stream has no packets")
    ordered = sorted(entries)
    step = (
        sorted(durations)[len(durations) // 2]
        if durations
        else (ordered[-1] - ordered[-2] if len(ordered) > 1 else 1)
    )
    return _Index(
        pts=ordered, key=[entries[p] for p in ordered], time_base=tb, start=lo, end=hi + max(step, 1)
    )


def _info(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: _Index, size: int
) -> VideoInfo:
    ctx = stream.codec_context
    return VideoInfo(
        container=container.format.name,
        codec=ctx.codec.name,
        width=ctx.width,
        height=ctx.height,
        duration_s=float((index.end - index.start) * index.time_base),
        frames=len(index.pts),
        keyframes=sum(index.key),
        streams=len(container.streams),
        size_bytes=size,
    )


# --- the sampling plan --------------------------------------------------------------------------


def _targets(index: _Index, policy: VideoPolicy) -> list[int]:
    """Indices (into index.pts) of the frames nearest to evenly spread target times, deduplicated."""
    duration = float((index.end - index.start) * index.time_base)
    count = max(1, math.ceil(duration * policy.fps)) if policy.fps is not None else policy.frames
    count = max(1, min(count, policy.max_samples, len(index.pts)))
    span = index.end - index.start
    picks: list[int] = []
    for i in range(count):
        target = index.start + (i + 0.5) * span / count
        j = bisect.bisect_left(index.pts, target)
        if j > 0 and (j == len(index.pts) or target - index.pts[j - 1] <= index.pts[j] - target):
            j -= 1
        if not picks or picks[-1] != j:
            picks.append(j)
    return picks


def _tolerance(index: _Index, count: int) -> float:
    """How far (in pts units) a keyframe may be from a target and still stand in for it."""
    return (index.end - index.start) / max(count, 1) / 4


def plan_runs(pts: list[int], key: list[bool], wanted: list[int], *, tolerance: float) -> list[_Run]:
    """Group the wanted frame indices into decode runs, each starting with a seek to a keyframe.

    A keyframe within ``tolerance`` of a wanted frame replaces it. A wanted frame whose keyframe lies at or
    before the last frame the current run decodes joins that run (decoding forward is cheaper than a seek
    back to the same keyframe); otherwise a new run seeks to its keyframe.
    """
    keys = [i for i, k in enumerate(key) if k]
    runs: list[_Run] = []
    last_end = -1  # index of the last frame the current run decodes
    chosen: list[int] = []
    for j in wanted:
        k = keys[bisect.bisect_right(keys, j) - 1] if keys and keys[0] <= j else 0
        nearest = _nearest_key(keys, j, pts)
        if nearest is not None and abs(pts[nearest] - pts[j]) <= tolerance:
            j = nearest
            k = nearest
        if chosen and j <= chosen[-1]:
            continue  # two targets fell on the same frame
        chosen.append(j)
        if runs and k <= last_end:
            runs[-1].wanted.append(pts[j])
        else:
            runs.append(_Run(seek_pts=pts[k], wanted=[pts[j]]))
        last_end = max(last_end, j)
    return runs


def _nearest_key(keys: list[int], j: int, pts: list[int]) -> int | None:
    if not keys:
        return None
    at = bisect.bisect_left(keys, j)
    best = [keys[i] for i in (at - 1, at) if 0 <= i < len(keys)]
    return min(best, key=lambda k: abs(pts[k] - pts[j]))


def decode_cost(pts: list[int], runs: list[_Run]) -> int:
    """Frames the plan decodes: from each run's keyframe to its last wanted frame (presentation order)."""
    position = {p: i for i, p in enumerate(pts)}
    return sum(position[max(r.wanted)] - position[r.seek_pts] + 1 for r in runs)


# --- decoding -------------------------------------------------------------------------------------


def scaled_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) with the longest side at most ``side``, aspect kept, at least 1 pixel."""
    if max(width, height) <= side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode_runs(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: _Index,
    runs: list[_Run],
    policy: VideoPolicy,
    deadline: Callable[[str], None],
) -> Iterator[SampledFrame]:
    reformatter = VideoReformatter()
    wanted_total = sum(len(r.wanted) for r in runs)
    yielded = failures = 0
    for run in runs:
        remaining = set(run.wanted)
        last = max(run.wanted)
        try:
            container.seek(run.seek_pts, stream=stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError) as exc:
            failures += 1
            logger.info("video seek to %s failed: %s", run.seek_pts, _reason(exc))
            continue
        done = False
        packets = container.demux(stream)
        while not done:
            deadline("decoding the video")
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:
                failures += 1
                logger.info("video demux stops at a broken packet: %s", _reason(exc))
                break
            try:
                frames = packet.decode()
            except MemoryError as exc:
                raise VideoTooLargeError("video too large: out of memory while decoding") from exc
            except (av.error.FFmpegError, ValueError) as exc:
                failures += 1
                if failures > 4 * wanted_total + 16:
                    raise CorruptVideoError(f"too many video packets fail to decode: {_reason(exc)}") from exc
                continue
            for frame in frames:
                if frame.pts is None:
                    continue
                if frame.width * frame.height > policy.max_frame_pixels:
                    raise VideoTooLargeError(
                        f"a video frame is {frame.width}x{frame.height}, over the cap of {policy.max_frame_pixels} pixels"
                    )
                if frame.pts in remaining:
                    remaining.discard(frame.pts)
                    width, height = scaled_size(frame.width, frame.height, policy.frame_side)
                    rgb = reformatter.reformat(frame, width, height, "rgb24", interpolation="AREA")
                    yielded += 1
                    yield SampledFrame(
                        t=float((frame.pts - index.start) * index.time_base),
                        image=rgb.to_image(),
                        size=(frame.width, frame.height),
                    )
                if not remaining or frame.pts >= last:
                    done = True
                    break
    if yielded == 0 or yielded * 2 < wanted_total:
        raise CorruptVideoError(
            f"only {yielded} of {wanted_total} sampled video frames could be decoded ({failures} broken packets)"
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).split("; last error log:")[0]
    return f"{type(exc).__name__}: {text}"[:300]
