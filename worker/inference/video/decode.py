"""Untrusted bytes to a few sampled RGB frames of a video, safely: sniffed kind, allow-list, caps, deadline.

Pure: PyAV (FFmpeg), NumPy and Pillow only. The rules, in the order they are applied:

1. **Kind from the bytes** (:func:`~worker.inference.sources.media.video_container`): an ISO-BMFF ``ftyp`` box whose brand is not an image brand
   (AVIF/HEIF are images) is MP4/MOV; the EBML magic ``1A 45 DF A3`` is Matroska/WebM. The name of a file
   or URL is never consulted. The demuxer is then *forced* to the sniffed one (FFmpeg probes nothing else).
2. **Allow-list**: MP4/MOV with H.264 or H.265, Matroska/WebM with VP8, VP9 or AV1 (decoded by dav1d).
   Anything else (MPEG-4 part 2, FFV1, AVI, audio-only files) is ``UNSUPPORTED_FORMAT``.
3. **Caps from the headers, before any frame is decoded**: bytes (``TOO_LARGE``), streams
   (``TOO_LARGE``), declared duration (``VIDEO_TOO_LONG``), width x height of the video stream
   (``TOO_LARGE``). FFmpeg's own ``max_pixels`` option is set to the same cap on every decoder, so a
   stream whose parameter sets change size mid-stream is refused by the decoder too (a hard backstop).
4. **A demux pass (no decoding) indexes the packets**: presentation timestamps and keyframe flags. It
   catches timestamps that contradict the header (a moov atom that lies: ``VIDEO_TOO_LONG``), caps the
   number of frames (``max_seconds * max_fps``, counted in packets: ``VIDEO_TOO_LONG``) and checks the
   deadline every 256 packets, so a file that repeats one cluster (millions of packets over a few
   timestamps) stops as early as any other. The declared duration is end minus start (a clip that starts
   2^40 ms in is as long as its frames say). Timestamps that cannot tell frames apart (fewer distinct ones
   than half the packets: zeroed frame durations) switch to frames by order, timed evenly over the
   declared duration and decoded in one pass from the start.
5. **Sampling plan** (:mod:`worker.inference.video.plan`), and its cost, known before decoding: a plan
   that would decode more pixels than the decode budget (``deadline_s`` x ``decode_pixels_per_s`` per
   decoder thread) is ``TOO_LARGE`` at once, where it would otherwise run out the deadline (a 4K
   keyframe and 143,000 repeated "nothing changed" packets: 1.2 Tpx).
6. **Decoding, bounded**: one frame at a time (a generator: never all frames in memory), scaled straight
   from YUV to RGB at reduced size by one reused swscale context (longest side ``frame_side``), on
   ``decode_threads`` threads. A deadline (``deadline_s``) is checked between packets: ``TOO_LARGE``.
   Packets that fail to decode are skipped; if fewer than half the sampled frames decode, or none does,
   the video is ``CORRUPT_VIDEO``. A seek that fails or finds none of its frames (a start before zero)
   hands the rest of the plan to one pass from the start. Each frame is turned upright by its display
   matrix (a phone's portrait clip) and reported in the header's size as displayed (``SampledFrame.size``,
   also for frames after a mid-stream size change), so face boxes land in the size the verdict reports.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

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
from worker.inference.sources.media import video_container
from worker.inference.video.plan import Index, Run, decode_cost, plan_runs, targets, tolerance

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
    video in the model batcher at a time (see :mod:`worker.inference.video.scoring`).
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
    decode_pixels_per_s: float = 1e9

    @property
    def decode_pixel_budget(self) -> float:
        """Pixels the sampling plan may decode: what ``decode_threads`` decoders get through in
        ``deadline_s`` at ``decode_pixels_per_s`` each. A plan over it could not finish in time even on
        the cheapest frames there are (a 4K "nothing changed" frame decodes at about 1.2 Gpx per CPU
        second here), so it fails at once instead of after the whole deadline."""
        return self.deadline_s * self.decode_pixels_per_s * max(1, self.decode_threads)


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
class OpenedVideo:
    """A video whose caps passed and whose packets are indexed (:func:`open_video`): ``info`` now, the
    sampled frames when iterated (``frames``: a generator, one frame at a time)."""

    info: VideoInfo
    frames: Iterator[SampledFrame]


@contextmanager
def open_video(
    data: bytes, policy: VideoPolicy, *, check: Callable[[str], None] | None = None
) -> Iterator[OpenedVideo]:
    """Open ``data``, check every cap the headers, the packet index and the sampling plan can answer,
    decode the first sampled frame (its display matrix tells which way is up, so ``info`` gives the size
    as displayed), and give the info and a generator of the sampled frames: one demux pass for both. The
    container stays open inside the ``with`` block only.

    Raises (the frames also part-way through) UnsupportedFormatError, TooLargeError, CorruptVideoError,
    VideoTooLongError or VideoTooLargeError.

    ``check(what)`` is called between packets and raises to stop (the Judge passes a job's budget: its
    working seconds, so waiting for the model does not count); by default a wall deadline of
    ``policy.deadline_s`` from now (``TOO_LARGE``, limit ``video_time``).
    """
    deadline = check or _deadline(policy)
    with _open(data, policy) as container:
        stream = container.streams.video[0]
        index = _index(container, stream, policy, deadline)
        runs = _plan(index, stream, policy)
        frames = _decode_runs(data, container, stream, index, runs, policy, deadline)
        first = next(frames)  # _decode_runs yields at least one frame or raises
        info = _info(container, stream, index, len(data), first.size)
        yield OpenedVideo(info, itertools.chain([first], frames))


def _deadline(policy: VideoPolicy) -> Callable[[str], None]:
    """A wall deadline of ``policy.deadline_s`` from now, for callers without a job budget."""
    deadline = time.monotonic() + policy.deadline_s

    def check(what: str) -> None:
        if time.monotonic() > deadline:
            raise VideoTooLargeError(f"{what} took longer than {policy.deadline_s:g} s", limit="video_time")

    return check


def sample_frames(data: bytes, policy: VideoPolicy) -> Iterator[SampledFrame]:
    """Yield the sampled frames of ``data`` in time order, one at a time.

    Raises (also part-way through) UnsupportedFormatError, TooLargeError, CorruptVideoError,
    VideoTooLongError or VideoTooLargeError.
    """
    with open_video(data, policy) as video:
        yield from video.frames


def _plan(index: Index, stream: av.video.stream.VideoStream, policy: VideoPolicy) -> list[Run]:
    """The runs to decode, checked against the decode budget before any frame is decoded."""
    wanted = targets(index, policy.frames, policy.fps, policy.max_samples)
    if index.sequential:  # no timestamp to seek by: one pass from the start
        runs = [Run(seek_pts=index.pts[0], wanted=[index.pts[j] for j in wanted])]
    else:
        runs = plan_runs(index.pts, index.key, wanted, tolerance=tolerance(index, len(wanted)))
    cost = decode_cost(index.pts, runs)
    ctx = stream.codec_context
    pixels = cost * ctx.width * ctx.height
    budget = policy.decode_pixel_budget
    logger.debug(
        "sampling %d frames of %d in %d runs (%d frames to decode, %d pixels of a budget of %d)",
        len(wanted),
        len(index.pts),
        len(runs),
        cost,
        pixels,
        budget,
    )
    if pixels > budget:
        raise VideoTooLargeError(
            f"sampling this video means decoding {cost} frames of {ctx.width}x{ctx.height} "
            f"({pixels / 1e9:.1f} Gpx), over the decode budget of {budget / 1e9:.0f} Gpx "
            f"({policy.deadline_s:g} s at {policy.decode_pixels_per_s / 1e9:g} Gpx/s): too few keyframes for its size",
            limit="video_time",
        )
    return runs


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
        raise VideoTooLargeError(
            "out of memory while reading the video's headers", limit="video_memory"
        ) from exc
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
    declared = _declared_seconds(container, stream)
    if declared is not None and declared > policy.max_seconds:
        raise VideoTooLongError(f"video declares {declared:.1f} s, over the cap of {policy.max_seconds:g} s")
    ctx.thread_count = policy.decode_threads
    ctx.options = {"max_pixels": str(policy.max_frame_pixels)}


def _declared_seconds(
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


def _index(
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
            raise CorruptVideoError(f"video packets cannot be read: {_reason(exc)}") from exc
        logger.info("video index stops early at a broken packet: %s", _reason(exc))
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
    declared = _declared_seconds(container, stream)
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


def _info(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: Index,
    size: int,
    shown: tuple[int, int] | None,
) -> VideoInfo:
    ctx = stream.codec_context
    width, height = shown or (ctx.width, ctx.height)
    return VideoInfo(
        container=container.format.name,
        codec=ctx.codec.name,
        width=width,
        height=height,
        duration_s=float((index.end - index.start) * index.time_base),
        frames=len(index.pts),
        keyframes=sum(index.key),
        streams=len(container.streams),
        size_bytes=size,
    )


# --- decoding -------------------------------------------------------------------------------------


def scaled_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) with the longest side at most ``side``, aspect kept, at least 1 pixel."""
    if max(width, height) <= side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def upright(frame: av.VideoFrame) -> list[Image.Transpose]:
    """The transposes that show ``frame`` as its display matrix says (phones store portrait clips
    sideways and say so there): FFmpeg's own autorotate rule (``fftools``), right angles and flips only."""
    side: Mapping[str, Any] = frame.side_data  # type: ignore[assignment]  # typed as motion vectors only
    if "DISPLAYMATRIX" not in side:
        return []
    m = struct.unpack("=9i", bytes(side["DISPLAYMATRIX"]))
    theta = -float(frame.rotation)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return [Image.Transpose.TRANSPOSE if m[3] > 0 else Image.Transpose.ROTATE_270]
    if abs(theta - 270) < 1:
        return [Image.Transpose.TRANSVERSE if m[3] < 0 else Image.Transpose.ROTATE_90]
    flips = []
    if abs(theta - 180) < 1 and m[0] < 0:
        flips.append(Image.Transpose.FLIP_LEFT_RIGHT)
    if (abs(theta - 180) < 1 or abs(theta) < 1) and m[4] < 0:
        flips.append(Image.Transpose.FLIP_TOP_BOTTOM)
    return flips  # other angles are not turned (FFmpeg rotates them by any angle; phones never write one)


_SWAPS = frozenset(
    {
        Image.Transpose.TRANSPOSE,
        Image.Transpose.TRANSVERSE,
        Image.Transpose.ROTATE_90,
        Image.Transpose.ROTATE_270,
    }
)


def _decode_runs(
    data: bytes,
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: Index,
    runs: list[Run],
    policy: VideoPolicy,
    deadline: Callable[[str], None],
) -> Iterator[SampledFrame]:
    """The sampled frames, run by run. A run whose seek fails or lands past its frames (a start before
    zero, cues that lie) hands it and every later run to one pass from the start of a fresh demuxer."""
    header = (stream.codec_context.width, stream.codec_context.height)
    state = _Decoding(index, policy, deadline, sum(len(r.wanted) for r in runs), header)
    rest = runs if index.sequential else []  # sequential: no timestamp to seek by, one pass from the start
    for k, run in enumerate([] if index.sequential else runs):
        try:
            container.seek(run.seek_pts, stream=stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError) as exc:
            logger.info("video seek to %s failed (%s): decoding from the start", run.seek_pts, _reason(exc))
        else:
            before = (state.yielded, state.failures)
            yield from state.decode(container.demux(stream), set(run.wanted), max(run.wanted))
            if (state.yielded, state.failures) != before:
                continue
            logger.info("video seek to %s found none of its frames: decoding from the start", run.seek_pts)
        rest = runs[k:]
        break
    if rest:
        wanted = {p for r in rest for p in r.wanted}
        with _open(data, policy) as again:
            yield from state.decode(again.demux(again.streams.video[0]), wanted, max(wanted))
    state.finish()


class _Decoding:
    """Decoding state shared by the runs of one video: one reused swscale context, the frames yielded,
    the broken packets, the deadline and the size every frame is reported in (the header's, turned
    upright: a frame of another size after a mid-stream change is mapped into it)."""

    def __init__(
        self,
        index: Index,
        policy: VideoPolicy,
        deadline: Callable[[str], None],
        wanted: int,
        header: tuple[int, int],
    ) -> None:
        self.index = index
        self.policy = policy
        self.deadline = deadline
        self.wanted = wanted
        self.reformatter = VideoReformatter()
        self.yielded = self.failures = 0
        self.header = header
        self.shown: tuple[int, int] | None = None

    def decode(self, packets: Iterator[av.Packet], remaining: set[int], last: int) -> Iterator[SampledFrame]:
        ordinal = -1
        policy = self.policy
        while remaining:
            self.deadline("decoding the video")
            try:
                packet = next(packets)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:
                self.failures += 1
                logger.info("video demux stops at a broken packet: %s", _reason(exc))
                break
            try:
                frames = packet.decode()
            except MemoryError as exc:
                raise VideoTooLargeError(
                    "out of memory while decoding the video", limit="video_memory"
                ) from exc
            except (av.error.FFmpegError, ValueError) as exc:
                self.failures += 1
                if self.failures > 4 * self.wanted + 16:
                    raise CorruptVideoError(f"too many video packets fail to decode: {_reason(exc)}") from exc
                continue
            for frame in frames:
                ordinal += 1
                key = ordinal if self.index.sequential else frame.pts
                if key is None:
                    continue
                if frame.width * frame.height > policy.max_frame_pixels:
                    raise VideoTooLargeError(
                        f"a video frame is {frame.width}x{frame.height}, over the cap of {policy.max_frame_pixels} pixels"
                    )
                if key in remaining:
                    remaining.discard(key)
                    yield self._sampled(frame, key)
                if not remaining or key >= last:
                    return

    def _sampled(self, frame: av.VideoFrame, key: int) -> SampledFrame:
        turns = upright(frame)
        if self.shown is None:
            width, height = self.header
            self.shown = (height, width) if any(t in _SWAPS for t in turns) else (width, height)
        width, height = scaled_size(frame.width, frame.height, self.policy.frame_side)
        image = self.reformatter.reformat(frame, width, height, "rgb24", interpolation="AREA").to_image()
        for turn in turns:
            image = image.transpose(turn)
        self.yielded += 1
        return SampledFrame(
            t=float((key - self.index.start) * self.index.time_base), image=image, size=self.shown
        )

    def finish(self) -> None:
        if self.yielded == 0 or self.yielded * 2 < self.wanted:
            raise CorruptVideoError(
                f"only {self.yielded} of {self.wanted} sampled video frames could be decoded "
                f"({self.failures} broken packets)"
            )


def _reason(exc: BaseException) -> str:
    text = str(exc).split("; last error log:")[0]
    return f"{type(exc).__name__}: {text}"[:300]
