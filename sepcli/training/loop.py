"""The training loop: Adam, plateau decay, early stopping, clipping, AMP, checkpoints.

:class:`Trainer` trains any module that follows the archive contract
(``forward(mix (B, C, T))`` returns the output kind of its metadata) with the
loss fitting that output kind (:mod:`sepcli.training.losses`). One epoch is
``steps_per_epoch`` batches from :func:`~sepcli.training.sampling.make_sampler`;
after it, rank 0 validates (every ``valid_every`` epochs), appends a line to
``log.jsonl``, redraws ``curves.svg``, writes ``best.pt`` when the score
improved and ``checkpoint.pt`` always (both atomic). The score is the mean over
targets of the validation median SDR (higher is better); without validation
it is the training loss (lower is better). ReduceLROnPlateau and early stopping
(``patience`` epochs without improvement) follow that score.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sepcli import atomic
from sepcli.errors import TrainingError
from sepcli.models.archive import ArchiveMetadata
from sepcli.progress import Progress, ProgressFn
from sepcli.training import distributed
from sepcli.training.cache import CachedTrack
from sepcli.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from sepcli.training.config import TrainConfig
from sepcli.training.distributed import DistInfo
from sepcli.training.losses import make_loss
from sepcli.training.plot import write_curves
from sepcli.training.sampling import ChunkDataset, make_sampler
from sepcli.training.validate import MetricFn, validate

__all__ = ["Trainer", "CHECKPOINT", "BEST", "LOG", "CURVES", "RESUME_KEYS"]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOG = "log.jsonl"
CURVES = "curves.svg"

#: settings that must not change when resuming (they change what is trained).
RESUME_KEYS = (
    "model",
    "targets",
    "sample_rate",
    "audio_channels",
    "segment",
    "samples_per_track",
    "steps_per_epoch",
    "batch_size",
    "seed",
    "aug_gain",
    "gain_min",
    "gain_max",
    "aug_channel_swap",
    "aug_mix",
    "mix_stems",
    "mix_from",
    "silence_threshold",
    "aug_speed",
    "speed_semitones",
    "ema",
    "lr_schedule",
    "loss",
    "model_config",
    "data_weights",
)


class Trainer:
    """Trains ``model`` on ``train_set`` and validates on ``valid_tracks``.

    Args:
        model: the module (moved to ``device``; wrapped in DDP when distributed).
        metadata: its archive metadata (output kind, STFT, sources = targets).
        train_set: the chunk dataset.
        valid_tracks: cached validation tracks with their mixture (may be empty).
        config: the run's :class:`TrainConfig`.
        run_dir: folder of checkpoints and logs.
        dist_info: this process's place in the DDP group.
        device: training device.
        metric: validation metric (default: :func:`sepcli.training.validate.sdr_metric`).
        progress: gets :class:`~sepcli.progress.Progress` events: ``train`` (steps,
            ``done=0`` when an epoch starts, then after each step with ``info``
            ``epoch`` and ``loss``), ``validate`` (tracks, ``info`` ``epoch``)
            and ``epoch`` (epochs, ``info``: the epoch's log record).
    """

    def __init__(
        self,
        model: nn.Module,
        metadata: ArchiveMetadata,
        train_set: ChunkDataset,
        valid_tracks: Sequence[CachedTrack],
        config: TrainConfig,
        run_dir: str | os.PathLike[str],
        *,
        dist_info: DistInfo | None = None,
        device: str | torch.device = "cpu",
        metric: MetricFn | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.config = config
        self.metadata = metadata
        self.run_dir = Path(run_dir)
        self.dist = dist_info or DistInfo()
        self.device = torch.device(device)
        self.metric = metric
        self.progress: ProgressFn = progress or (lambda event: None)
        self.valid_tracks = list(valid_tracks)
        stft = metadata.stft
        self.loss_name, self.loss_fn = make_loss(
            metadata.output,
            config.loss,
            stft.n_fft if stft else 0,
            stft.hop_length if stft else 0,
            metadata.num_sources,
        )
        self.model = model.to(self.device)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net: nn.Module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.net = self.model
        self.validating = bool(self.valid_tracks) and config.valid_every > 0
        self.mode = "max" if self.validating else "min"
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode=self.mode,
            factor=config.lr_decay_gamma,
            patience=config.lr_decay_patience,
        )
        #: exponential moving average of the weights (validated and exported instead
        #: of the live weights when ``config.ema`` > 0); its buffers (BatchNorm
        #: statistics) are the live ones, copied at the end of each epoch
        self.ema_model: nn.Module | None = None
        self.ema_updates = 0
        if config.ema > 0:
            self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        num_samples = config.steps_per_epoch * config.batch_size if config.steps_per_epoch else None
        self.sampler = make_sampler(
            train_set,
            config.data_weights,
            seed=config.seed,
            num_samples=num_samples,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        if len(self.sampler) < config.batch_size:
            raise TrainingError(
                f"an epoch has {len(self.sampler)} chunks per process, fewer than --batch-size "
                f"{config.batch_size}; raise samples_per_track or lower the batch size"
            )
        self.loader = DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )
        #: ``lr_schedule="cosine"`` steps this every optimiser step instead of the plateau rule
        self.step_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        if config.lr_schedule == "cosine":
            self.step_scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, functools.partial(cosine_factor, config.epochs * len(self.loader))
            )
        self.epoch = 0
        self.best_score: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []

    # -- state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "sepcli-train-checkpoint",
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step_scheduler": (
                self.step_scheduler.state_dict() if self.step_scheduler is not None else None
            ),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema_model.state_dict() if self.ema_model is not None else None,
            "ema_updates": self.ema_updates,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        saved = state.get("config", {})
        now = self.config.to_dict()
        keys = RESUME_KEYS + (("epochs",) if self.step_scheduler is not None else ())
        changed = [k for k in keys if k in saved and _norm(saved[k]) != _norm(now[k])]
        if changed:
            raise TrainingError(
                f"{where}: cannot resume with changed settings: {', '.join(changed)}"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.step_scheduler is not None:
                self.step_scheduler.load_state_dict(state["step_scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if self.ema_model is not None:
                self.ema_model.load_state_dict(state["ema"])
                self.ema_updates = int(state["ema_updates"])
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise TrainingError(f"{where}: does not fit this model ({first})") from None
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.best_score = state["best_score"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = json.loads(state["history"])

    def resume(self, path: str | os.PathLike[str] | None = None) -> None:
        """Continue from ``path`` (default ``RUN_DIR/checkpoint.pt``)."""
        path = Path(path) if path else self.run_dir / CHECKPOINT
        self.load_state_dict(load_checkpoint(path, map_location=self.device), where=str(path))

    # -- training -------------------------------------------------------------
    def train_step(self, mixture: torch.Tensor, targets: torch.Tensor) -> float:
        """One optimiser step on a batch ``(B, C, T)``, ``(B, S, C, T)``; returns the loss."""
        mixture = mixture.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.use_amp):
            out = self.net(mixture)
        loss = self.loss_fn(out.float() if not out.is_complex() else out, targets, mixture)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"{self.run_dir}: the loss became {loss.item()} at epoch {self.epoch + 1}; "
                "lower --lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.step_scheduler is not None:
            self.step_scheduler.step()
        self._update_ema()
        return float(loss.detach().item())

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        # the decay ramps up as (1 + n) / (10 + n) (TensorFlow's ExponentialMovingAverage
        # with num_updates), so the random initial weights fade out within ~10 / (1 - decay)
        # steps instead of dominating the average for thousands
        self.ema_updates += 1
        n = self.ema_updates
        weight = 1.0 - min(self.config.ema, (1.0 + n) / (10.0 + n))
        for avg, live in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            avg.lerp_(live.detach(), weight)

    @property
    def scored_model(self) -> nn.Module:
        """The weights that are validated and exported: the average when ``ema`` is on."""
        return self.ema_model if self.ema_model is not None else self.model

    def train_epoch(self, epoch: int) -> float:
        self.sampler.set_epoch(epoch)
        self.net.train()
        total, count = 0.0, 0
        steps = len(self.loader)
        item = f"epoch {epoch}"
        self.progress(Progress("train", 0, steps, "steps", item, {"epoch": epoch}))
        for step, (mixture, targets) in enumerate(self.loader, 1):
            loss = self.train_step(mixture, targets)
            total += loss
            count += 1
            info = {"epoch": epoch, "loss": loss}
            self.progress(Progress("train", step, steps, "steps", item, info))
        distributed.sync_buffers(self.dist, self.model)
        if self.ema_model is not None:  # after the sync: every rank holds the same statistics
            with torch.no_grad():
                for avg, live in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
                    avg.copy_(live)
        return distributed.all_mean(self.dist, total / max(count, 1), self.device)

    def _validate(self) -> dict[str, float]:
        scores: dict[str, float] | None = None
        if self.dist.is_main:
            scores = validate(
                self.scored_model,
                self.metadata,
                self.valid_tracks,
                self.metadata.sources,
                segment=self.config.valid_segment or None,
                metric=self.metric,
                device=self.device,
            )
        return distributed.broadcast(self.dist, scores)

    def _improved(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def fit(self) -> dict[str, Any]:
        """Train until ``config.epochs`` or early stopping; returns the last log record."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = self.history[-1] if self.history else {}
        while self.epoch < self.config.epochs:
            if self._out_of_time():
                break
            epoch = self.epoch + 1
            start = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            valid: dict[str, float] | None = None
            score: float | None = None
            if self.validating and (
                epoch % self.config.valid_every == 0
                or epoch == self.config.epochs
                or self._out_of_time(time.perf_counter() - start)  # the last epoch is scored
            ):
                tracks = len(self.valid_tracks)
                self.progress(
                    Progress("validate", 0, tracks, "tracks", f"epoch {epoch}", {"epoch": epoch})
                )
                valid = self._validate()
                finite = [v for v in valid.values() if math.isfinite(v)]
                score = sum(finite) / len(finite) if finite else math.nan
            elif not self.validating:
                score = train_loss
            improved = score is not None and self._improved(score)
            if self.step_scheduler is None and score is not None and math.isfinite(score):
                self.scheduler.step(score)
            self.epoch = epoch
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            elif score is not None:
                self.bad_epochs += self.config.valid_every if self.validating else 1
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "loss": self.loss_name,
                "lr": self.optimizer.param_groups[0]["lr"],
                "valid": valid,
                "score": score,
                "best_epoch": self.best_epoch,
                "best_score": self.best_score,
                "seconds": round(time.perf_counter() - start, 3),
            }
            record["elapsed"] = round(self.elapsed() + record["seconds"], 3)
            self.history.append(record)
            if self.dist.is_main:
                if improved:
                    save_checkpoint(
                        {
                            "model": self.scored_model.state_dict(),
                            "epoch": epoch,
                            "valid": valid,
                            "score": score,
                            "train_loss": train_loss,
                        },
                        self.run_dir / BEST,
                    )
                save_checkpoint(self.state_dict(), self.run_dir / CHECKPOINT)
                _write_log(self.history, self.run_dir / LOG)
                write_curves(self.history, self.run_dir / CURVES)
            distributed.barrier(self.dist)
            self.progress(Progress("epoch", epoch, self.config.epochs, "epochs", "", record))
            if self.config.patience and self.bad_epochs >= self.config.patience:
                logger.info("early stopping at epoch %d (best epoch %d)", epoch, self.best_epoch)
                record = {**record, "early_stop": True}
                break
            if self._out_of_time():
                logger.info(
                    "time limit of %g min reached at epoch %d (best epoch %d)",
                    self.config.time_limit,
                    epoch,
                    self.best_epoch,
                )
                record = {**record, "time_limit": True}
                break
        return record

    def elapsed(self) -> float:
        """Seconds spent in finished epochs (training and validation), across resumes."""
        return float(sum(r.get("seconds", 0.0) for r in self.history))

    def _out_of_time(self, running: float = 0.0) -> bool:
        # ``time_limit`` (minutes) bounds the summed epoch time, so a resumed run
        # gets the same budget as one that ran straight through; rank 0 decides.
        # ``running``: seconds of the epoch in progress.
        if not self.config.time_limit:
            return False
        done = self.elapsed() + running >= self.config.time_limit * 60.0
        return bool(distributed.broadcast(self.dist, done))


def cosine_factor(total_steps: int, step: int) -> float:
    """Learning-rate factor after ``step`` of ``total_steps``: 1 at 0, 0 at the end."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def _write_log(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Rewrite ``log.jsonl`` from the history kept in the checkpoint (atomic), so
    the log and the checkpoint always agree, also after a crash and resume."""
    lines = (json.dumps(_finite(r), allow_nan=False) + "\n" for r in history)
    atomic.write_text(path, "".join(lines))


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _norm(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, sort_keys=True)
