"""Seeded training chunks: balanced track sampling, random chunks, augmentation.

A chunk is a pure function of ``(seed, epoch, draw)``: :class:`ChunkSampler`
yields those keys (a seeded permutation per epoch, sharded across DDP ranks) and
:class:`ChunkDataset` turns a key into ``(mixture, targets)``. Because the random
stream of a chunk is seeded from its key rather than from a worker or process
state, a run gives the same chunks whatever ``--workers`` is, and resuming at an
epoch boundary reproduces the uninterrupted run exactly.

Recipe (Open-Unmix, Uhlich et al. 2017): every track is drawn
``samples_per_track`` times per epoch; each source is cropped at a random start,
optionally taken from another random track (source mixing), scaled by a random
gain and randomly channel-swapped; the mixture is the sum of the sources.

Several datasets (``--data A --data B``): the tracks of each are a contiguous
block of :class:`ChunkDataset` (``dataset_sizes``); :class:`WeightedChunkSampler`
gives each dataset its share of every epoch (``data_weights``, exact up to
rounding) with balanced track sampling inside it, and its keys
``(epoch, draw, track)`` name the track. Source mixing takes the other sources
from the same dataset only (MIR-1K's ``accompaniment`` is not MUSDB's drums,
bass and other, and its 8 kHz band would leak into a full-band mixture).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sepcli.errors import TrainingError
from sepcli.training.augment import (
    change_speed,
    crop,
    random_channel_swap,
    random_gain,
    random_speed,
    random_start,
    rms,
)
from sepcli.training.cache import CachedTrack

__all__ = [
    "Augmentation",
    "ChunkDataset",
    "ChunkSampler",
    "WeightedChunkSampler",
    "dataset_shares",
    "make_sampler",
]

#: retries to find a non-silent chunk when ``silence_threshold`` is set.
SILENCE_RETRIES = 10


@dataclass(frozen=True)
class Augmentation:
    """Switches of the training augmentation (all on by default, as in Open-Unmix)."""

    gain: bool = True
    gain_min: float = 0.25
    gain_max: float = 1.25
    channel_swap: bool = True
    mix: bool = True
    silence_threshold: float = 0.0
    #: probability of a speed change per source (0 = off), up to ``speed_semitones``
    speed: float = 0.0
    speed_semitones: float = 2.0

    @classmethod
    def off(cls) -> Augmentation:
        return cls(gain=False, channel_swap=False, mix=False, silence_threshold=0.0, speed=0.0)


class ChunkDataset(Dataset):
    """Random training chunks from cached tracks.

    Args:
        tracks: cached tracks, each holding every name of ``sources``.
        sources: names of the sources summed into the mixture; the first
            ``num_targets`` are the training targets, the rest (e.g. ``"rest"``)
            only go into the mixture.
        num_targets: how many of ``sources`` the model estimates.
        segment_samples: chunk length in samples.
        samples_per_track: draws of each track per epoch.
        augmentation: the augmentation switches.
        seed: base seed.
        dataset_sizes: number of tracks of each dataset, in the order of
            ``tracks`` (default: one dataset); source mixing stays within one.
        mix_from: index of the dataset whose tracks lend the mixed sources
            (all but the first) of every draw (default: the draw's own
            dataset); only with ``augmentation.mix``.

    Every track holds the targets; it may lack a non-target source (e.g. MUSDB
    stems next to MIR-1K's accompaniment), which is then silent in its draws
    and never lent by it.

    Items are keyed by ``(epoch, draw)`` (see :class:`ChunkSampler`; the track
    is ``draw % len // samples_per_track``) or ``(epoch, draw, track)`` (see
    :class:`WeightedChunkSampler`) and are
    ``(mixture (channel, time), targets (num_targets, channel, time))`` float32.
    """

    def __init__(
        self,
        tracks: Sequence[CachedTrack],
        sources: Sequence[str],
        num_targets: int,
        segment_samples: int,
        samples_per_track: int = 64,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        dataset_sizes: Sequence[int] | None = None,
        mix_from: int | None = None,
    ) -> None:
        if not tracks:
            raise TrainingError("no training tracks")
        sizes = [len(tracks)] if dataset_sizes is None else [int(n) for n in dataset_sizes]
        if sum(sizes) != len(tracks) or any(n <= 0 for n in sizes):
            raise TrainingError(
                f"dataset_sizes {sizes} do not split {len(tracks)} tracks into non-empty blocks"
            )
        if not 0 < num_targets <= len(sources):
            raise TrainingError(f"num_targets={num_targets} does not fit sources {list(sources)}")
        if mix_from is not None and not 0 <= mix_from < len(sizes):
            raise TrainingError(f"mix_from {mix_from} is not one of the {len(sizes)} datasets")
        for track in tracks:
            missing = [s for s in sources[:num_targets] if s not in track.sources]
            if missing:
                raise TrainingError(f"{track.name}: cached track lacks {missing}")
        self.tracks = list(tracks)
        self.sources = tuple(sources)
        self.num_targets = num_targets
        self.segment_samples = int(segment_samples)
        self.samples_per_track = int(samples_per_track)
        self.augmentation = augmentation or Augmentation()
        self.seed = int(seed)
        self.dataset_sizes = tuple(sizes)
        #: names and layouts of the datasets (set by :func:`sepcli.training.run.prepare_data`)
        self.dataset_names: tuple[str, ...] = ()
        self.dataset_layouts: tuple[str, ...] = ()
        self.mix_from = mix_from
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self._block = np.repeat(np.arange(len(sizes)), sizes)
        # lenders of each source in each dataset: track indices holding it
        self._lenders = {
            (b, name): np.array(
                [
                    i
                    for i in range(self._starts[b], self._starts[b + 1])
                    if name in self.tracks[i].sources
                ],
                dtype=int,
            )
            for b in range(len(sizes))
            for name in self.sources
        }

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def dataset_of(self, index: int) -> int:
        """Which dataset (0-based) track ``index`` belongs to."""
        return int(self._block[index])

    def spread(self, count: int) -> list[CachedTrack]:
        """Up to ``count`` tracks taken in turn from each dataset (e.g. for input statistics)."""
        out: list[CachedTrack] = []
        for i in range(max(self.dataset_sizes)):
            for d, size in enumerate(self.dataset_sizes):
                if i < size and len(out) < count:
                    out.append(self.tracks[self._starts[d] + i])
        return out

    def _span(self, speed: float) -> int:
        """Samples to read for a chunk played ``speed`` times faster."""
        return int(round(self.segment_samples * speed))

    def _source_chunk(
        self,
        track: CachedTrack,
        name: str,
        rng: np.random.Generator,
        start: int | None,
        speed: float = 1.0,
    ):
        audio = track.sources[name]
        need = self._span(speed)
        if start is None:
            start = random_start(audio.shape[1], need, rng)
        chunk = crop(audio, start, need)
        return chunk if speed == 1.0 else change_speed(chunk, speed, self.segment_samples)

    def chunk(
        self, epoch: int, draw: int, track: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(mixture (C, T), targets (S, C, T))`` for key ``(epoch, draw[, track])`` as numpy."""
        aug = self.augmentation
        rng = np.random.default_rng([self.seed, epoch, draw])
        index = (draw % len(self)) // self.samples_per_track if track is None else int(track)
        if not 0 <= index < len(self.tracks):
            raise TrainingError(f"track index {index} outside 0..{len(self.tracks) - 1}")
        block = self.dataset_of(index)
        lender = block if self.mix_from is None else self.mix_from
        first = self.tracks[index]
        # speed factors: one per source when sources come from different tracks,
        # else one for all (the stems of one track stay aligned)
        speeds = [1.0] * len(self.sources)
        if aug.speed > 0:
            draws = len(self.sources) if aug.mix else 1
            factors = [random_speed(rng, aug.speed, aug.speed_semitones) for _ in range(draws)]
            speeds = factors if aug.mix else factors * len(self.sources)
        shared_start = random_start(first.length, self._span(speeds[0]), rng)
        chunks = []
        for i, name in enumerate(self.sources):
            mixed = aug.mix and i > 0
            lenders = self._lenders[lender, name]
            if (mixed and not len(lenders)) or (not mixed and name not in first.sources):
                channels = first.sources[self.sources[0]].shape[0]
                chunks.append(np.zeros((channels, self.segment_samples), dtype=np.float32))
                continue
            track = self.tracks[lenders[int(rng.integers(len(lenders)))]] if mixed else first
            start = None if mixed else shared_start
            chunk = self._source_chunk(track, name, rng, start, speeds[i])
            if aug.silence_threshold > 0 and i < self.num_targets:
                for _ in range(SILENCE_RETRIES):
                    if rms(chunk) >= aug.silence_threshold:
                        break
                    if aug.mix:  # a target's retry looks in its own dataset
                        pool = lenders if mixed else self._lenders[block, name]
                        track = self.tracks[pool[int(rng.integers(len(pool)))]]
                    chunk = self._source_chunk(track, name, rng, None, speeds[i])
            if aug.gain:
                chunk = random_gain(chunk, rng, aug.gain_min, aug.gain_max)
            if aug.channel_swap:
                chunk = random_channel_swap(chunk, rng)
            chunks.append(np.ascontiguousarray(chunk, dtype=np.float32))
        stack = np.stack(chunks)
        return stack.sum(axis=0), stack[: self.num_targets]

    def __getitem__(self, key: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, draw, *track = key
        mixture, targets = self.chunk(int(epoch), int(draw), int(track[0]) if track else None)
        return torch.from_numpy(mixture), torch.from_numpy(targets)


class ChunkSampler(Sampler):
    """Keys ``(epoch, draw)`` for one epoch: a seeded permutation, sharded by rank.

    Each epoch draws a permutation of ``range(dataset_len)`` from ``(seed, epoch)``
    (so every track appears ``samples_per_track`` times: balanced sampling),
    repeated (with fresh draw numbers) until ``num_samples`` keys exist, and gives
    rank ``r`` of ``world_size`` the keys ``r, r + world_size, ...`` — the
    equivalent of ``DistributedSampler`` with equal shard sizes.

    Args:
        dataset_len: ``len(ChunkDataset)``.
        seed: base seed.
        num_samples: keys per rank per epoch (``None``: ``dataset_len // world_size``).
        rank, world_size: this process's place in the DDP group.
    """

    def __init__(
        self,
        dataset_len: int,
        seed: int = 0,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if dataset_len <= 0:
            raise TrainingError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise TrainingError(f"rank {rank} outside world size {world_size}")
        self.dataset_len = dataset_len
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.num_samples = int(num_samples) if num_samples else max(dataset_len // world_size, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed or int(state["num_samples"]) != self.num_samples:
            raise TrainingError(
                "sampler state does not match this run (seed or epoch size changed)"
            )
        self.epoch = int(state["epoch"])

    def keys(self) -> list[tuple[int, int]]:
        total = self.num_samples * self.world_size
        rng = np.random.default_rng([self.seed, self.epoch, 0x5A4D])
        draws: list[int] = []
        round_ = 0
        while len(draws) < total:
            perm = rng.permutation(self.dataset_len)
            draws.extend(int(i) + round_ * self.dataset_len for i in perm)
            round_ += 1
        mine = draws[:total][self.rank :: self.world_size]
        return [(self.epoch, d) for d in mine]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys())

    def __len__(self) -> int:
        return self.num_samples


def dataset_shares(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` draws between datasets in proportion to ``weights``.

    Largest remainder rounding (ties to the lower index): the shares sum to
    ``total`` and each is within one of ``total * w / sum(w)``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise TrainingError(f"bad dataset weights {list(weights)}")
    exact = total * w / w.sum()
    shares = np.floor(exact).astype(int)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[: total - int(shares.sum())]:
        shares[i] += 1
    return [int(n) for n in shares]


class WeightedChunkSampler(Sampler):
    """Keys ``(epoch, draw, track)`` for one epoch over several datasets.

    Each epoch (seeded by ``(seed, epoch)``) gives dataset ``d`` its share
    (:func:`dataset_shares` of ``weights``) of the ``num_samples * world_size``
    draws; inside a dataset the tracks come from repeated seeded permutations
    (balanced: every track is drawn the same number of times, give or take
    one); the draws of all datasets are then shuffled together, numbered
    ``0, 1, ...`` (the ``draw`` that seeds each chunk) and sharded by rank as in
    :class:`ChunkSampler`.

    Args:
        dataset_sizes: tracks of each dataset (blocks of :class:`ChunkDataset`).
        weights: sampling weight of each dataset (``None``: proportional to its
            number of tracks, i.e. every track equally often).
        samples_per_track: sets the default epoch size, ``sum(sizes) * samples_per_track``.
        seed: base seed.
        num_samples: keys per rank per epoch (``None``: the default epoch size / world size).
        rank, world_size: this process's place in the DDP group.
    """

    def __init__(
        self,
        dataset_sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        samples_per_track: int = 64,
        seed: int = 0,
        num_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        sizes = [int(n) for n in dataset_sizes]
        if not sizes or any(n <= 0 for n in sizes):
            raise TrainingError(f"cannot sample from empty datasets (sizes {sizes})")
        if not 0 <= rank < world_size:
            raise TrainingError(f"rank {rank} outside world size {world_size}")
        weights = list(weights) if weights else [float(n) for n in sizes]
        if len(weights) != len(sizes):
            raise TrainingError(f"{len(weights)} weights for {len(sizes)} datasets")
        dataset_shares(1, weights)  # validates the weights
        self.sizes = sizes
        self.weights = [float(w) for w in weights]
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        default = sum(sizes) * int(samples_per_track)
        self.num_samples = int(num_samples) if num_samples else max(default // world_size, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "sizes": list(self.sizes),
            "weights": list(self.weights),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        same = (
            int(state["seed"]) == self.seed
            and int(state["num_samples"]) == self.num_samples
            and list(state.get("sizes", [])) == self.sizes
            and [float(w) for w in state.get("weights", [])] == self.weights
        )
        if not same:
            raise TrainingError(
                "sampler state does not match this run "
                "(seed, epoch size, datasets or their weights changed)"
            )
        self.epoch = int(state["epoch"])

    def keys(self) -> list[tuple[int, int, int]]:
        total = self.num_samples * self.world_size
        rng = np.random.default_rng([self.seed, self.epoch, 0x5A4D, len(self.sizes)])
        tracks: list[int] = []
        start = 0
        for size, share in zip(self.sizes, dataset_shares(total, self.weights), strict=True):
            picks: list[int] = []
            while len(picks) < share:
                picks.extend(int(i) + start for i in rng.permutation(size))
            tracks.extend(picks[:share])
            start += size
        order = rng.permutation(total)
        draws = [(self.epoch, draw, tracks[int(i)]) for draw, i in enumerate(order)]
        return draws[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return iter(self.keys())

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(
    dataset: ChunkDataset,
    weights: Sequence[float] = (),
    seed: int = 0,
    num_samples: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> ChunkSampler | WeightedChunkSampler:
    """The sampler of ``dataset``: :class:`ChunkSampler` for one dataset (the
    chunks of a single-folder run do not change), :class:`WeightedChunkSampler`
    for several."""
    if len(dataset.dataset_sizes) == 1:
        return ChunkSampler(len(dataset), seed, num_samples, rank, world_size)
    return WeightedChunkSampler(
        dataset.dataset_sizes,
        weights or None,
        dataset.samples_per_track,
        seed,
        num_samples,
        rank,
        world_size,
    )
