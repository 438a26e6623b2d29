"""Untrusted bytes to a few sampled RGB frames of a video, safely: sniffed kind, allow-list, caps, deadline.

Pure: PyAV (FFmpeg), NumPy and Pillow only. The rules, in the order they are applied:

1.-4. **Opening and indexing**, before any frame is decoded (:mod:`worker.inference.video.container`): the
   kind sniffed from the bytes and the demuxer forced to it, an allow-list of containers and codecs, caps
   from the headers (bytes, streams, declared duration, frame size; FFmpeg's ``max_pixels`` as a backstop),
   and a demux pass that indexes the packets (frame cap and deadline counted in packets, timestamps that
   contradict the header refused, repeated timestamps told apart by order).
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

import itertools
import logging
import math
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import av
import av.error
from av.video.reformatter import VideoReformatter
from PIL import Image

from dfscan.exceptions import CorruptVideoError, VideoTooLargeError
from worker.inference.video.container import CONTAINERS, MiB, index_packets, open_container, reason
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
    with open_container(data, policy) as container:
        stream = container.streams.video[0]
        index = index_packets(container, stream, policy, deadline)
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
            logger.info("video seek to %s failed (%s): decoding from the start", run.seek_pts, reason(exc))
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
        with open_container(data, policy) as again:
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
                logger.info("video demux stops at a broken packet: %s", reason(exc))
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
                    raise CorruptVideoError(f"too many video packets fail to decode: {reason(exc)}") from exc
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
