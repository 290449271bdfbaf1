"""Live separation: a latency dial, its measurement, pipes and a real-time engine.

Everything here drives the one streaming pipeline, :meth:`Separator.stream`:
blocks go in as they arrive and stems come out as soon as the chunk engine
calls them final. What is added is time:

* :func:`plan_for_latency` turns ``--latency SECONDS`` into a chunk plan (the
  ``segment`` kept from each chunk and the ``context`` of real audio it sees on
  each side). An ``overlap-add`` chunk ``[s, s + segment)`` runs once the
  input reaches ``s + segment + context``, so a plan delays the stems by at
  most ``segment + context`` (plus the resamplers'); a quarter of the budget
  is kept for computing and for block granularity. A latency that covers the
  model's own plan keeps that plan, so the stems equal an offline run.
* :func:`algorithmic_latency` measures that delay exactly, for any recipe, by
  running the pipeline with every network replaced by zeros (no model cost).
* :func:`warm_up` times the real networks on a few seconds of quiet noise:
  the real-time factor and the longest single push (one chunk's compute).
* :func:`run_pipe` separates a stream (stdin) to sinks as it arrives and
  measures, per output block, input-sample-to-output-sample latency.
* :class:`LiveEngine` is the engine behind an audio device: input blocks from
  a real-time callback go through a **bounded** queue to a worker thread;
  stems come back to an output buffer read by the output callback a fixed
  ``delay`` behind the input. Policy (so that a burst never grows the delay):
  a full input queue drops the incoming block (an *overrun*; the stems
  continue from the next block, shifted back to their place in time); output
  not ready when the device wants it is played as silence (an *underrun*) and
  those samples are skipped when they come late. The delay stays ``delay``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sepcli.errors import UsageError
from sepcli.inference.config import SeparatorConfig
from sepcli.models.archive import ArchiveMetadata

__all__ = [
    "TooSlowError",
    "LatencyPlan",
    "plan_for_latency",
    "algorithmic_latency",
    "Warmup",
    "warm_up",
    "prepare",
    "PipeStats",
    "run_pipe",
    "LiveEngine",
    "LiveStats",
    "too_slow_message",
    "DEFAULT_BLOCK_SECONDS",
]

#: Share of ``--latency`` given to the chunk plan; the rest covers computing and blocks.
PLAN_SHARE = 0.75
#: Share of the plan that is look-ahead context (when the model's own is longer).
CONTEXT_SHARE = 0.25
#: Live blocks (device callbacks, pipe reads at most) in seconds.
DEFAULT_BLOCK_SECONDS = 1024 / 44100
#: A real-time factor above this (compute seconds per audio second) cannot be kept up.
MAX_RTF = 0.9


class TooSlowError(UsageError):
    """The model cannot separate as fast as the audio plays on this machine."""


def too_slow_message(name: str, rtf: float, stems: int) -> str:
    """The one line that says the model cannot keep up, and what to do instead."""
    faster = "" if name == "default" else "a faster model (-m default), "
    fewer = ", fewer --stems" if stems > 1 else ""
    return (
        f"{name} cannot keep up on this machine (real-time factor {rtf:.2f}, needs < "
        f"{MAX_RTF:g}): try {faster}more --latency{fewer}, or --device cuda"
    )


# -- the latency dial ----------------------------------------------------------
@dataclass(frozen=True)
class LatencyPlan:
    """A chunk plan chosen for a latency.

    Attributes:
        config: the separator config with the plan's segment/context set.
        offline: the model's own plan was kept (stems equal an offline run).
        segment_seconds: chunk kept per chunk (``None``: the recipe's own).
        context_seconds: look-ahead per side (``None``: the recipe's own).
        requested: the latency asked for (``None``: none).
    """

    config: SeparatorConfig
    offline: bool
    segment_seconds: float | None = None
    context_seconds: float | None = None
    requested: float | None = None


def _own_plan(meta: ArchiveMetadata, config: SeparatorConfig) -> tuple[float, float]:
    """``(segment, context)`` in seconds of the recipe as the archive and config set it."""
    rate = meta.sample_rate
    segment = meta.segment_seconds if config.segment_seconds is None else config.segment_seconds
    if meta.recipe != "overlap-add":
        return segment, 0.0
    if config.context_seconds is not None:
        return segment, config.context_seconds
    context = meta.context_seconds
    if meta.stft is not None:
        context = max(context, meta.stft.n_fft / rate)
    return segment, context


def plan_for_latency(
    meta: ArchiveMetadata, config: SeparatorConfig, latency_seconds: float | None
) -> LatencyPlan:
    """The chunk plan for a latency budget (``None``: the model's own plan).

    ``overlap-add`` models: ``segment + context <= 0.75 * latency``, with the
    model's own context when it fits in a quarter of that, else a quarter (at
    least one STFT window). ``demucs`` models: a shorter segment (the network
    zero-pads it to its own, as Demucs' ``--segment`` does). Other recipes keep
    their plan (its latency is measured and reported).

    Raises:
        UsageError: the latency is too short for the model's STFT window.
    """
    if latency_seconds is None:
        return LatencyPlan(config, True)
    if not (math.isfinite(latency_seconds) and latency_seconds > 0):
        raise UsageError(f"--latency must be a positive number of seconds, got {latency_seconds}")
    segment, context = _own_plan(meta, config)
    budget = PLAN_SHARE * latency_seconds
    if segment + context <= budget or meta.recipe not in ("overlap-add", "demucs"):
        return LatencyPlan(config, True, requested=latency_seconds)
    window = meta.stft.n_fft / meta.sample_rate if meta.stft is not None else 0.0
    if meta.recipe == "demucs":
        new_segment = budget
        if new_segment * meta.sample_rate < 1:
            raise UsageError(f"--latency {latency_seconds:g} s is too short")
        return LatencyPlan(
            config.replace(segment_seconds=new_segment), False, new_segment, 0.0, latency_seconds
        )
    new_context = min(context, max(window, CONTEXT_SHARE * budget))
    new_segment = budget - new_context
    if new_segment < max(window, 1.0 / meta.sample_rate):
        need = (max(window, 1.0 / meta.sample_rate) + new_context) / PLAN_SHARE
        raise UsageError(
            f"--latency {latency_seconds:g} s is too short for {meta.name} "
            f"(its STFT window needs at least {need:.2f} s)"
        )
    if config.segment_seconds is not None or config.context_seconds is not None:
        raise UsageError("--latency chooses the chunk plan; give it or --segment, not both")
    return LatencyPlan(
        config.replace(segment_seconds=new_segment, context_seconds=new_context),
        False,
        new_segment,
        new_context,
        latency_seconds,
    )


def _zero_unit(unit):  # noqa: ANN001, ANN202 - a separator unit, private to it
    def make_fn(generator: torch.Generator, n: int = unit.num_sources) -> Callable:
        def fn(batch: Tensor) -> Tensor:
            return torch.zeros(batch.shape[0], n, batch.shape[1], batch.shape[-1])

        return fn

    return dataclasses.replace(unit, make_fn=make_fn)


def algorithmic_latency(
    separator,  # noqa: ANN001 - Separator (imported lazily: it imports this module's users)
    stems: Sequence[str] | None,
    sample_rate: int,
    channels: int,
    block_frames: int,
    max_seconds: float = 300.0,
) -> int:
    """Largest delay, in input samples, from an input sample's arrival (the end of
    its block) to the moment the pipeline gives it out, before any compute time.

    Runs :meth:`Separator.stream` itself on quiet noise with every network
    replaced by zeros, so it holds for any recipe, resampler and combiner.
    """
    probe = copy.copy(separator)
    probe.units = [_zero_unit(u) for u in separator.units]
    original = separator._archive_unit  # a subset of networks: the same, zeroed
    probe._archive_unit = lambda subset=None: _zero_unit(original(subset))
    rng = np.random.default_rng(0)
    block = (1e-3 * rng.standard_normal((channels, block_frames))).astype(np.float32)
    state = {"pushed": 0}
    limit = int(max_seconds * sample_rate)

    def blocks() -> Iterator[np.ndarray]:
        while state["pushed"] < limit:
            state["pushed"] += block_frames
            yield block

    worst = 0
    emissions = 0
    out = 0
    for piece in probe.stream(blocks(), sample_rate, channels, stems):
        if state["pushed"] >= limit:
            break
        worst = max(worst, state["pushed"] - out)
        out += next(iter(piece.values())).shape[-1]
        emissions += 1
        if emissions >= 4 and state["pushed"] > 3 * worst:
            break
    if emissions == 0:
        raise UsageError(f"the model gives no output within {max_seconds:g} s of input")
    return worst


@dataclass(frozen=True)
class Warmup:
    """What a short run of the real networks measured.

    Attributes:
        rtf: compute seconds per second of audio.
        max_push_seconds: the longest single block (one chunk's compute).
        seconds: audio seconds run.
    """

    rtf: float
    max_push_seconds: float
    seconds: float


def warm_up(
    separator,  # noqa: ANN001 - Separator
    stems: Sequence[str] | None,
    sample_rate: int,
    channels: int,
    block_frames: int,
    seconds: float,
) -> Warmup:
    """Run the real networks on ``seconds`` of quiet noise in live blocks and time them.

    A first, untimed pass lets TorchScript's profiling executor compile the graphs
    for the chunk shape (its first two calls are several times slower).
    """
    _timed_run(separator, stems, sample_rate, channels, block_frames, seconds)
    return _timed_run(separator, stems, sample_rate, channels, block_frames, seconds)


def _timed_run(
    separator,  # noqa: ANN001 - Separator
    stems: Sequence[str] | None,
    sample_rate: int,
    channels: int,
    block_frames: int,
    seconds: float,
) -> Warmup:
    rng = np.random.default_rng(1)
    n = max(1, int(math.ceil(seconds * sample_rate / block_frames)))
    times: list[float] = []
    stamp = [time.perf_counter()]
    ended = [False]

    def blocks() -> Iterator[np.ndarray]:
        # noise at a music-like level: a very quiet input would time the slow path of
        # denormal floats, which real audio does not take
        for _ in range(n):
            stamp[0] = time.perf_counter()
            yield (0.1 * rng.standard_normal((channels, block_frames))).astype(np.float32)
        ended[0] = True

    started = time.perf_counter()
    for _ in separator.stream(blocks(), sample_rate, channels, stems):
        if not ended[0]:  # the zero-padded last chunks of finish() have no live counterpart
            times.append(time.perf_counter() - stamp[0])
    total = time.perf_counter() - started
    audio = n * block_frames / sample_rate
    return Warmup(total / audio, max(times, default=0.0), audio)


def prepare(
    separator,  # noqa: ANN001 - Separator
    stems: Sequence[str] | None,
    sample_rate: int,
    channels: int,
    block_frames: int,
    *,
    check: bool = True,
) -> tuple[float, int, Warmup]:
    """Latency to promise and what it rests on: ``(seconds, algorithmic frames, warm-up)``.

    The promise is the plan's delay (:func:`algorithmic_latency`) plus 1.5 times the
    longest push of the warm-up (one chunk's compute) plus 50 ms for scheduling.

    Raises:
        TooSlowError: the warm-up's real-time factor is above :data:`MAX_RTF`
            (unless ``check`` is false: benchmarks measure what happens then).
    """
    alg = algorithmic_latency(separator, stems, sample_rate, channels, block_frames)
    seconds = max(3.0, 1.2 * alg / sample_rate + 1.0)
    warm = warm_up(separator, stems, sample_rate, channels, block_frames, seconds)
    if check and warm.rtf > MAX_RTF:
        count = len(stems) if stems else len(separator.sources)
        raise TooSlowError(too_slow_message(separator.metadata.name, warm.rtf, count))
    return alg / sample_rate + 1.5 * warm.max_push_seconds + 0.05, alg, warm


# -- pipes ---------------------------------------------------------------------
@dataclass
class PipeStats:
    """What :func:`run_pipe` measured.

    Attributes:
        frames: input (= output) frames.
        latencies: per output block, seconds from the arrival of its first
            input sample to its write.
        compute_seconds: time spent separating (not waiting for input or writing).
        wall_seconds: the whole run.
    """

    frames: int = 0
    sample_rate: int = 0
    latencies: list[float] = field(default_factory=list)
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        audio = self.frames / self.sample_rate if self.sample_rate else 0.0
        return self.compute_seconds / audio if audio else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else 0.0


def run_pipe(
    separator,  # noqa: ANN001 - Separator
    blocks: Iterable[np.ndarray],
    sample_rate: int,
    channels: int,
    stems: Sequence[str] | None,
    write: Callable[[dict[str, np.ndarray]], None],
    *,
    out_channels: int | None = None,
    watch: Callable[[float], None] | None = None,
    watch_seconds: float = 10.0,
) -> PipeStats:
    """Separate ``blocks`` as they arrive and ``write`` each piece of stems at once.

    ``watch(rtf)`` is called with the real-time factor of every ``watch_seconds``
    of audio (the caller warns once when it is above 1). Returns the measurements.
    """
    stats = PipeStats(sample_rate=sample_rate)
    arrivals: deque[tuple[int, float]] = deque()  # (end frame, arrival time) per input block
    waiting = [0.0]
    frames_in = [0]

    def timed() -> Iterator[np.ndarray]:
        it = iter(blocks)
        while True:
            t0 = time.perf_counter()
            try:
                block = next(it)
            except StopIteration:
                waiting[0] += time.perf_counter() - t0
                return
            now = time.perf_counter()
            waiting[0] += now - t0
            frames_in[0] += block.shape[-1]
            arrivals.append((frames_in[0], now))
            yield block

    started = time.perf_counter()
    writing = 0.0
    window_start, window_compute = 0, 0.0
    out = 0
    for piece in separator.stream(timed(), sample_rate, channels, stems, out_channels):
        n = next(iter(piece.values())).shape[-1]
        while arrivals and arrivals[0][0] <= out:
            arrivals.popleft()
        arrived = arrivals[0][1] if arrivals else time.perf_counter()
        t0 = time.perf_counter()
        write(piece)
        t1 = time.perf_counter()
        writing += t1 - t0
        stats.latencies.append(t1 - arrived)
        out += n
        if watch is not None:
            compute = t1 - started - waiting[0] - writing
            if out - window_start >= watch_seconds * sample_rate:
                watch((compute - window_compute) / ((out - window_start) / sample_rate))
                window_start, window_compute = out, compute
    stats.wall_seconds = time.perf_counter() - started
    stats.compute_seconds = stats.wall_seconds - waiting[0] - writing
    stats.frames = out
    return stats


# -- the real-time engine ------------------------------------------------------
@dataclass
class LiveStats:
    """Counts of a live run (read while it runs, reported at the end)."""

    overruns: int = 0  # input blocks dropped: the worker was behind by a whole queue
    underruns: int = 0  # output callbacks that found their samples not ready
    dropped_frames: int = 0
    silent_frames: int = 0
    frames_in: int = 0
    frames_out: int = 0
    compute_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    sample_rate: int = 44100

    @property
    def rtf(self) -> float:
        audio = self.frames_in / self.sample_rate
        return self.compute_seconds / audio if audio else 0.0


_STOP = object()


class LiveEngine:
    """Separation a fixed ``delay_frames`` behind a real-time input (see module).

    Call :meth:`push` from the input callback with ``(channels, n)`` blocks and
    :meth:`pull` from the output callback for ``n`` frames of the gain-weighted
    stem mix; both return at once (no model work, no waiting). :attr:`gains`
    (stem -> float) and :attr:`muted` (set of stems) may change at any time.

    Args:
        separator: the :class:`~sepcli.inference.separator.Separator`.
        stems: the stems computed (all go to the mix, each with its gain).
        sample_rate, channels: of the input (and of the output).
        delay_frames: output plays this many frames behind the input.
        queue_frames: most input waiting for the worker (beyond it: overruns);
            default ``delay_frames``.
    """

    def __init__(
        self,
        separator,  # noqa: ANN001 - Separator
        stems: Sequence[str],
        sample_rate: int,
        channels: int,
        delay_frames: int,
        *,
        gains: Mapping[str, float] | None = None,
        queue_frames: int | None = None,
        block_frames: int = 1024,
    ) -> None:
        self.separator = separator
        self.stems = list(stems)
        self.sample_rate = sample_rate
        self.channels = channels
        self.delay = int(delay_frames)
        self.gains = {s: 1.0 for s in self.stems} | dict(gains or {})
        self.muted: set[str] = set()
        self.stats = LiveStats(sample_rate=sample_rate)
        self._in_closed = False
        queue_blocks = max(2, int(math.ceil((queue_frames or self.delay) / max(block_frames, 1))))
        self._in: queue.Queue[object] = queue.Queue(maxsize=queue_blocks)
        self._in_pos = 0  # frames that arrived (dropped ones too): the input clock
        self._out_pos = 0  # frames the output has played
        self._lock = threading.Lock()
        # produced stems in time order: (first frame in input time, {stem: (C, n)})
        self._ready: deque[tuple[int, dict[str, np.ndarray]]] = deque()
        self._ready_upto = 0
        self._error: BaseException | None = None
        self._arrival: deque[tuple[int, float]] = deque()
        self._thread = threading.Thread(target=self._work, name="sepcli-live", daemon=True)
        self._started = False

    # -- callbacks (real-time side) -----------------------------------------
    def push(self, block: np.ndarray) -> None:
        """An input block ``(channels, n)`` (from the input callback; never blocks)."""
        n = block.shape[-1]
        pos = self._in_pos
        self._in_pos += n
        try:
            item = (pos, np.array(block, dtype=np.float32, copy=True), time.perf_counter())
            self._in.put_nowait(item)
        except queue.Full:
            self.stats.overruns += 1
            self.stats.dropped_frames += n

    def pull(self, n: int) -> np.ndarray:
        """``(channels, n)`` of output (from the output callback; never blocks)."""
        out = np.zeros((self.channels, n), np.float32)
        start = self._out_pos - self.delay  # input time of the first frame played now
        self._out_pos += n
        end = start + n
        if end <= 0:
            return out
        gains = {s: (0.0 if s in self.muted else g) for s, g in self.gains.items()}
        with self._lock:
            ready = self._ready
            while ready and ready[0][0] + _length(ready[0][1]) <= start:
                ready.popleft()  # already played past (late, or an earlier pull)
            for first, piece in ready:
                if first >= end:
                    break
                lo, hi = max(first, start), min(first + _length(piece), end)
                for stem, y in piece.items():
                    g = gains.get(stem, 0.0)
                    if g:
                        out[:, lo - start : hi - start] += g * y[:, lo - first : hi - first]
            upto = self._ready_upto
        if upto < end and self._started and not self._finished_input():
            self.stats.underruns += 1
            self.stats.silent_frames += end - max(upto, start, 0)
        self.stats.frames_out += n
        return out

    def _finished_input(self) -> bool:
        return self._in_closed and self._ready_upto >= self._in_pos

    # -- worker -------------------------------------------------------------
    def start(self) -> None:
        self._in_closed = False
        self._started = True
        self._thread.start()

    def close_input(self) -> None:
        """No more input: the worker flushes the tail."""
        self._in_closed = True
        while self._thread.is_alive():
            try:
                self._in.put(_STOP, timeout=0.1)
                return
            except queue.Full:
                continue

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error

    @property
    def drained(self) -> bool:
        """Everything pushed was produced and played."""
        return (
            self._in_closed
            and not self._thread.is_alive()
            and self._out_pos - self.delay >= self._ready_upto
        )

    def _work(self) -> None:
        shift = [0]  # frames dropped before the block being separated
        gaps: deque[tuple[int, int]] = deque()  # (engine frame from which, shift)
        engine_in = [0]
        busy_from = [0.0]

        def blocks() -> Iterator[np.ndarray]:
            while True:
                item = self._in.get()
                if item is _STOP:
                    return
                pos, block, arrived = item  # type: ignore[misc]
                if pos != engine_in[0] + shift[0]:  # blocks were dropped before this one
                    shift[0] = pos - engine_in[0]
                    gaps.append((engine_in[0], shift[0]))
                engine_in[0] += block.shape[-1]
                self._arrival.append((pos + block.shape[-1], arrived))
                self.stats.frames_in += block.shape[-1]
                busy_from[0] = time.perf_counter()
                yield block

        try:
            engine_out = 0
            current = 0  # shift of the engine frames being placed
            for piece in self.separator.stream(
                blocks(), self.sample_rate, self.channels, self.stems
            ):
                self.stats.compute_seconds += time.perf_counter() - busy_from[0]
                n = _length(piece)
                lo = 0
                while lo < n:
                    hi = n
                    if gaps and gaps[0][0] <= engine_out + lo:
                        current = gaps.popleft()[1]
                        continue
                    if gaps:
                        hi = min(n, gaps[0][0] - engine_out)
                    part = {s: y[:, lo:hi] for s, y in piece.items()}
                    self._place(engine_out + lo + current, part)
                    lo = hi
                engine_out += n
                busy_from[0] = time.perf_counter()
        except BaseException as e:  # handed to the caller in join()
            self._error = e

    def _place(self, first: int, piece: dict[str, np.ndarray]) -> None:
        n = _length(piece)
        now = time.perf_counter()
        while self._arrival and self._arrival[0][0] <= first:
            self._arrival.popleft()
        if self._arrival:
            self.stats.latencies.append(now - self._arrival[0][1])
        with self._lock:
            self._ready.append((first, piece))
            self._ready_upto = first + n
            # bounded: never hold more than the delay plus one second ahead of playback
            keep_from = self._out_pos - self.delay
            while self._ready and self._ready[0][0] + _length(self._ready[0][1]) <= keep_from:
                self._ready.popleft()
            limit = self.delay + self.sample_rate
            while self._ready and self._ready_upto - self._ready[0][0] > limit + n:
                self._ready.popleft()


def _length(piece: dict[str, np.ndarray]) -> int:
    return next(iter(piece.values())).shape[-1]
