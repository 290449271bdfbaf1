"""The one separation pipeline shared by the CLI, ``evaluate`` and Python users.

decode -> channels to the model's -> resample to the model rate (soxr) ->
chunked inference with overlap-add (optional shifts) -> phase step for
spectrogram models -> resample back to the input rate -> stems (derived ones
too) -> encode to temporary files -> rename. Every stage is streaming, so
memory does not grow with the track length.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sepcli import audio
from sepcli.dsp.phase import PHASE_METHODS, reconstruct
from sepcli.dsp.stft import hann_window, istft, stft
from sepcli.errors import AudioDecodeError, UsageError
from sepcli.inference.chunking import (
    StreamingOverlapAdd,
    plan_chunks,
    shift_offsets,
)
from sepcli.inference.stems import StemRecipe, plan_stems
from sepcli.models.archive import Archive, load_archive

__all__ = ["Separator", "FileResult", "resolve_device", "track_name"]

log = logging.getLogger(__name__)

#: Input is decoded and fed to the pipeline in blocks of this many seconds.
BLOCK_SECONDS = 10.0
#: Largest random time shift, as in Demucs (seconds).
MAX_SHIFT_SECONDS = 0.5

ProgressFn = Callable[[int, int], None]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is checked."""
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(
                f"device {device!r} asked for, but CUDA is not available on this machine"
            )
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None


def _as_tensor(array: np.ndarray) -> Tensor:
    """A tensor over ``array`` (copied when it is read-only, e.g. memory-mapped)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def track_name(path: str | os.PathLike[str]) -> str:
    """File name without its audio suffixes (``song.stem.mp4`` -> ``song``)."""
    name = Path(path).name
    if name.lower().endswith(".stem.mp4"):
        return name[: -len(".stem.mp4")]
    return Path(name).stem if Path(name).suffix else name


@dataclass
class FileResult:
    """What :meth:`Separator.separate_file` did for one input."""

    input: Path
    outputs: dict[str, Path]
    duration: float  # seconds of audio
    seconds: float  # wall-clock seconds taken
    sample_rate: int
    channels: int
    extra: dict = field(default_factory=dict)


class Separator:
    """Separate audio with a model archive.

    Args:
        model: a loaded :class:`~sepcli.models.archive.Archive` or the path of an
            archive file (model names are resolved by :func:`sepcli.hub.load_model`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        segment: chunk length in seconds (default: the archive's recommendation).
        overlap: fraction of a chunk shared with the next, in [0, 0.9] (default:
            the archive's recommendation, ``metadata.overlap``).
        shifts: number of random time-shift passes averaged (0 = none).
        seed: seed of the shifts and of random phase initialisation.
        context: seconds of real neighbouring audio given to each chunk on both
            sides (default: the archive's ``context_seconds``, at least ``n_fft``
            samples for spectrogram models).
        batch_size: chunks per forward pass.
        phase: phase method for ``magnitude`` archives (default: the archive's).
        wiener_iters, gl_iters, gl_init: parameters of the phase methods.
    """

    def __init__(
        self,
        model: Archive | str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        segment: float | None = None,
        overlap: float | None = None,
        shifts: int = 0,
        seed: int = 0,
        context: float | None = None,
        batch_size: int = 1,
        phase: str | None = None,
        wiener_iters: int = 1,
        gl_iters: int = 32,
        gl_init: str = "mixture",
    ) -> None:
        self.device = resolve_device(device)
        if isinstance(model, Archive):
            archive = model
            if next(archive.module.parameters(), torch.zeros(0)).device != self.device:
                archive = Archive(archive.module.to(self.device), archive.metadata, archive.path)
        else:
            archive = load_archive(model, device=self.device)
        self.archive = archive
        meta = archive.metadata
        if overlap is None:
            overlap = meta.overlap
        if not 0.0 <= overlap <= 0.9:
            raise UsageError(f"overlap must be between 0 and 0.9, got {overlap}")
        if shifts < 0:
            raise UsageError(f"shifts must be >= 0, got {shifts}")
        seg = meta.segment_seconds if segment is None else segment
        if seg <= 0:
            raise UsageError(f"segment must be positive, got {seg}")
        self.segment_samples = max(1, int(round(seg * meta.sample_rate)))
        if meta.stft is not None and self.segment_samples < meta.stft.n_fft:
            raise UsageError(
                f"segment {seg:g}s is shorter than the model's STFT window "
                f"({meta.stft.n_fft / meta.sample_rate:.3f}s)"
            )
        ctx = meta.context_seconds if context is None else context
        if ctx < 0:
            raise UsageError("context must be >= 0")
        ctx_samples = int(round(ctx * meta.sample_rate))
        if context is None and meta.stft is not None:
            ctx_samples = max(ctx_samples, meta.stft.n_fft)
        self.context_samples = ctx_samples
        self.overlap = overlap
        self.shifts = shifts
        self.seed = seed
        self.batch_size = max(1, batch_size)
        self.phase = phase or meta.phase
        if self.phase not in PHASE_METHODS:
            raise UsageError(
                f"unknown phase method {self.phase!r}; choose from {', '.join(PHASE_METHODS)}"
            )
        if gl_init not in ("mixture", "random"):
            raise UsageError(f"gl_init must be 'mixture' or 'random', got {gl_init!r}")
        self.wiener_iters = wiener_iters
        self.gl_iters = gl_iters
        self.gl_init = gl_init
        self._window = hann_window(meta.stft.n_fft, self.device) if meta.stft else None
        self._generator: torch.Generator | None = None

    # -- properties -------------------------------------------------------
    @property
    def metadata(self):
        return self.archive.metadata

    @property
    def sources(self) -> tuple[str, ...]:
        return self.archive.metadata.sources

    @property
    def sample_rate(self) -> int:
        return self.archive.metadata.sample_rate

    def stems(self, requested: Sequence[str] | None = None) -> list[StemRecipe]:
        """Recipes for ``requested`` stems (raises ``UsageError`` for unknown ones)."""
        return plan_stems(self.sources, requested)

    # -- model on one batch of chunks ---------------------------------------
    def _forward(self, batch: Tensor) -> Tensor:
        """``(B, C, L)`` -> ``(B, S, C, L)`` waveforms."""
        meta = self.archive.metadata
        out = self.archive.module(batch)
        if meta.output == "waveform":
            return out
        assert meta.stft is not None
        n_fft, hop = meta.stft.n_fft, meta.stft.hop_length
        length = batch.shape[-1]
        if meta.output == "complex":
            return istft(out, n_fft, hop, length, self._window)
        mix_spec = stft(batch, n_fft, hop, self._window)
        return reconstruct(
            self.phase,
            out,
            mix_spec,
            n_fft,
            hop,
            length,
            wiener_iters=self.wiener_iters,
            gl_iters=self.gl_iters,
            gl_init=self.gl_init,
            generator=self._generator,
            # One estimated source: Wiener needs the rest of the mixture as a residual
            # source, or its single mask would be 1 everywhere.
            wiener_residual=meta.num_sources == 1,
            mix_wave=batch,
        )

    def _offsets(self) -> list[int]:
        max_shift = min(int(MAX_SHIFT_SECONDS * self.sample_rate), self.segment_samples)
        return shift_offsets(self.shifts, max_shift, self.seed)

    def count_chunks(self, frames: int, sample_rate: int) -> int:
        """Number of chunks the model will run for ``frames`` input samples."""
        n = int(math.ceil(frames * self.sample_rate / sample_rate))
        return sum(
            len(plan_chunks(n, self.segment_samples, self.overlap, o)) for o in self._offsets()
        )

    # -- streaming core -----------------------------------------------------
    def stream(
        self,
        blocks: Iterable[np.ndarray],
        sample_rate: int,
        channels: int,
        stems: Sequence[str] | None = None,
        out_channels: int | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Separate a stream of input blocks.

        Args:
            blocks: float32 arrays ``(channels, n)`` at ``sample_rate``.
            sample_rate: input rate in Hz.
            channels: input channels.
            stems: stem names (``None`` = the model's sources).
            out_channels: channels of the output stems (default: the input's,
                or the model's for inputs with more than 2 channels).
            on_chunk: called with the number of chunks processed each time.

        Yields:
            dicts stem -> float32 ``(out_channels, m)``; concatenated, each stem
            has exactly as many samples as the input.
        """
        meta = self.archive.metadata
        recipes = self.stems(stems)
        model_channels = meta.audio_channels
        if channels < 1:
            raise UsageError("input has no channels")
        if channels > 2:
            log.warning(
                "input has %d channels; downmixing to %d for the model", channels, model_channels
            )
        if out_channels is None:
            out_channels = channels if channels <= 2 else model_channels
        needed = sorted({i for r in recipes for i in r.indices})
        use_mix = any(r.kind == "mix_minus" for r in recipes)
        # Random phase initialisation is seeded, so a run is reproducible.
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

        engine = StreamingOverlapAdd(
            self._forward,
            channels=model_channels,
            num_sources=meta.num_sources,
            segment=self.segment_samples,
            overlap=self.overlap,
            context=self.context_samples,
            offsets=self._offsets(),
            batch_size=self.batch_size,
            device=self.device,
            on_chunk=on_chunk,
        )
        res_in = audio.StreamResampler(sample_rate, meta.sample_rate, model_channels)
        res_out = audio.StreamResampler(meta.sample_rate, sample_rate, len(needed) * model_channels)
        mix_fifo: deque[np.ndarray] = deque()
        fifo_len = 0
        frames_in = 0
        frames_out = 0

        def take_mix(n: int) -> np.ndarray:
            nonlocal fifo_len
            parts = []
            while n > 0 and mix_fifo:
                head = mix_fifo[0]
                if head.shape[-1] <= n:
                    parts.append(mix_fifo.popleft())
                    n -= head.shape[-1]
                else:
                    parts.append(head[:, :n])
                    mix_fifo[0] = head[:, n:]
                    n = 0
            got = (
                np.concatenate(parts, axis=-1) if parts else np.zeros((out_channels, 0), np.float32)
            )
            fifo_len -= got.shape[-1]
            if n > 0:  # resampler rounding at the very end
                got = np.concatenate([got, np.zeros((out_channels, n), np.float32)], axis=-1)
            return got

        def finish_block(model_out: Tensor, resampled: np.ndarray) -> dict[str, np.ndarray] | None:
            nonlocal frames_out
            n = resampled.shape[-1]
            if n == 0:
                return None
            per_source = resampled.reshape(len(needed), model_channels, n)
            src = {
                idx: audio.convert_channels(per_source[k], out_channels)
                for k, idx in enumerate(needed)
            }
            mix = take_mix(n) if use_mix else None
            result: dict[str, np.ndarray] = {}
            for r in recipes:
                if r.kind == "source":
                    y = src[r.indices[0]]
                else:
                    y = np.sum([src[i] for i in r.indices], axis=0)
                    if r.kind == "mix_minus":
                        assert mix is not None
                        y = mix - y
                result[r.name] = np.ascontiguousarray(y, dtype=np.float32)
            frames_out += n
            return result

        def through(model_out: Tensor) -> np.ndarray:
            if model_out.shape[-1] == 0:
                return np.zeros((len(needed) * model_channels, 0), np.float32)
            sel = model_out[needed].reshape(len(needed) * model_channels, -1).numpy()
            return res_out.process(sel)

        for block in blocks:
            block = np.asarray(block, dtype=np.float32)
            if block.ndim != 2 or block.shape[0] != channels:
                raise ValueError(f"expected blocks of shape ({channels}, n), got {block.shape}")
            if block.shape[-1] == 0:
                continue
            frames_in += block.shape[-1]
            if use_mix:
                mix_fifo.append(audio.convert_channels(block, out_channels))
                fifo_len += block.shape[-1]
            x = res_in.process(audio.convert_channels(block, model_channels))
            out = engine.push(_as_tensor(x))
            done = finish_block(out, through(out))
            if done:
                yield done
        tail_in = res_in.flush()
        parts = [engine.push(_as_tensor(tail_in))] if tail_in.shape[-1] else []
        parts.append(engine.finish())
        tail = torch.cat(parts, dim=-1)
        resampled = np.concatenate([through(tail), res_out.flush()], axis=-1)
        # soxr rounds lengths; the output has exactly the input's length.
        want = frames_in - frames_out
        if resampled.shape[-1] > want:
            resampled = resampled[:, :want]
        elif resampled.shape[-1] < want:
            pad = np.zeros((resampled.shape[0], want - resampled.shape[-1]), np.float32)
            resampled = np.concatenate([resampled, pad], axis=-1)
        done = finish_block(tail, resampled)
        if done:
            yield done
        if frames_out != frames_in:
            raise AssertionError(
                f"separator produced {frames_out} samples for {frames_in} input samples"
            )

    # -- in memory ----------------------------------------------------------
    def separate(
        self,
        mix: np.ndarray | Tensor,
        sample_rate: int,
        stems: Sequence[str] | None = None,
        out_channels: int | None = None,
    ) -> dict[str, Tensor]:
        """Separate a whole track held in memory.

        Args:
            mix: ``(channel, time)`` (or ``(time,)`` for mono) float waveform.
            sample_rate: its rate in Hz.
            stems: stem names (``None`` = the model's sources).

        Returns:
            stem -> float32 tensor ``(channel, time)`` at ``sample_rate``.
        """
        if isinstance(mix, Tensor):
            mix = mix.detach().cpu().numpy()
        mix = np.asarray(mix, dtype=np.float32)
        if mix.ndim == 1:
            mix = mix[None]
        if mix.ndim != 2:
            raise UsageError(f"expected a (channel, time) waveform, got shape {mix.shape}")
        block = max(1, int(BLOCK_SECONDS * sample_rate))
        blocks = (mix[:, i : i + block] for i in range(0, mix.shape[-1], block))
        parts: dict[str, list[np.ndarray]] = {}
        for out in self.stream(blocks, sample_rate, mix.shape[0], stems, out_channels):
            for name, y in out.items():
                parts.setdefault(name, []).append(y)
        names = [r.name for r in self.stems(stems)]
        oc = out_channels or (mix.shape[0] if mix.shape[0] <= 2 else self.metadata.audio_channels)
        return {
            n: torch.from_numpy(np.concatenate(parts[n], axis=-1))
            if n in parts
            else torch.zeros(oc, 0)
            for n in names
        }

    # -- files --------------------------------------------------------------
    def separate_file(
        self,
        path: str | os.PathLike[str],
        outputs: Mapping[str, str | os.PathLike[str]],
        *,
        format: str | None = None,
        bit_depth: int = 16,
        clip: str = "rescale",
        out_channels: int | None = None,
        on_progress: ProgressFn | None = None,
    ) -> FileResult:
        """Separate one file and write each stem to ``outputs[stem]``.

        Outputs are written to temporary files and renamed only when every stem
        is complete; on any error (or Ctrl-C) no output file is left behind and
        existing files are untouched.
        """
        path = Path(path)
        started = time.perf_counter()
        stems = list(outputs)
        self.stems(stems)  # unknown stems fail before decoding
        with audio.open_audio(path) as reader:
            info = reader.info
            block = max(1, int(BLOCK_SECONDS * info.sample_rate))
            total_chunks = self.count_chunks(info.frames, info.sample_rate) if info.frames else 0
            done_chunks = 0

            def on_chunk(n: int) -> None:
                nonlocal done_chunks
                done_chunks += n
                if on_progress is not None:
                    on_progress(done_chunks, max(total_chunks, done_chunks))

            oc = out_channels or (
                info.channels if info.channels <= 2 else self.metadata.audio_channels
            )
            writers: dict[str, audio.AudioWriter] = {}
            frames = 0
            try:
                for stem in stems:
                    writers[stem] = audio.AudioWriter(
                        outputs[stem],
                        info.sample_rate,
                        oc,
                        format=format,
                        bit_depth=bit_depth,
                        clip=clip,
                    )
                for out in self.stream(
                    reader.blocks(block), info.sample_rate, info.channels, stems, oc, on_chunk
                ):
                    for stem, y in out.items():
                        writers[stem].write(y)
                    frames += next(iter(out.values())).shape[-1]
                if frames == 0:
                    raise AudioDecodeError(f"{path}: no audio samples")
                for w in writers.values():  # encode every stem first, so the renames
                    w.prepare()  # publish all of them or (on error) none
                written = {stem: writers[stem].commit() for stem in stems}
            except BaseException:
                for w in writers.values():
                    w.abort()
                raise
        return FileResult(
            input=path,
            outputs=written,
            duration=frames / info.sample_rate,
            seconds=time.perf_counter() - started,
            sample_rate=info.sample_rate,
            channels=oc,
        )
