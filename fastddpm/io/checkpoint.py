"""Checkpoints: safetensors for the tensors, JSON config in the safetensors header. Nothing is unpickled.

One ``.safetensors`` file holds everything. Its header metadata key ``"fastddpm"`` is a JSON document::

    {"format": 1, "kind": "model" | "training", "model": UnetConfig, "diffusion": DiffusionConfig,
     "image_size": int, "training": {...}}

Tensor names: ``model.<param>`` for the weights used to sample (the EMA weights in a model file),
and in a training checkpoint also ``ema.<param>``, ``optim.<i>.exp_avg`` / ``optim.<i>.exp_avg_sq``,
and ``rng.torch`` / ``data.perm`` for an exact resume.

A plain reference-style ``state_dict`` (``.pt``/``.pth``, as annotated-diffusion's code saves it) loads
too, through ``torch.load(weights_only=True)``, when the caller names the model config. Every failure
is a :class:`CheckpointError` naming the file and what did not match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..reference.diffusion import DiffusionConfig, GaussianDiffusion
from ..reference.unet import Unet, UnetConfig
from .files import atomic_path

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "save",
    "load",
    "load_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "FORMAT_VERSION",
    "bundled_model_path",
    "model_weights",
    "weights_sha256",
    "read_model_identity",
]

FORMAT_VERSION = 1
METADATA_KEY = "fastddpm"
MODEL_PREFIX = "model."  # a checkpoint's model weights are its tensors named "model.<state_dict key>"
EMA_PREFIX = "ema."  # a training checkpoint's EMA weights, likewise
MAX_TIMESTEPS = 100_000  # the most diffusion steps a file's config may ask for (its tables are allocated)
MAX_IMAGE_SIZE = 8192  # the largest image side a file may record (a sample of it is allocated)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: the message names the file and the mismatch."""


@dataclasses.dataclass
class LoadedCheckpoint:
    model: Unet
    diffusion: GaussianDiffusion
    image_size: int | None  # the training resolution, when the checkpoint records it
    meta: dict[str, Any]


def bundled_model_path() -> Path:
    """The model shipped inside the package (trained on scikit-learn's digits; see the README)."""
    return Path(__file__).resolve().parent.parent / "data" / "digits16.safetensors"


def write_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``tensors`` and the JSON ``meta`` to ``path`` atomically (write a temporary file, then rename)."""
    payload = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header = {METADATA_KEY: json.dumps({"format": FORMAT_VERSION, **meta}, sort_keys=True)}
    with atomic_path(path) as tmp:
        try:
            save_file(payload, str(tmp), metadata=header)
        except SafetensorError as exc:  # e.g. a full disk: reported as the OSError it is
            raise OSError(f"cannot write {path}: {exc}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a fastddpm ``.safetensors`` checkpoint: (tensors on CPU, metadata)."""
    path = Path(path)
    check_readable(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    if METADATA_KEY not in header:
        raise CheckpointError(f"{path}: safetensors file without fastddpm metadata (header key {METADATA_KEY!r})")
    meta = decode_metadata(path, header[METADATA_KEY], FORMAT_VERSION, CheckpointError, "checkpoint")
    return tensors, meta


def check_readable(path: Path) -> None:
    """Open ``path`` for reading once, so that each failure gets its own words: safetensors reports a file
    it may not read as "No such file or directory", and ``Path.is_file`` raises PermissionError for a
    file in a folder this user may not search."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise CheckpointError(f"{path}: a folder, not a checkpoint file")
        if not stat.S_ISREG(mode):  # a FIFO would block the open below
            raise CheckpointError(f"{path}: not a regular file")
        with open(path, "rb"):
            pass
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({(exc.strerror or str(exc)).lower()})") from None


def read_checkpoint_step(path: str | os.PathLike) -> int | None:
    """The training step a checkpoint records (its header only, no tensor read), None when there is no
    readable training checkpoint at ``path``."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get(METADATA_KEY, "{}"))
        step = meta.get("training", {}).get("step")
    except (SafetensorError, OSError, ValueError, AttributeError, RecursionError):
        return None
    return step if type(step) is int else None


def decode_metadata(path, text: str, version: int, error: type[Exception], what: str) -> dict[str, Any]:
    """The JSON document a fastddpm file keeps in its metadata, checked to be of format ``version``."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: fastddpm metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{path}: fastddpm metadata is nested too deeply to read") from None
    if not isinstance(meta, dict) or meta.get("format") != version:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise error(f"{path}: {what} format {found!r}; this fastddpm reads format {version}")
    return meta


def save(
    path: str | os.PathLike,
    model: Unet,
    diffusion: GaussianDiffusion,
    *,
    image_size: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save ``model``'s weights and the model/diffusion configs to one ``.safetensors`` file, atomically."""
    if not isinstance(model, Unet):
        raise TypeError(f"fastddpm.save stores fastddpm.Unet models, got {type(model).__name__}")
    meta: dict[str, Any] = {
        "kind": "model",
        "model": model.config.to_dict(),
        "diffusion": diffusion.config.to_dict(),
        "image_size": image_size,
    }
    if extra:
        meta["training"] = dict(extra)
    write_checkpoint(path, {f"{MODEL_PREFIX}{k}": v for k, v in model.state_dict().items()}, meta)


def model_weights(tensors: Mapping[str, torch.Tensor], prefix: str = MODEL_PREFIX) -> dict[str, torch.Tensor]:
    """A checkpoint's model weights (its "model.*" tensors, or another ``prefix``'s) under the Unet's own names."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def weights_sha256(weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state_dict: names, dtypes, shapes and raw bytes, in name order (what identifies a model's
    weights to a fitted solver and to the bundled model's default)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(weights.items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, any dtype
    return digest.hexdigest()


def read_model_identity(path: str | os.PathLike | None = None, *,
                        dtype: torch.dtype | None = None) -> tuple[str, DiffusionConfig]:
    """(sha256 of a checkpoint's model weights, its diffusion config), read without building the model: the
    sha256 is :func:`weights_sha256` of what :func:`load` would give the model (weights in ``dtype``, by
    default torch's default dtype, as the Unet holds them; ~0.05 s against ~0.2 s for a load of the bundled
    model, measured on the Zen 3 machine)."""
    path = Path(path) if path is not None else bundled_model_path()
    dtype = dtype or torch.get_default_dtype()
    tensors, meta = read_checkpoint(path)
    weights = {k: v.to(dtype) for k, v in model_weights(tensors).items()}
    return weights_sha256(weights), _as_diffusion_config(path, meta.get("diffusion"))


def load(
    path: str | os.PathLike | None = None,
    *,
    device: torch.device | str = "cpu",
    model_config: UnetConfig | Mapping[str, Any] | None = None,
    diffusion_config: DiffusionConfig | Mapping[str, Any] | None = None,
) -> tuple[Unet, GaussianDiffusion]:
    """Load ``(model, diffusion)`` from a fastddpm checkpoint (the bundled model when ``path`` is None).

    A ``.pt``/``.pth`` file is read as a plain reference-style ``state_dict`` with
    ``torch.load(weights_only=True)`` and needs ``model_config``; its diffusion defaults to the reference's
    (T=200, linear) unless ``diffusion_config`` says otherwise. The model is returned in eval mode.
    """
    loaded = load_checkpoint(path, device=device, model_config=model_config, diffusion_config=diffusion_config)
    return loaded.model, loaded.diffusion


def load_checkpoint(
    path: str | os.PathLike | None = None,
    *,
    device: torch.device | str = "cpu",
    model_config: UnetConfig | Mapping[str, Any] | None = None,
    diffusion_config: DiffusionConfig | Mapping[str, Any] | None = None,
) -> LoadedCheckpoint:
    """Like :func:`load`, also returning the recorded image size and the metadata."""
    path = Path(path) if path is not None else bundled_model_path()
    if path.suffix in (".pt", ".pth"):
        model, diffusion = _load_state_dict_file(path, model_config, diffusion_config)
        image_size, meta = None, {}
    else:
        tensors, meta = read_checkpoint(path)
        image_size = meta.get("image_size")  # checked before the model is built
        if image_size is not None and (type(image_size) is not int or not 1 <= image_size <= MAX_IMAGE_SIZE):
            raise CheckpointError(f"{path}: metadata image_size must be an integer in [1, {MAX_IMAGE_SIZE}], got "
                                  f"{image_size!r}")
        model_cfg = _as_model_config(path, model_config if model_config is not None else meta.get("model"))
        diff_cfg = _as_diffusion_config(path, diffusion_config if diffusion_config is not None else meta.get("diffusion"))
        weights = model_weights(tensors)
        model = _build_and_fill(path, model_cfg, weights)
        diffusion = GaussianDiffusion.from_config(diff_cfg)
    return LoadedCheckpoint(model.to(device).eval(), diffusion.to(device), image_size, meta)


def _load_state_dict_file(path, model_config, diffusion_config) -> tuple[Unet, GaussianDiffusion]:
    if model_config is None:
        raise CheckpointError(f"{path}: a plain state_dict file carries no config; pass model_config=UnetConfig(...)")
    check_readable(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise CheckpointError(f"{path}: cannot be read as a weights-only state_dict ({_first_line(exc)})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(state).__name__}")
    model = _build_and_fill(path, _as_model_config(path, model_config), dict(state))
    diffusion = GaussianDiffusion.from_config(_as_diffusion_config(path, diffusion_config or DiffusionConfig()))
    return model, diffusion


def check_weights_fit(path: Path, config: UnetConfig, weights: Mapping[str, torch.Tensor]) -> Unet:
    """Check that ``weights`` (names, shapes, floating dtypes) are exactly what ``Unet(config)`` holds, on the
    meta device: nothing is allocated, so a config that asks for a huge model is refused before it is built.
    Returns that meta-device Unet (no storage), for the caller to fill."""
    try:
        with torch.device("meta"), _SkipRandomInit():
            meta_model = Unet.from_config(config)
            expected = meta_model.state_dict()
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:  # e.g. a size beyond any storage
        raise CheckpointError(f"{path}: its model config cannot be built ({str(exc).splitlines()[0]})") from None
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected key {unexpected[0]!r}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        raise CheckpointError(f"{path}: does not fit Unet({_config_summary(config)}): " + "; ".join(parts))
    for key, value in expected.items():
        if weights[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(weights[key].shape)}, Unet({_config_summary(config)}) "
                f"expects {tuple(value.shape)}"
            )
        if not weights[key].is_floating_point():
            raise CheckpointError(f"{path}: key {key!r} has dtype {weights[key].dtype}, expected a floating-point tensor")
    return meta_model


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Skips random initialisation (``torch.nn.init``'s and ``Tensor.uniform_``/``normal_``) while a Unet is built
    on the meta device: its weights come from a file, and on the meta device each call goes through torch's
    decompositions (~1 ms each; 0.15 s of loading the bundled model, measured on the Zen 3 machine)."""

    _RANDOM_INIT = frozenset({torch.nn.init.kaiming_uniform_, torch.nn.init.kaiming_normal_, torch.nn.init.uniform_,
                              torch.nn.init.normal_, torch.nn.init.xavier_uniform_, torch.nn.init.xavier_normal_,
                              torch.nn.init.trunc_normal_, torch.Tensor.uniform_, torch.Tensor.normal_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._RANDOM_INIT:
            tensor = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes it by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor  # what the in-place op returns; a meta tensor has no values to fill
        return func(*args, **kwargs)


def _build_and_fill(path: Path, config: UnetConfig, weights: dict[str, torch.Tensor]) -> Unet:
    model = check_weights_fit(path, config, weights)  # before anything is allocated
    expected = model.state_dict()
    # The meta-device Unet takes the file's tensors as its own (assign=True) instead of a random initialisation
    # that the weights would overwrite: the bundled model loads in ~0.03 s instead of ~0.15 s (the kaiming init
    # of its 240 convolutions; measured on the Zen 3 machine). Contiguous copies: no caller's tensor is aliased,
    # and a channels-last state_dict gives the same parameters as a load into a built model would.
    model.load_state_dict({k: v.to(expected[k].dtype, copy=True, memory_format=torch.contiguous_format)
                           for k, v in weights.items()}, strict=True, assign=True)
    return model


def _as_model_config(path: Path, config: Any) -> UnetConfig:
    if isinstance(config, UnetConfig):
        return config
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: no model config in the checkpoint metadata")
    try:
        return UnetConfig.from_dict(dict(config))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config ({exc})") from None


def _as_diffusion_config(path: Path, config: Any) -> DiffusionConfig:
    if isinstance(config, DiffusionConfig):
        return config
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: no diffusion config in the checkpoint metadata")
    try:
        cfg = DiffusionConfig.from_dict(dict(config))
        check_diffusion_limits(cfg)
        GaussianDiffusion.from_config(cfg)  # validates the schedule
        return cfg
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad diffusion config ({exc})") from None


def check_diffusion_limits(cfg: DiffusionConfig) -> None:
    """A ValueError unless T is an integer in [1, MAX_TIMESTEPS] (checked before its tables are built)."""
    steps = cfg.timesteps
    if type(steps) is not int or not 1 <= steps <= MAX_TIMESTEPS:
        raise ValueError(f"timesteps must be an integer in [1, {MAX_TIMESTEPS}], got {steps!r}")
    if not isinstance(cfg.beta_schedule, str) and len(cfg.beta_schedule) > MAX_TIMESTEPS:
        raise ValueError(f"a beta schedule of {len(cfg.beta_schedule)} values; at most {MAX_TIMESTEPS}")


def _config_summary(config: UnetConfig) -> str:
    return f"dim={config.dim}, channels={config.channels}, dim_mults={config.dim_mults}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
