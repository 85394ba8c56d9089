"""Training: the reference's loss under a DDP-ready trainer with EMA, checkpoints and resume; data sets."""

from .trainer import TrainConfig, Trainer, read_train_config, train

__all__ = ["TrainConfig", "Trainer", "train", "read_train_config"]
