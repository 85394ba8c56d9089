"""``fastddpm train``: train the reference U-Net (under torchrun: data-parallel), or resume a run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from ..io.checkpoint import load_checkpoint, read_checkpoint_step
from ..reference.diffusion import BETA_SCHEDULES, LOSS_TYPES, DiffusionConfig
from ..reference.unet import UnetConfig, _check_config
from ..train.data import load_dataset
from ..train.trainer import (CHECKPOINT_NAME, LR_SCHEDULES, NonFiniteLossError, TrainConfig, Trainer,
                             check_image_size, read_train_config)
from .common import (CLIError, RunError, check_writable_folder, int_tuple, join_process_group, leave_process_group, non_negative_int, one_line,
                     positive_int, process_device, seed)

_TRAIN_DEFAULTS = dict(image_size=28, channels=1, dim=28, dim_mults=(1, 2, 4), block="convnext", resnet_groups=8,
                       timesteps=200, schedule="linear", loss="huber", lr=1e-3, lr_schedule="constant", warmup_steps=0,
                       batch_size=64, steps=1000,
                       ema_decay=0.999, seed=0, sample_every=0, save_every=500)


def register(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model on a folder, array, IDX file or the built-in digits",
        description="Train the reference U-Net on images and write checkpoints for sampling.\n\n"
        "Adam, EMA of the weights; writes checkpoint.safetensors (full state, for --resume),\n"
        "model.safetensors (EMA weights, for sampling) and sample grids into --out-dir.",
        epilog="example: fastddpm train --data digits --image-size 16 --steps 1000 --out-dir runs/train\n"
        "example: fastddpm sample --checkpoint runs/train/model.safetensors --out samples.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", help="folder of PNG/JPEG images, .npz/.npy array, *-idx3-ubyte[.gz] file, or 'digits'")
    parser.add_argument("--out-dir", help="output folder (default runs/train; when resuming, the checkpoint's folder)")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint.safetensors")
    parser.add_argument("--init", metavar="MODEL",
                        help="fine-tune: start the weights from a model file (its model and diffusion configs, "
                        "image size and channels are the run's; a fresh optimizer)")
    g = parser.add_argument_group("data and model (fixed by the checkpoint when resuming)")
    g.add_argument("--image-size", type=positive_int, help="train resolution (default 28)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="1 grayscale or 3 RGB (default 1)")
    g.add_argument("--dim", type=positive_int, help="U-Net base width (default 28)")
    g.add_argument("--dim-mults", type=int_tuple, help="width multipliers per resolution (default 1,2,4)")
    g.add_argument("--block", choices=("convnext", "resnet"), help="block type (default convnext)")
    g.add_argument("--resnet-groups", type=positive_int, help="GroupNorm groups of ResNet blocks (default 8)")
    g.add_argument("--timesteps", type=positive_int, help="diffusion steps T (default 200)")
    g.add_argument("--schedule", choices=tuple(BETA_SCHEDULES), help="beta schedule (default linear)")
    o = parser.add_argument_group("optimisation")
    o.add_argument("--loss", choices=tuple(LOSS_TYPES), help="loss (default huber, the reference's)")
    o.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    o.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant (the reference's, default) or cosine: decays toward 0 at the last step")
    o.add_argument("--warmup-steps", type=non_negative_int, help="linear learning-rate warm-up steps (default 0)")
    o.add_argument("--batch-size", type=positive_int, help="batch size (default 64)")
    length = o.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="total optimisation steps (default 1000)")
    length.add_argument("--epochs", type=positive_int, help="total epochs (converted to steps)")
    o.add_argument("--ema-decay", type=float, help="EMA decay of the sampling weights (default 0.999)")
    o.add_argument("--seed", type=seed, help="random seed (default 0)")
    o.add_argument("--sample-every", type=non_negative_int, help="write a sample grid every N steps (default 0: never)")
    o.add_argument("--save-every", type=non_negative_int, help="write checkpoints every N steps (default 500)")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the model (default cpu; under torchrun, cuda means each process's "
                        "LOCAL_RANK GPU and nccl)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> None:
    on = process_device(args.device)
    joined = join_process_group(on)  # under torchrun: gloo on CPU, nccl on CUDA
    try:
        _train(args, on)
    finally:
        if joined:
            leave_process_group()


def _epochs_to_steps(epochs: int, num_images: int, batch_size: int) -> int:
    """Full batches per epoch (the trainer drops the ragged tail), times epochs."""
    return epochs * max(1, num_images // min(batch_size, num_images))


def _resumed_trainer(args: argparse.Namespace, on: torch.device) -> Trainer:
    if args.init:
        raise CLIError("--init starts a new run; a resumed run continues from its checkpoint's weights")
    config = read_train_config(args.resume)
    recorded = {"image_size": config.image_size, "channels": config.channels, "dim": config.model.dim,
                "dim_mults": config.model.dim_mults, "block": "convnext" if config.model.use_convnext else "resnet",
                "resnet_groups": config.model.resnet_block_groups, "timesteps": config.diffusion.timesteps,
                "schedule": _schedule_name(config.diffusion.beta_schedule), "loss": config.loss, "lr": config.lr,
                "lr_schedule": config.lr_schedule, "warmup_steps": config.warmup_steps, "batch_size": config.batch_size, "ema_decay": config.ema_decay, "seed": config.seed}
    for name, value in recorded.items():
        given = getattr(args, name)
        if given is not None and given != value:
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"{flag} {given} does not match the checkpoint, which has {name}={value}")
    data = load_dataset(args.data or config.data, config.image_size, config.channels)
    steps = args.steps
    if args.epochs is not None:
        steps = _epochs_to_steps(args.epochs, data.shape[0], config.batch_size)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.resume).parent
    try:
        trainer = Trainer.resume(args.resume, out_dir, steps=steps, data=data, device=on)
    except ValueError as exc:  # e.g. a batch that does not split over the processes
        raise CLIError(one_line(exc)) from None
    schedule_overrides = {k: getattr(args, k) for k in ("sample_every", "save_every") if getattr(args, k) is not None}
    trainer.config = dataclasses.replace(trainer.config, **schedule_overrides)
    return trainer


def _new_trainer(args: argparse.Namespace, on: torch.device) -> Trainer:
    if not args.data:
        raise CLIError("--data is required (a folder, .npz/.npy, IDX file or 'digits') unless --resume is given")
    defaults, init = dict(_TRAIN_DEFAULTS), None
    if args.init:  # the run's model is the file's: its configs become the defaults, and a flag must agree
        init = load_checkpoint(args.init)
        defaults.update(_init_settings(args, init))
    opts = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in defaults.items()}
    try:  # the size the data is resized to, checked before the data is read
        check_image_size(opts["image_size"], opts["dim_mults"])
    except ValueError as exc:
        raise CLIError(one_line(exc)) from None
    data = load_dataset(args.data, opts["image_size"], opts["channels"])
    steps = opts["steps"]
    if args.epochs is not None:
        steps = _epochs_to_steps(args.epochs, data.shape[0], opts["batch_size"])
    try:
        if init is not None:  # every field of the file's configs, not only those the flags name
            model, diffusion = init.model.config, init.diffusion.config
        else:
            model = UnetConfig(dim=opts["dim"], channels=opts["channels"], dim_mults=opts["dim_mults"],
                               use_convnext=opts["block"] == "convnext", resnet_block_groups=opts["resnet_groups"])
            diffusion = DiffusionConfig(opts["timesteps"], opts["schedule"])
        _check_config(model)
        config = TrainConfig(
            data=str(args.data), image_size=opts["image_size"], channels=opts["channels"], model=model,
            diffusion=diffusion, loss=opts["loss"], lr=opts["lr"],
            lr_schedule=opts["lr_schedule"], warmup_steps=opts["warmup_steps"], batch_size=opts["batch_size"],
            steps=steps, ema_decay=opts["ema_decay"], seed=opts["seed"],
            sample_every=opts["sample_every"], save_every=opts["save_every"],
        )
        config.check_new_run()
        trainer = Trainer(config, args.out_dir or "runs/train", data=data, device=on)
        if args.init:
            trainer.start_from(args.init)
        return trainer
    except ValueError as exc:
        raise CLIError(one_line(exc)) from None


def _schedule_name(schedule) -> str:
    """A beta schedule as an error message names it (a config may hold the betas themselves)."""
    return schedule if isinstance(schedule, str) else "custom betas"


def _init_settings(args: argparse.Namespace, loaded) -> dict:
    """The model, diffusion and image settings of the ``--init`` file; a flag given with another value is refused."""
    model, diffusion = loaded.model.config, loaded.diffusion
    if model.out_dim not in (None, model.channels):  # e.g. a learned-variance model: not an ε-loss model
        raise CLIError(f"--init {args.init}: the model predicts {model.out_dim} channels for {model.channels}-channel "
                       "images; training fits an ε-prediction of the image's channels")
    recorded = {"channels": model.channels, "dim": model.dim, "dim_mults": tuple(model.dim_mults),
                "block": "convnext" if model.use_convnext else "resnet", "resnet_groups": model.resnet_block_groups,
                "timesteps": diffusion.num_timesteps,
                "schedule": _schedule_name(diffusion.config.beta_schedule)}
    if loaded.image_size is not None:
        recorded["image_size"] = loaded.image_size
    for name, value in recorded.items():
        given = getattr(args, name)
        if given is not None and given != value:
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"{flag} {given} does not match --init {args.init}, which has {name}={value}")
    return recorded


def _train(args: argparse.Namespace, on: torch.device) -> None:
    # Before the data is read or the model built: the folder the checkpoints go to.
    check_writable_folder(args.out_dir or (Path(args.resume).parent if args.resume else "runs/train"))
    trainer = _resumed_trainer(args, on) if args.resume else _new_trainer(args, on)
    if trainer.rank == 0:
        processes = f" in {trainer.world_size} processes" if trainer.world_size > 1 else ""
        print(f"training on {trainer.data.shape[0]} images {tuple(trainer.data.shape[1:])} for "
              f"{trainer.config.steps} steps (from step {trainer.step}){processes} into {trainer.out_dir}", file=sys.stderr)
    try:
        trainer.run(progress=not args.no_progress)
    except KeyboardInterrupt:  # one Ctrl-C: saved at the last complete step; a second: stopped at once
        if trainer.rank == 0:  # what the file on disk holds, read back (a second Ctrl-C can land mid-save)
            checkpoint = trainer.out_dir / CHECKPOINT_NAME
            saved = read_checkpoint_step(checkpoint)
            said = (f"saved {checkpoint}" if saved == trainer.step == trainer.saved_step else
                    f"not saved; {checkpoint} holds step {saved}" if saved is not None else
                    f"not saved; there is no readable training checkpoint in {trainer.out_dir}")
            print(f"interrupted at step {trainer.step}; {said}", file=sys.stderr)
        raise
    except OSError as exc:  # a checkpoint or grid that cannot be written
        raise CLIError(f"cannot write into {trainer.out_dir}: {exc}") from None
    except NonFiniteLossError as exc:  # nothing saved: the last checkpoint on disk is the last finite one
        raise RunError(one_line(exc)) from None
    loss = trainer.final_loss()
    if trainer.rank != 0:
        return
    print(f"done: step {trainer.step}, final loss {loss:.4f} (mean of the last {len(trainer.recent_losses)} steps); "
          f"model in {trainer.out_dir / 'model.safetensors'}")
