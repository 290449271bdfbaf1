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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from sepcli.errors import TrainingError
from sepcli.training.augment import crop, random_channel_swap, random_gain, random_start, rms
from sepcli.training.cache import CachedTrack

__all__ = ["Augmentation", "ChunkDataset", "ChunkSampler"]

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

    @classmethod
    def off(cls) -> Augmentation:
        return cls(gain=False, channel_swap=False, mix=False, silence_threshold=0.0)


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

    Items are keyed by ``(epoch, draw)`` (see :class:`ChunkSampler`) and are
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
    ) -> None:
        if not tracks:
            raise TrainingError("no training tracks")
        if not 0 < num_targets <= len(sources):
            raise TrainingError(f"num_targets={num_targets} does not fit sources {list(sources)}")
        for track in tracks:
            missing = [s for s in sources if s not in track.sources]
            if missing:
                raise TrainingError(f"{track.name}: cached track lacks {missing}")
        self.tracks = list(tracks)
        self.sources = tuple(sources)
        self.num_targets = num_targets
        self.segment_samples = int(segment_samples)
        self.samples_per_track = int(samples_per_track)
        self.augmentation = augmentation or Augmentation()
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def _source_chunk(
        self, track: CachedTrack, name: str, rng: np.random.Generator, start: int | None
    ):
        audio = track.sources[name]
        if start is None:
            start = random_start(audio.shape[1], self.segment_samples, rng)
        return crop(audio, start, self.segment_samples)

    def chunk(self, epoch: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mixture (C, T), targets (S, C, T))`` for key ``(epoch, draw)`` as numpy."""
        aug = self.augmentation
        rng = np.random.default_rng([self.seed, epoch, draw])
        first = self.tracks[(draw % len(self)) // self.samples_per_track]
        shared_start = random_start(first.length, self.segment_samples, rng)
        chunks = []
        for i, name in enumerate(self.sources):
            track = first
            if aug.mix and i > 0:
                track = self.tracks[int(rng.integers(len(self.tracks)))]
            start = None if (aug.mix and i > 0) else shared_start
            chunk = self._source_chunk(track, name, rng, start)
            if aug.silence_threshold > 0 and i < self.num_targets:
                for _ in range(SILENCE_RETRIES):
                    if rms(chunk) >= aug.silence_threshold:
                        break
                    if aug.mix:
                        track = self.tracks[int(rng.integers(len(self.tracks)))]
                    chunk = self._source_chunk(track, name, rng, None)
            if aug.gain:
                chunk = random_gain(chunk, rng, aug.gain_min, aug.gain_max)
            if aug.channel_swap:
                chunk = random_channel_swap(chunk, rng)
            chunks.append(np.ascontiguousarray(chunk, dtype=np.float32))
        stack = np.stack(chunks)
        return stack.sum(axis=0), stack[: self.num_targets]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, draw = key
        mixture, targets = self.chunk(int(epoch), int(draw))
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
