"""One budget per job: what judging one source may cost, drawn from by every stage of the road.

A :class:`Budget` is made where a job enters the road (:meth:`~worker.inference.judge.Judge.judge`, or
:meth:`~worker.inference.judge.Judge.judge_bytes` for bytes already read) and handed to every stage:
fetch, decode, the packet index and the video decode, face detection, crops, the model. Each stage
draws from the same four allowances (:class:`Limits`):

- **working seconds**: wall time spent working on this job (reading, decoding, indexing packets,
  cropping, preprocessing); time spent *waiting* (for a model or face-detector batch, for room in the
  process's decode memory) is not counted: :meth:`Budget.waiting` stops the clock;
- **decoded pixel bytes held** at once (a full-size image kept while its faces are found and cropped,
  a sampled frame); every hold is also reserved from the process's decode memory budget
  (``DFSCAN_DECODE_MEMORY``) until it is released, so faces and animations cannot escape it;
- **model inputs** (regions: the whole frame or a face crop) and **detector inputs** (frames searched
  for faces).

Running out of any of them raises :class:`~dfscan.exceptions.BudgetExceededError`: one code,
``BUDGET_EXCEEDED``, whose message and ``stage``/``limit`` name where it ran out and which limit. It is
permanent (the input itself is too costly), except when the seconds ran out while the job's thread got
less than half a CPU for them (the worker was busy, not the input heavy): then it is retried.

A bulk job's budget checks are also where it gives way to interactive jobs in flight
(:mod:`worker.inference.lanes`); that wait is not counted either.

Pure: standard library plus the image policy's memory reservation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dfscan.exceptions import BudgetExceededError
from worker.inference import lanes
from worker.inference.images.decode import ImagePolicy, hold_decoded
from worker.inference.sources.read import SourcePolicy
from worker.inference.video.decode import VideoPolicy

MiB = 1024 * 1024
# Below this share of a CPU while its seconds ran, a job's thread was starved: the budget error is retried.
STARVED = 0.5


@dataclass(frozen=True)
class Limits:
    """A job's allowance. The defaults are what :meth:`for_policies` gives for default policies."""

    seconds: float = 90.0
    pixel_bytes: int = 512 * MiB
    model_inputs: int = 2304
    detector_inputs: int = 256

    @classmethod
    def for_policies(
        cls,
        sources: SourcePolicy,
        images: ImagePolicy,
        videos: VideoPolicy,
        max_faces: int = 0,
        *,
        second: bool = False,
    ) -> Limits:
        """Limits that admit whatever the policies admit, as one allowance: the fetch deadline plus the
        video deadline of work; the decode memory budget of pixels; one detector input per sampled frame
        and up to ``max_faces`` model inputs per frame (plus the whole frame, plus one for the second
        model when there is one)."""
        frames = max(videos.frames, videos.max_samples)
        return cls(
            seconds=sources.deadline + videos.deadline_s,
            pixel_bytes=images.decode_memory,
            model_inputs=frames * (max(0, max_faces) + 1 + int(second)),
            detector_inputs=frames,
        )


class Budget:
    """One job's budget (see the module docstring). Used from the job's own thread."""

    def __init__(
        self,
        limits: Limits,
        *,
        memory: ImagePolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self.limits = limits
        self._memory = memory
        self._clock = clock
        self._cpu = cpu
        self._start = clock()
        self._cpu_start = cpu()
        self._waited = 0.0
        self._wait_started: float | None = None
        self.stage = "fetch"
        self.model_inputs = 0
        self.detector_inputs = 0
        self.held = 0
        self.peak_held = 0

    def worked(self) -> float:
        """Seconds spent working on this job so far (waits excluded)."""
        now = self._clock()
        waiting = 0.0 if self._wait_started is None else now - self._wait_started
        return now - self._start - self._waited - waiting

    @property
    def is_waiting(self) -> bool:
        return self._wait_started is not None

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Stop the clock while the job waits for someone else (a batcher, memory): waiting never counts."""
        if self._wait_started is not None:  # nested: the outer wait already stopped the clock
            yield
            return
        self._wait_started = self._clock()
        try:
            yield
        finally:
            self._waited += self._clock() - self._wait_started
            self._wait_started = None

    def enter(self, stage: str) -> None:
        """Begin ``stage`` (what a budget error names), after checking the time the last one used."""
        self.check()
        self.stage = stage

    def check(self, stage: str | None = None) -> None:
        """Raise BUDGET_EXCEEDED when the working seconds are spent. Every stage calls it, so it is where
        a bulk job gives way to interactive jobs in flight (:func:`lanes.yield_to_interactive`, waiting, not
        counted), when it holds no decoded pixels (an interactive decode may need their room)."""
        if not self.held and self._wait_started is None and lanes.interactive_in_flight():
            with self.waiting():
                lanes.yield_to_interactive()
        worked = self.worked()
        if worked <= self.limits.seconds:
            return
        stage = stage or self.stage
        cpu = self._cpu() - self._cpu_start
        starved = cpu < STARVED * worked
        raise BudgetExceededError(
            f"the job's budget ran out in {stage}: {worked:.1f} s of work, over its limit of "
            f"{self.limits.seconds:g} s"
            + (f" (the worker was busy: {cpu:.1f} s of CPU; retried)" if starved else ""),
            stage=stage,
            limit=f"seconds={self.limits.seconds:g}",
            permanent=not starved,
        )

    def take_model_inputs(self, count: int, stage: str = "model") -> None:
        self.model_inputs += count
        self._count("model_inputs", "model inputs", self.model_inputs, stage)

    def take_detector_inputs(self, count: int, stage: str = "face detection") -> None:
        self.detector_inputs += count
        self._count("detector_inputs", "face-detector inputs", self.detector_inputs, stage)

    def _count(self, name: str, what: str, used: int, stage: str) -> None:
        """Fail when ``used`` inputs are over the limit called ``name``; then check the seconds."""
        limit = getattr(self.limits, name)
        if used > limit:
            raise BudgetExceededError(
                f"the job's budget ran out in {stage}: {used} {what}, over its limit of {limit}",
                stage=stage,
                limit=f"{name}={limit}",
            )
        self.check(stage)

    @contextlib.contextmanager
    def hold(self, nbytes: int, stage: str, *, wait: bool = True) -> Iterator[None]:
        """Hold ``nbytes`` of decoded pixels for the block: counted against this job's pixel bytes and
        reserved from the process's decode memory budget (waiting for room does not count as work;
        ``wait=False``: counted at once, from inside the decode that made them, see
        :func:`~worker.inference.images.decode.hold_decoded`)."""
        if self.held + nbytes > self.limits.pixel_bytes:
            raise BudgetExceededError(
                f"the job's budget ran out in {stage}: holding {(self.held + nbytes) // MiB} MiB of "
                f"decoded pixels, over its limit of {self.limits.pixel_bytes // MiB} MiB",
                stage=stage,
                limit=f"pixel_bytes={self.limits.pixel_bytes}",
            )
        with contextlib.ExitStack() as stack:
            if self._memory is not None:
                with self.waiting():
                    stack.enter_context(hold_decoded(self._memory, nbytes, wait=wait))
            self.held += nbytes
            self.peak_held = max(self.peak_held, self.held)
            try:
                yield
            finally:
                self.held -= nbytes


def rgb_bytes(size: tuple[int, int]) -> int:
    """Bytes Pillow holds for an RGB image of ``size``: 4 a pixel and a pointer a row."""
    return size[0] * size[1] * 4 + size[1] * 8
