"""Every training-data format on tiny generated files, and the one-line errors for bad ones."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from fastddpm.train.data import DataError, load_dataset


def write_idx(path, images, magic=0x00000803, truncate=0):
    n, rows, cols = images.shape
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, n, rows, cols))
    payload = header + images.astype(np.uint8).tobytes()
    payload = payload[: len(payload) - truncate]
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def scaled(uint8_array):
    return torch.from_numpy(uint8_array.astype(np.float32) / 255.0) * 2 - 1


def test_folder_of_grayscale_pngs_kept_exact_at_native_size(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode="L").save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image suffix: ignored")
    data = load_dataset(tmp_path, image_size=8, channels=1)
    assert data.shape == (3, 1, 8, 8) and data.dtype == torch.float32
    torch.testing.assert_close(data[:, 0], scaled(arrays), rtol=0, atol=1e-6)


def test_folder_rgb_jpeg_center_cropped_and_resized(tmp_path):
    image = np.zeros((12, 20, 3), dtype=np.uint8)
    image[:, 4:16] = 255  # the central 12×12 square is white, the side bands black
    for i in range(2):
        Image.fromarray(image).save(tmp_path / f"{i}.jpg", quality=100)
    data = load_dataset(tmp_path, image_size=6, channels=3)
    assert data.shape == (2, 3, 6, 6)
    assert data.min() > 0.9  # only the white center survives the crop (JPEG rounding aside)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg images"):
        load_dataset(tmp_path, 8, 1)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="mixed image sizes: a.png is 8x8 but b.png is 8x9"):
        load_dataset(tmp_path, 8, 1)
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="b.png: cannot be read as an image"):
        load_dataset(tmp_path, 8, 1)


@pytest.mark.parametrize("layout", ["NHW", "NHWC"])
def test_npz_and_npy_uint8(tmp_path, layout):
    rng = np.random.default_rng(1)
    arrays = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    stored = arrays if layout == "NHW" else arrays[..., None]
    np.savez(tmp_path / "d.npz", images=stored)
    np.save(tmp_path / "d.npy", stored)
    for name in ("d.npz", "d.npy"):
        data = load_dataset(tmp_path / name, image_size=4, channels=1)
        torch.testing.assert_close(data[:, 0], scaled(arrays), rtol=0, atol=1e-6)


def test_npz_float_rgb_and_upscale(tmp_path):
    values = np.random.default_rng(2).random((2, 4, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "f.npz", values)  # stored as arr_0
    data = load_dataset(tmp_path / "f.npz", image_size=8, channels=3)
    assert data.shape == (2, 3, 8, 8)
    # Bilinear upsampling interpolates: every output lies inside the input's range.
    assert data.min() >= values.min() * 2 - 1 - 1e-6 and data.max() <= values.max() * 2 - 1 + 1e-6


@pytest.mark.parametrize(
    "array,match",
    [
        (np.full((2, 4, 4), 1.5, np.float32), r"float images must lie in \[0, 1\]"),
        (np.zeros((2, 4), np.uint8), "expected images shaped"),
        (np.zeros((2, 4, 4, 2), np.uint8), "expected images shaped"),
        (np.zeros((2, 4, 4), np.int32), "must be uint8 or float"),
        (np.zeros((0, 4, 4), np.uint8), "contains no images"),
    ],
)
def test_array_errors(tmp_path, array, match):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "bad.npy", 4, 1)


def test_pickled_npy_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot be read as a numpy array"):
        load_dataset(tmp_path / "obj.npy", 4, 1)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"])
def test_idx_images(tmp_path, name):
    images = np.random.default_rng(3).integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    data = load_dataset(tmp_path / name, image_size=8, channels=1)
    torch.testing.assert_close(data[:, 0], scaled(images), rtol=0, atol=1e-6)


def test_idx_errors(tmp_path):
    images = np.zeros((2, 4, 4), np.uint8)
    write_idx(tmp_path / "x-idx3-ubyte", images, truncate=3)
    with pytest.raises(DataError, match="header says 2 images of 4x4"):
        load_dataset(tmp_path / "x-idx3-ubyte", 4, 1)
    write_idx(tmp_path / "labels-idx3-ubyte", images, magic=0x00000801)
    with pytest.raises(DataError, match="IDX label file"):
        load_dataset(tmp_path / "labels-idx3-ubyte", 4, 1)
    (tmp_path / "junk-idx3-ubyte").write_bytes(b"\x00" * 20)
    with pytest.raises(DataError, match="not an IDX image file"):
        load_dataset(tmp_path / "junk-idx3-ubyte", 4, 1)


def test_missing_unknown_and_channel_mismatch(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(tmp_path / "nope.npz", 8, 1)
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(tmp_path / "data.csv", 8, 1)
    np.save(tmp_path / "gray.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match="grayscale .* --channels is 3"):
        load_dataset(tmp_path / "gray.npy", 4, 3)


def test_digits_builtin():
    pytest.importorskip("sklearn")
    data = load_dataset("digits", image_size=16, channels=1)
    assert data.shape == (1797, 1, 16, 16)
    assert data.min() >= -1 and data.max() <= 1 and data.max() > 0.9 and data.min() == -1
