"""Training: the loss goes down, resume equals an uninterrupted run, configs round-trip."""

import dataclasses

import numpy as np
import pytest
import torch

from fastddpm import DiffusionConfig, UnetConfig
from fastddpm.io.checkpoint import CheckpointError, read_checkpoint
from fastddpm.train.trainer import TrainConfig, Trainer


def tiny_data(n=32, size=8):
    # Bars at random rows: structured enough for a tiny U-Net to learn in a few dozen steps.
    g = torch.Generator().manual_seed(0)
    images = -torch.ones(n, 1, size, size)
    rows = torch.randint(0, size, (n,), generator=g)
    images[torch.arange(n), 0, rows, :] = 1.0
    return images


def tiny_config(**overrides):
    base = dict(
        data="in-memory", image_size=8, channels=1, model=UnetConfig(dim=8, channels=1, dim_mults=(1, 2)),
        diffusion=DiffusionConfig(20, "cosine"), loss="l2", lr=2e-3, batch_size=8, steps=6, save_every=0,
        grid_size=4,
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_loss_goes_down(tmp_path):
    losses = []
    trainer = Trainer(tiny_config(steps=80), tmp_path, data=tiny_data())
    trainer.run(progress=False, on_step=lambda tr, loss: losses.append(loss))
    first, last = np.mean(losses[:15]), np.mean(losses[-15:])
    assert last < 0.7 * first, (first, last)
    assert (tmp_path / "checkpoint.safetensors").is_file() and (tmp_path / "model.safetensors").is_file()


def _state(trainer):
    state = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    state.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    for i, p in enumerate(trainer.model.parameters()):
        for name, value in trainer.optimizer.state[p].items():
            state[f"optim.{i}.{name}"] = torch.as_tensor(value)
    return state


def test_resume_equals_uninterrupted(tmp_path):
    data = tiny_data(n=20)  # 20 images, batch 8: the data order reshuffles mid-run (epochs of 2 batches)
    straight = Trainer(tiny_config(steps=7), tmp_path / "a", data=data)
    straight.run(progress=False)

    first = Trainer(tiny_config(steps=3), tmp_path / "b", data=data)
    first.run(progress=False)
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = Trainer.resume(tmp_path / "b" / "checkpoint.safetensors", steps=7, data=data)
    assert resumed.step == 3
    resumed.run(progress=False)

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sample_grids_and_model_file(tmp_path):
    trainer = Trainer(tiny_config(steps=4, sample_every=2), tmp_path, data=tiny_data())
    trainer.run(progress=False)
    assert sorted(p.name for p in tmp_path.glob("samples-*.png")) == ["samples-000002.png", "samples-000004.png"]
    tensors, meta = read_checkpoint(tmp_path / "model.safetensors")
    assert meta["kind"] == "model" and meta["training"]["step"] == 4
    for key, value in trainer.ema.state_dict().items():  # the model file holds the EMA weights
        assert torch.equal(tensors[f"model.{key}"], value)


def test_resume_from_model_file_refused(tmp_path):
    Trainer(tiny_config(steps=2), tmp_path, data=tiny_data()).run(progress=False)
    with pytest.raises(CheckpointError, match="model.safetensors: a 'model' checkpoint has no training state"):
        Trainer.resume(tmp_path / "model.safetensors", data=tiny_data())


def test_config_round_trip_and_validation():
    config = tiny_config(ema_decay=0.99)
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="not divisible by 2"):
        dataclasses.replace(config, image_size=9)
    with pytest.raises(ValueError, match="unknown loss"):
        dataclasses.replace(config, loss="l3")
    with pytest.raises(ValueError, match="model channels=1 but data channels=3"):
        dataclasses.replace(config, channels=3)


def test_cosine_schedule_is_taken_and_resumes_exactly(tmp_path):
    # The rate each Adam step used is read back from the optimizer: warm-up, then the closed-form cosine.
    config = tiny_config(steps=10, lr_schedule="cosine", warmup_steps=3)
    seen = []
    Trainer(config, tmp_path / "a", data=tiny_data()).run(
        progress=False, on_step=lambda tr, loss: seen.append(tr.optimizer.param_groups[0]["lr"]))
    lr, warm, total = config.lr, config.warmup_steps, config.steps
    expected = [lr * min(1.0, s / warm) * 0.5 * (1 + np.cos(np.pi * max(0, s - 1 - warm) / (total - warm)))
                for s in range(1, total + 1)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[warm - 1] == lr and 0 < seen[-1] < 0.1 * lr  # peak after the warm-up, near 0 at the end
    assert TrainConfig.from_json(config.to_json()) == config
    # The rate is a function of the step: a run stopped after 4 steps and resumed equals an uninterrupted one.
    straight = Trainer(config, tmp_path / "b", data=tiny_data())
    straight.run(progress=False)
    first = Trainer(config, tmp_path / "c", data=tiny_data())
    (tmp_path / "c").mkdir()
    for _ in range(4):
        first.train_step()
    first.save()
    resumed = Trainer.resume(tmp_path / "c" / "checkpoint.safetensors", data=tiny_data())
    resumed.run(progress=False)
    a, b = _state(straight), _state(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        dataclasses.replace(config, lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps must be a non-negative integer"):
        dataclasses.replace(config, warmup_steps=-1)
    with pytest.raises(ValueError, match="cosine schedule needs steps after the warm-up"):
        dataclasses.replace(config, warmup_steps=10).check_new_run()  # a resume may still raise steps later


def test_start_from_a_model_file(tmp_path):
    first = Trainer(tiny_config(steps=3), tmp_path / "a", data=tiny_data())
    first.run(progress=False)
    config = tiny_config(steps=2, seed=1)
    tuned = Trainer(config, tmp_path / "b", data=tiny_data())
    tuned.start_from(tmp_path / "a" / "model.safetensors")
    assert tuned.config.init == str(tmp_path / "a" / "model.safetensors")  # recorded in its checkpoints
    config = tuned.config
    for key, value in first.ema.state_dict().items():  # both copies start from the file's (EMA) weights
        assert torch.equal(tuned.model.state_dict()[key], value) and torch.equal(tuned.ema.state_dict()[key], value)
    tuned.run(progress=False)
    with pytest.raises(ValueError, match="before training"):
        tuned.start_from(config.init)
    other = Trainer(tiny_config(model=UnetConfig(dim=12, channels=1, dim_mults=(1, 2))), tmp_path / "c", data=tiny_data())
    with pytest.raises(CheckpointError, match=r"model\.safetensors: key '.*' has shape"):
        other.start_from(config.init)
