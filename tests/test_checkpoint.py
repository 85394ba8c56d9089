"""Checkpoints: save → load bit-exact, reference-style state_dicts, clear errors, atomic writes, no unpickling."""

import pytest
import torch

import fastddpm
import fastddpm.io.checkpoint as ckpt
from fastddpm import DiffusionConfig, GaussianDiffusion, Unet, UnetConfig
from fastddpm.io.checkpoint import CheckpointError, load, load_checkpoint, read_checkpoint, save

CFG = dict(dim=8, channels=1, dim_mults=(1, 2))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Unet(**CFG)


def test_save_load_bit_exact(tmp_path, model):
    diffusion = GaussianDiffusion(37, "cosine")
    save(tmp_path / "m.safetensors", model, diffusion, image_size=8, extra={"note": "test"})
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.image_size == 8 and loaded.meta["training"] == {"note": "test"}
    assert loaded.model.config == model.config
    assert loaded.diffusion.config == diffusion.config
    reference = model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    for table in GaussianDiffusion.TABLES:
        assert torch.equal(getattr(loaded.diffusion, table), getattr(diffusion, table))
    assert fastddpm.load is load  # exported at the top level
    m2, d2 = fastddpm.load(tmp_path / "m.safetensors")
    assert not m2.training and d2.num_timesteps == 37


def test_loaded_model_is_the_saved_model_and_owns_its_weights(tmp_path, model):
    """The loader builds the Unet on the meta device and assigns the file's tensors: nothing may stay on meta,
    the forward pass must equal the saved model's, and the weights must be the model's own (no aliasing of
    the caller's tensors; trainable)."""
    save(tmp_path / "m.safetensors", model, GaussianDiffusion(10), image_size=8)
    loaded, _ = load(tmp_path / "m.safetensors")
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 4, 9])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model.eval()(x, t))
    assert all(p.requires_grad for p in loaded.parameters())
    # Tensors handed to the builder are copied, not adopted: changing the model leaves the caller's tensors.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    built = ckpt._build_and_fill(tmp_path / "m.safetensors", UnetConfig(**CFG), state)
    with torch.no_grad():
        for p in built.parameters():
            p.fill_(float("nan"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_reference_style_state_dict_file(tmp_path, model):
    torch.save(model.state_dict(), tmp_path / "reference.pt")
    loaded, diffusion = load(tmp_path / "reference.pt", model_config=UnetConfig(**CFG))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert diffusion.config == DiffusionConfig()  # the reference's T=200 linear unless told otherwise
    _, diffusion = load(tmp_path / "reference.pt", model_config=CFG, diffusion_config=DiffusionConfig(50, "sigmoid"))
    assert diffusion.num_timesteps == 50
    with pytest.raises(CheckpointError, match=r"reference.pt: a plain state_dict file carries no config"):
        load(tmp_path / "reference.pt")


def test_pickled_object_is_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"init_conv.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: cannot be read as a weights-only state_dict"):
        load(tmp_path / "evil.pt", model_config=CFG)


def test_mismatches_name_file_and_key(tmp_path, model):
    state = model.state_dict()
    state["init_conv.weight"] = torch.zeros(3, 1, 7, 7)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"shape.pt: key 'init_conv.weight' has shape \(3, 1, 7, 7\).*expects \(4, 1, 7, 7\)"):
        load(tmp_path / "shape.pt", model_config=CFG)
    state = model.state_dict()
    del state["final_conv.1.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(CheckpointError, match=r"keys.pt: .*missing key 'final_conv.1.bias'; unexpected key 'extra.weight'"):
        load(tmp_path / "keys.pt", model_config=CFG)


def test_corrupt_and_foreign_files(tmp_path, model):
    save(tmp_path / "good.safetensors", model, GaussianDiffusion(10))
    raw = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors: not a readable safetensors file"):
        load(tmp_path / "truncated.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load(tmp_path / "garbage.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="foreign.safetensors: safetensors file without fastddpm metadata"):
        load(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="missing.safetensors: no such checkpoint file"):
        load(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"good.safetensors: key .init_conv.weight. has shape \(4, 1, 7, 7\).*expects \(4, 3, 7, 7\)"):
        load(tmp_path / "good.safetensors", model_config=UnetConfig(dim=8, channels=3, dim_mults=(1, 2)))


def test_crash_during_save_keeps_last_good_checkpoint(tmp_path, model, monkeypatch):
    path = tmp_path / "m.safetensors"
    save(path, model, GaussianDiffusion(10))
    before = path.read_bytes()

    def crashing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkp")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crashing_save_file)  # the writer checkpoints use
    with pytest.raises(OSError, match="disk full"):
        save(path, Unet(**CFG), GaussianDiffusion(10))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_bundled_model_loads():
    if not ckpt.bundled_model_path().is_file():
        pytest.fail(f"the bundled model is missing: {ckpt.bundled_model_path()}")
    tensors, meta = read_checkpoint(ckpt.bundled_model_path())
    model, diffusion = load()
    assert model.config.channels == 1 and meta["image_size"] == 16
    assert ckpt.bundled_model_path().stat().st_size <= 8 * 1024 * 1024


def test_model_identity_read_without_building_matches_the_loaded_model(tmp_path, model):
    """read_model_identity hashes the file's tensors; it must agree with model_sha256 of the loaded model, for
    the bundled file and for a half-precision file (loaded as float32)."""
    from fastddpm.fit.solver import model_sha256

    bundled, diffusion = load()
    assert ckpt.read_model_identity() == (model_sha256(bundled), diffusion.config)
    half = {f"model.{k}": v.half() for k, v in model.state_dict().items()}
    meta = {"kind": "model", "model": model.config.to_dict(), "diffusion": GaussianDiffusion(9).config.to_dict()}
    ckpt.write_checkpoint(tmp_path / "half.safetensors", half, meta)
    loaded, _ = load(tmp_path / "half.safetensors")
    assert ckpt.read_model_identity(tmp_path / "half.safetensors")[0] == model_sha256(loaded)
    assert model_sha256(loaded) != model_sha256(model)  # the rounding to half is seen
    # Under a float64 default dtype the Unet holds float64 weights; the identity must follow it.
    torch.set_default_dtype(torch.float64)
    try:
        bundled64, _ = load()
        assert next(bundled64.parameters()).dtype == torch.float64
        assert ckpt.read_model_identity()[0] == model_sha256(bundled64)
    finally:
        torch.set_default_dtype(torch.float32)


def test_channels_last_state_dict_loads_into_contiguous_weights(tmp_path, model):
    """A state_dict saved in channels-last memory format gives the same contiguous parameters as before the
    loader adopted tensors (assign=True keeps strides unless it is told otherwise)."""
    state = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v
             for k, v in model.state_dict().items()}
    assert any(not v.is_contiguous() for v in state.values())
    torch.save(state, tmp_path / "cl.pt")
    loaded, _ = load(tmp_path / "cl.pt", model_config=CFG)
    assert all(p.is_contiguous() for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_written_files_get_ordinary_permissions(tmp_path, model):
    import os

    umask = os.umask(0o022)
    try:
        save(tmp_path / "m.safetensors", model, GaussianDiffusion(10))
    finally:
        os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
