"""Training: Adam on the ε-prediction loss, an EMA of the weights for sampling, exact resume.

All randomness (batch order, timesteps, noise) comes from torch's global generator seeded by
``TrainConfig.seed``; its state is saved in every checkpoint, so a resumed run continues exactly as an
uninterrupted one would. Sample grids are drawn under ``torch.random.fork_rng`` so they do not disturb
the training stream.

Under torch.distributed (``torchrun``; gloo on CPU), every process draws the same global batch, timesteps
and noise from the same generator and computes the loss on its own contiguous slice of the batch;
DistributedDataParallel averages the gradients, which for equal slices is the gradient of the global
batch's mean loss — the single-process step. The random state stays the same in every process, so a
checkpoint (written by rank 0) resumes at any world size.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import FrozenConfig
from ..io.checkpoint import (EMA_PREFIX, MAX_IMAGE_SIZE, MODEL_PREFIX, CheckpointError, check_diffusion_limits,
                             check_weights_fit, model_weights, read_checkpoint, write_checkpoint)
from ..io.files import save_image_grid
from ..io.shards import rank_and_world
from ..reference.diffusion import LOSS_TYPES, DiffusionConfig, GaussianDiffusion
from ..reference.unet import Unet, UnetConfig
from .data import load_dataset

__all__ = ["TrainConfig", "Trainer", "train", "read_train_config", "NonFiniteLossError", "check_image_size",
           "LR_SCHEDULES"]

CHECKPOINT_NAME = "checkpoint.safetensors"  # full training state, for --resume
MODEL_NAME = "model.safetensors"  # EMA weights + configs, for sampling


class NonFiniteLossError(ValueError):
    """The training loss (or the weights) turned NaN or inf; the run stops without saving, so the
    checkpoints on disk are the last ones written from finite weights."""


MAX_GRID_SIZE = 1024  # the most samples a training grid may hold
# Adam's first step size is lr / (1 - beta1) = 10·lr, and torch converts it to float32: past this it
# raises "value cannot be converted to type float without overflow" in the middle of the first step.
MAX_LEARNING_RATE = float(torch.finfo(torch.float32).max) / 10
LR_SCHEDULES = ("constant", "cosine")


def check_image_size(image_size: int, dim_mults) -> None:
    """The training resolution: at most MAX_IMAGE_SIZE (the data is resized to it) and divisible by the
    U-Net's 2**(len(dim_mults)-1)."""
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be at most {MAX_IMAGE_SIZE}, got {image_size}")
    divisor = 2 ** (len(dim_mults) - 1)
    if image_size % divisor:
        raise ValueError(f"image size {image_size} is not divisible by {divisor} (2**(len(dim_mults)-1) for "
                         f"dim_mults={tuple(dim_mults)})")


@dataclasses.dataclass(frozen=True)
class TrainConfig(FrozenConfig):
    """Everything a training run is built from; frozen, with a JSON round-trip (stored in checkpoints)."""

    data: str
    image_size: int = 28
    channels: int = 1
    model: UnetConfig | None = None  # default: Unet(dim=28, channels, dim_mults=(1, 2, 4))
    diffusion: DiffusionConfig = DiffusionConfig()
    loss: str = "huber"  # the reference's training loss
    lr: float = 1e-3  # the reference's Adam learning rate
    lr_schedule: str = "constant"  # the reference's; "cosine" decays lr toward 0 at `steps`
    warmup_steps: int = 0  # lr grows linearly from lr/warmup_steps to lr over the first warmup_steps
    # The model file the weights started from: train() and the CLI apply it; a Trainer records what
    # start_from() read (None: random initialisation).
    init: str | None = None
    batch_size: int = 64
    steps: int = 1000
    ema_decay: float = 0.999
    seed: int = 0
    sample_every: int = 0  # 0: never
    save_every: int = 500
    grid_size: int = 16

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", UnetConfig(dim=28, channels=self.channels, dim_mults=(1, 2, 4)))
        if self.loss not in LOSS_TYPES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {sorted(LOSS_TYPES)}")
        if self.model.channels != self.channels:
            raise ValueError(f"model channels={self.model.channels} but data channels={self.channels}")
        for name in ("image_size", "batch_size", "steps", "grid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # Ceilings for what a config read from a file may allocate: the data resized to image_size, and a
        # grid of grid_size samples.
        check_image_size(self.image_size, self.model.dim_mults)
        if self.grid_size > MAX_GRID_SIZE:
            raise ValueError(f"grid_size must be at most {MAX_GRID_SIZE}, got {self.grid_size}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LEARNING_RATE):
            raise ValueError(f"lr must be a positive number at most {MAX_LEARNING_RATE:.3g}, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; expected one of {list(LR_SCHEDULES)}")
        if type(self.warmup_steps) is not int or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")

    def check_new_run(self) -> None:
        """What a run started from step 0 needs beyond the fields' own checks: a cosine schedule must have
        steps after its warm-up (else it would never decay). Not checked on resume, where ``steps`` may be
        raised later and the rates up to ``steps`` do not depend on it."""
        if self.lr_schedule == "cosine" and self.warmup_steps >= self.steps:
            raise ValueError(f"a cosine schedule needs steps after the warm-up: warmup_steps={self.warmup_steps} "
                             f"but steps={self.steps}")

    def lr_at(self, step: int) -> float:
        """The learning rate of optimisation step ``step`` (1-based: the step being taken).

        A function of the step alone, so a resumed run takes the same rates as an uninterrupted one; a resume
        that raises ``steps`` stretches the rest of a cosine schedule to the new end."""
        factor = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_schedule == "cosine":
            # Decays over the steps after the warm-up; step `steps` itself still gets a small positive rate.
            span = max(1, self.steps - self.warmup_steps)
            progress = min(1.0, max(0, step - 1 - self.warmup_steps) / span)
            factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * factor


class Trainer:
    """Holds the model, its EMA, the optimizer, the data order and the step; ``run`` trains to ``steps``."""

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike, *, data: torch.Tensor | None = None,
                 device: torch.device | str = "cpu"):
        self.config = config
        # The device runs the model; the data, the batch order and every random draw stay on the CPU
        # generator, so a run is the same random stream on any device and any number of processes.
        self.device = torch.device(device)
        self.out_dir = Path(out_dir)
        self.data = data if data is not None else load_dataset(config.data, config.image_size, config.channels)
        torch.manual_seed(config.seed)
        self.model = Unet.from_config(config.model).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        # Tables on the model's device (the gathers are exact: the same values on any device).
        self.diffusion = GaussianDiffusion.from_config(config.diffusion, device=self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.step = 0
        self.batch = min(config.batch_size, self.data.shape[0])
        self.perm = torch.randperm(self.data.shape[0])
        self.pos = 0
        self.recent_losses: list[float] = []
        self.rank, self.world_size = rank_and_world()
        self.ddp = None
        self._interrupted, self._stop_votes = False, 0  # Ctrl-C, and how many processes saw one (DDP)
        self.saved_step: int | None = None  # the step of the last checkpoint this trainer wrote
        if self.world_size > 1:
            if self.batch % self.world_size:
                raise ValueError(f"batch size {self.batch} does not split evenly over {self.world_size} processes")
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def start_from(self, path: str | os.PathLike) -> None:
        """Start the weights (and their EMA) from a model file's ``model.*`` tensors — the EMA weights of a
        ``model.safetensors``, the raw ones of a ``checkpoint.safetensors``: fine-tuning. Call before the first
        step; the file must hold exactly this run's model (names and shapes are checked)."""
        path = Path(path)
        if self.step:
            raise ValueError(f"start_from({path}) after {self.step} steps: call it before training")
        tensors, _ = read_checkpoint(path)
        weights = model_weights(tensors)
        check_weights_fit(path, self.config.model, weights)
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(weights[name])
        self.ema.load_state_dict(self.model.state_dict())
        self.config = dataclasses.replace(self.config, init=str(path))  # recorded in every checkpoint

    # -- one optimisation step ---------------------------------------------------------------------
    def _next_batch(self) -> torch.Tensor:
        if self.pos + self.batch > self.perm.numel():  # a new epoch: reshuffle, drop the ragged tail
            self.perm = torch.randperm(self.data.shape[0])
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return self.data[idx]

    def train_step(self) -> float:
        self.model.train()
        x0 = self._next_batch()
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],)).long()
        # The draw p_losses would make itself on the CPU (randn_like), for the whole batch.
        noise = torch.randn_like(x0)
        model, part = self.model, slice(None)
        if self.ddp is not None:  # this process's slice of the global batch
            share = x0.shape[0] // self.world_size
            model, part = self.ddp, slice(self.rank * share, (self.rank + 1) * share)
        on = functools.partial(torch.Tensor.to, device=self.device)
        loss = self.diffusion.p_losses(model, on(x0[part]), on(t[part]), noise=on(noise[part]), loss_type=self.config.loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step + 1)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        if self.ddp is not None:  # the global batch's loss, and whether any process was interrupted
            packed = torch.stack([loss.detach().float().reshape(()),
                                  torch.tensor(float(self._interrupted), device=loss.device)])
            dist.all_reduce(packed)
            self._stop_votes = int(packed[1].item())
            loss = packed[0] / self.world_size
        value = loss.item()
        if not math.isfinite(value):  # the global loss under DDP: every process stops at the same step
            raise NonFiniteLossError(
                f"the training loss is {value} at step {self.step}; stopped without saving (the last checkpoint "
                f"in {self.out_dir} holds the last finite weights, if one was written)")
        self.recent_losses = (self.recent_losses + [value])[-100:]
        return value

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up: the decay grows with the step so early weights are not frozen in (Tarvainen & Valpola).
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters()):
            ema_p.lerp_(p, 1.0 - decay)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, *, progress: bool = True, on_step: Callable[["Trainer", float], None] | None = None) -> None:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._on_rank_0(self._remove_stale_temporaries)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="training", disable=not progress or self.rank != 0,
                   dynamic_ncols=True)
        running = None
        # Ctrl-C only raises a flag; the loop stops at the next step boundary (a checkpoint written from
        # the middle of a step would hold the next batch's random state with the previous weights), and
        # under DDP every process learns of it through the step's loss all-reduce and stops at the same step.
        self._interrupted = False
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while self.step < cfg.steps:
                loss = self.train_step()
                if self._stop_requested():
                    self.save()
                    raise KeyboardInterrupt
                running = loss if running is None else 0.98 * running + 0.02 * loss
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}")
                if on_step is not None:
                    on_step(self, loss)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self._check_finite_weights()  # a grid from non-finite weights would be black, not an error
                    self._on_rank_0(lambda: self.save_grid(self.out_dir / f"samples-{self.step:06d}.png"))
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.save()

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupted:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self._interrupted = True

    def _stop_requested(self) -> bool:
        return self._stop_votes > 0 if self.ddp is not None else self._interrupted

    @torch.no_grad()
    def save_grid(self, path: Path) -> None:
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.config.seed)
            images = self.diffusion.sample(
                self.ema,
                image_size=self.config.image_size,
                batch_size=self.config.grid_size,
                channels=self.config.channels,
                return_all_timesteps=False,
                progress=False,
            )
        save_image_grid(images, path, scale=max(1, 64 // self.config.image_size))

    # -- checkpoints -------------------------------------------------------------------------------
    def final_loss(self) -> float | None:
        return sum(self.recent_losses) / len(self.recent_losses) if self.recent_losses else None

    def save(self) -> None:
        """Write the EMA model file, then the training checkpoint, each atomically (rank 0 only: every
        process holds the same state). Weights that are not finite are never written: the update of the
        last step can overflow while its loss, computed before it, was finite."""
        self._check_finite_weights()
        self._on_rank_0(self._write)
        self.saved_step = self.step

    def _check_finite_weights(self) -> None:
        bad = [name for name, module in (("model", self.model), ("EMA", self.ema))
               if not all(torch.isfinite(p).all() for p in module.parameters())]
        if bad:  # every process holds the same weights, so every process raises here
            raise NonFiniteLossError(
                f"the {' and '.join(bad)} weights are not finite at step {self.step}; stopped without saving (the "
                f"last checkpoint in {self.out_dir} holds the last finite weights, if one was written)")

    def _on_rank_0(self, write: Callable[[], None]) -> None:
        """Run a write on rank 0 only; whatever it raises, every process learns of it (a failure on rank 0
        alone would leave the others waiting at the next collective): rank 0 re-raises its own error, the
        others an OSError (for an OSError) or RuntimeError naming it."""
        failure, error = None, None
        if self.rank == 0:
            try:
                write()
            except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt too: shared, then re-raised)
                error, failure = exc, (isinstance(exc, OSError), f"rank 0: {type(exc).__name__}: {exc}")
        if self.world_size > 1:
            shared = [failure]
            # The device the objects travel through: this process's GPU under NCCL (not GPU 0 for all).
            dist.broadcast_object_list(shared, src=0, device=self.device if self.device.type == "cuda" else None)
            failure = shared[0]
        if error is not None:
            raise error
        if failure is not None:
            is_os_error, message = failure
            raise (OSError if is_os_error else RuntimeError)(message)

    def _remove_stale_temporaries(self) -> None:
        """A killed run's temporary files (atomic writes name them ".<file>.<random>.tmp")."""
        for stale in self.out_dir.glob(".*.tmp"):
            if stale.name.startswith((f".{CHECKPOINT_NAME}.", f".{MODEL_NAME}.", ".samples-")) and stale.is_file():
                stale.unlink(missing_ok=True)

    def _write(self) -> None:
        meta = self._meta()
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"{MODEL_PREFIX}{k}": v.cpu() for k, v in self.model.state_dict().items()})
        tensors.update({f"{EMA_PREFIX}{k}": v.cpu() for k, v in self.ema.state_dict().items()})
        for i, p in enumerate(self.model.parameters()):
            for name, value in self.optimizer.state.get(p, {}).items():
                tensors[f"optim.{i}.{name}"] = torch.as_tensor(value).cpu()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["data.perm"] = self.perm
        # The model file first: a kill between the two writes leaves it ahead of the checkpoint (resuming
        # retrains the same steps bit for bit and rewrites it), never behind the run it belongs to.
        write_checkpoint(self.out_dir / MODEL_NAME, {f"{MODEL_PREFIX}{k}": v.cpu() for k, v in self.ema.state_dict().items()},
                         {**meta, "kind": "model"})
        write_checkpoint(self.out_dir / CHECKPOINT_NAME, tensors, {**meta, "kind": "training"})

    def _meta(self) -> dict[str, Any]:
        return {
            "model": self.config.model.to_dict(),
            "diffusion": self.config.diffusion.to_dict(),
            "image_size": self.config.image_size,
            "training": {
                "config": self.config.to_dict(),
                "step": self.step,
                "pos": self.pos,
                "final_loss": self.final_loss(),
                "recent_losses": self.recent_losses,
                "world_size": self.world_size,
                "torch_version": torch.__version__,
            },
        }

    @classmethod
    def resume(
        cls, checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, steps: int | None = None,
        data: torch.Tensor | None = None, device: torch.device | str = "cpu",
    ) -> "Trainer":
        """Rebuild a trainer from a training checkpoint; ``steps`` raises the target step count."""
        path = Path(checkpoint)
        tensors, meta = read_checkpoint(path)
        config = _training_config(path, meta)
        training = meta["training"]
        if steps is not None:
            config = dataclasses.replace(config, steps=steps)
        model_sd = model_weights(tensors)
        ema_sd = model_weights(tensors, EMA_PREFIX)
        # Everything the file claims is checked before the trainer allocates the model its config describes.
        check_weights_fit(path, config.model, model_sd)
        check_weights_fit(path, config.model, ema_sd)
        step, pos = _state_int(path, training, "step"), _state_int(path, training, "pos")
        for name in ("rng.torch", "data.perm"):
            if name not in tensors:
                raise CheckpointError(f"{path}: no {name!r} tensor: not a complete training checkpoint")
        rng_state = tensors["rng.torch"]
        if rng_state.dtype != torch.uint8 or rng_state.shape != torch.get_rng_state().shape:
            raise CheckpointError(f"{path}: 'rng.torch' is {rng_state.dtype} {tuple(rng_state.shape)}; expected the "
                                  f"torch generator state, uint8 {tuple(torch.get_rng_state().shape)}")
        trainer = cls(config, out_dir if out_dir is not None else path.parent, data=data, device=device)
        try:
            trainer.model.load_state_dict(model_sd, strict=True)
            trainer.ema.load_state_dict(ema_sd, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the recorded config ({str(exc).splitlines()[0]})") from None
        trainer.optimizer.load_state_dict({"state": _optimizer_state(path, tensors, list(trainer.model.parameters())),
                                           "param_groups": trainer.optimizer.state_dict()["param_groups"]})
        trainer.step, trainer.pos = step, pos
        trainer.perm = _data_order(path, tensors["data.perm"], trainer.data.shape[0])
        if pos > trainer.perm.numel():
            raise CheckpointError(f"{path}: training pos {pos} is past the {trainer.perm.numel()} images of the run")
        trainer.recent_losses = _recent_losses(path, training.get("recent_losses"))
        torch.set_rng_state(rng_state)
        return trainer


# Adam's state per parameter: two moments shaped like the parameter, and a scalar step count.
_ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")


def _optimizer_state(path: Path, tensors: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[int, dict]:
    """The ``optim.<index>.<name>`` tensors as Adam's state, each checked against the parameter it belongs to
    (a wrong shape would only fail at the first step, with a traceback)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, index, name = (key.split(".", 2) + ["", ""])[:3]
        if not index.isdigit() or int(index) >= len(params) or name not in _ADAM_STATE:
            raise CheckpointError(f"{path}: unexpected optimizer tensor {key!r} (expected optim.<parameter index "
                                  f"below {len(params)}>.<{'|'.join(_ADAM_STATE)}>)")
        expected = () if name == "step" else tuple(params[int(index)].shape)
        if tuple(value.shape) != expected or not value.is_floating_point():
            raise CheckpointError(f"{path}: optimizer tensor {key!r} is {value.dtype} {tuple(value.shape)}; expected "
                                  f"a float tensor of shape {expected}")
        state.setdefault(int(index), {})[name] = value
    for index, entry in state.items():
        if set(entry) != set(_ADAM_STATE):
            raise CheckpointError(f"{path}: optimizer state of parameter {index} holds {sorted(entry)}; expected "
                                  f"{sorted(_ADAM_STATE)}")
    return state


def _data_order(path: Path, perm: torch.Tensor, num_images: int) -> torch.Tensor:
    """``data.perm``, checked to be a permutation of the data's indices (it indexes the data at every step)."""
    if perm.numel() != num_images:
        raise CheckpointError(f"{path}: the run trained on {perm.numel()} images but the data now has {num_images}")
    if perm.ndim != 1 or perm.is_floating_point() or perm.is_complex() or perm.dtype == torch.bool:
        raise CheckpointError(f"{path}: 'data.perm' is {perm.dtype} {tuple(perm.shape)}; expected integer indices")
    perm = perm.long()
    if not torch.equal(torch.sort(perm).values, torch.arange(num_images)):
        raise CheckpointError(f"{path}: 'data.perm' is not a permutation of the {num_images} image indices")
    return perm


def _recent_losses(path: Path, values: Any) -> list[float]:
    if values is None:
        return []
    if not isinstance(values, list) or len(values) > 100 or \
            not all(type(v) in (int, float) and math.isfinite(v) for v in values):
        raise CheckpointError(f"{path}: training recent_losses must be a list of at most 100 finite numbers")
    return [float(v) for v in values]


def _state_int(path: Path, training: dict[str, Any], name: str) -> int:
    value = training.get(name)
    if type(value) is not int or value < 0:
        raise CheckpointError(f"{path}: training {name} must be a non-negative integer, got {value!r}")
    return value


def read_train_config(checkpoint: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` recorded in a training checkpoint (CheckpointError if it has none)."""
    path = Path(checkpoint)
    _, meta = read_checkpoint(path)
    return _training_config(path, meta)


def _training_config(path: Path, meta: dict[str, Any]) -> TrainConfig:
    if meta.get("kind") != "training":
        raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint has no training state; resume from {CHECKPOINT_NAME}")
    try:
        config = TrainConfig.from_dict(meta["training"]["config"])
        check_diffusion_limits(config.diffusion)
        return config
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad training config ({exc})") from None


def train(config: TrainConfig, out_dir: str | os.PathLike, *, progress: bool = True) -> Trainer:
    """Train from scratch per ``config``, writing checkpoints, the EMA model and grids into ``out_dir``."""
    config.check_new_run()
    trainer = Trainer(config, out_dir)
    if config.init is not None:
        trainer.start_from(config.init)
    trainer.run(progress=progress)
    return trainer
