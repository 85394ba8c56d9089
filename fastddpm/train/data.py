"""Training data: image folders, .npz/.npy arrays, MNIST-style IDX files, and scikit-learn's digits.

Everything loads into one float32 tensor (N, C, S, S) scaled to [−1, 1] (the reference's convention); the
data sets this is for fit in memory. Bad input raises :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = ["DataError", "load_dataset", "IMAGE_SUFFIXES", "DIGITS"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIGITS = "digits"  # the built-in data set name: scikit-learn's 1,797 handwritten 8×8 digits
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions (N, rows, cols)
_IDX_LABELS_MAGIC = 0x00000801


class DataError(ValueError):
    """Training data that cannot be used; the message names the input and the problem."""


def load_dataset(source: str | os.PathLike, image_size: int, channels: int) -> torch.Tensor:
    """Load ``source`` as float32 (N, channels, image_size, image_size) in [−1, 1].

    ``source`` is "digits", a folder of PNG/JPEG images, an ``.npz``/``.npy`` array ((N,H,W) or
    (N,H,W,C), uint8 in [0, 255] or float in [0, 1]), or an IDX image file (``*-idx3-ubyte``, optionally
    ``.gz``). Images are center-cropped to a square and resized to ``image_size``.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if str(source) == DIGITS:
        images = _load_digits()
        name = "digits"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            images = _load_folder(path, channels)
        elif path.suffix == ".npz" or path.suffix == ".npy":
            images = _load_array(path)
        elif "idx3-ubyte" in path.name or path.name.endswith(".idx"):
            images = _load_idx(path)
        else:
            raise DataError(
                f"{path}: unknown data format; expected a folder of {'/'.join(IMAGE_SUFFIXES)} images, "
                f"an .npz/.npy array, an IDX file (*-idx3-ubyte[.gz]) or '{DIGITS}'"
            )
    images = _match_channels(images, channels, name)
    if images.shape[0] == 0:
        raise DataError(f"{name}: contains no images")
    return _center_crop_resize(images, image_size) * 2 - 1


def _load_digits() -> torch.Tensor:
    try:  # scikit-learn is optional (the `digits` extra): imported only when the digits are asked for
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits data set needs scikit-learn: pip install 'fastddpm[digits]'") from None
    digits = load_digits()  # ships inside scikit-learn: no download
    pixels = torch.from_numpy(digits.images.astype(np.float32) / 16.0)  # values 0..16
    return pixels[:, None]  # (1797, 1, 8, 8) in [0, 1]


def _load_folder(path: Path, channels: int) -> torch.Tensor:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{path}: folder has no {'/'.join(IMAGE_SUFFIXES)} images")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    first_size = None
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                size = image.size
                array = np.asarray(image.convert(mode))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{file}: cannot be read as an image ({exc})") from None
        if first_size is None:
            first_size = (size, files[0].name)
        elif size != first_size[0]:
            raise DataError(
                f"{path}: mixed image sizes: {first_size[1]} is {first_size[0][0]}x{first_size[0][1]} "
                f"but {file.name} is {size[0]}x{size[1]}"
            )
        arrays.append(array)
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[..., None]
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255.0


def _load_array(path: Path) -> torch.Tensor:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if not keys:
                    raise DataError(f"{path}: .npz archive holds no arrays")
                key = next((k for k in ("images", "arr_0", "x_train", "x") if k in keys), keys[0])
                array = archive[key]
        else:
            array = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read as a numpy array ({str(exc).splitlines()[0]})") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise DataError(f"{path}: expected images shaped (N, H, W) or (N, H, W, C) with C in 1/3/4, got {array.shape}")
    if array.dtype == np.uint8:
        data = torch.from_numpy(array.astype(np.float32) / 255.0)
    elif np.issubdtype(array.dtype, np.floating):
        data = torch.from_numpy(array.astype(np.float32))
        if data.numel() and (not torch.isfinite(data).all() or data.min() < 0 or data.max() > 1):
            raise DataError(f"{path}: float images must lie in [0, 1]; found values in [{data.min():.3g}, {data.max():.3g}]")
    else:
        raise DataError(f"{path}: images must be uint8 or float, got dtype {array.dtype}")
    return data.permute(0, 3, 1, 2)[:, :3]  # drop an alpha channel


def _load_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if len(raw) < 16:
        raise DataError(f"{path}: too short for an IDX image file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic == _IDX_LABELS_MAGIC:
        raise DataError(f"{path}: this is an IDX label file (idx1); pass the images file (*-idx3-ubyte)")
    if magic != _IDX_IMAGES_MAGIC:
        raise DataError(f"{path}: not an IDX image file (magic number {magic:#010x}, expected {_IDX_IMAGES_MAGIC:#010x})")
    n, rows, cols = (int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise DataError(f"{path}: header says {n} images of {rows}x{cols} ({expected} bytes) but the file has {len(raw)} bytes")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def _match_channels(images: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        raise DataError(f"{name}: images are grayscale (1 channel) but --channels is 3; use --channels 1")
    if have == 3 and channels == 1:
        raise DataError(f"{name}: images are RGB (3 channels) but --channels is 1; use --channels 3")
    raise DataError(f"{name}: images have {have} channels, expected {channels}")


def _center_crop_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Center-crop (N, C, H, W) to a square and resize it to size×size (bilinear, antialiased when shrinking)."""
    _, _, h, w = images.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[:, :, top : top + side, left : left + side]
    if side != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return images.clamp(0, 1).contiguous()
