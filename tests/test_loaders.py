"""Tests for fldistill.data.loaders with tiny fixtures in each exact on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from fldistill.data.loaders import LOADERS, expected_layout, load_from_folder
from fldistill.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _check_raises(fn, *fragments: str) -> str:
    """Call ``fn``; it must raise a one-line DataError containing every fragment."""
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def _check_ds(ds, n, shape, n_classes, name):
    assert ds.x.shape == (n, *shape)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.x.flags.c_contiguous
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert ds.n_classes == n_classes and ds.name == name


# --------------------------------------------------------------------------- IDX (MNIST)


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx(folder: Path, n_train=5, n_test=3, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n, dtype=np.uint8)
        data[prefix] = (x, y)
        for stem, raw in (
            (f"{prefix}-images-idx3-ubyte", _idx_bytes(x, 0x803)),
            (f"{prefix}-labels-idx1-ubyte", _idx_bytes(y, 0x801)),
        ):
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    return data


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loads_exact_values(tmp_path, name, gz):
    data = _write_idx(tmp_path, gz=gz)
    train, test = load_from_folder(name, tmp_path)
    _check_ds(train, 5, (1, 28, 28), 10, name)
    _check_ds(test, 3, (1, 28, 28), 10, name)
    for ds, (x, y) in ((train, data["train"]), (test, data["t10k"])):
        np.testing.assert_array_equal(ds.y, y.astype(np.int64))
        np.testing.assert_allclose(ds.x[:, 0], x.astype(np.float32) / 255, rtol=0, atol=1e-7)


def test_idx_torchvision_raw_subfolder(tmp_path):
    _write_idx(tmp_path / "MNIST" / "raw", gz=True)
    train, _ = LOADERS["mnist"](tmp_path)
    assert len(train) == 5


def test_idx_missing_file(tmp_path):
    _write_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "t10k-labels-idx1-ubyte", "missing")


def test_idx_no_files_at_all(tmp_path):
    _check_raises(lambda: load_from_folder("mnist", tmp_path), str(tmp_path), "train-images-idx3-ubyte")


def test_idx_wrong_magic(tmp_path):
    _write_idx(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[3] = 0x01  # label magic in an images file
    p.write_bytes(bytes(raw))
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-images-idx3-ubyte", "0x00000803")


def test_idx_truncated(tmp_path):
    _write_idx(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-images-idx3-ubyte", "truncated")
    p.write_bytes(b"\x00\x00")
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-images-idx3-ubyte")


def test_idx_garbage_gz(tmp_path):
    _write_idx(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data at all")
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-labels-idx1-ubyte.gz", "gzip")


def test_idx_truncated_gz(tmp_path):
    _write_idx(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:100])
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-images-idx3-ubyte.gz")


def test_idx_count_mismatch_and_bad_size(tmp_path):
    _write_idx(tmp_path)
    y = np.zeros(4, np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(y, 0x801))
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-labels-idx1-ubyte", "5 images")
    x = np.zeros((5, 32, 32), np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(x, 0x803))
    _check_raises(lambda: load_from_folder("mnist", tmp_path), "train-images-idx3-ubyte", "28x28")


# --------------------------------------------------------------------------- CIFAR binary


def _cifar_records(n: int, label_bytes: int, n_classes: int):
    labels = RNG.integers(0, n_classes, (n, label_bytes), dtype=np.uint8)
    pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels, pixels], axis=1).tobytes()


def _write_cifar10_bin(folder: Path, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels, pixels, raw = _cifar_records(n, 1, 10)
        (folder / f).write_bytes(raw)
        out[f] = (labels[:, 0], pixels)
    return out


def test_cifar10_binary_exact_chw(tmp_path):
    data = _write_cifar10_bin(tmp_path)
    train, test = load_from_folder("cifar10", tmp_path)
    _check_ds(train, 10, (3, 32, 32), 10, "cifar10")
    _check_ds(test, 2, (3, 32, 32), 10, "cifar10")
    labels = np.concatenate([data[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    pixels = np.concatenate([data[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    np.testing.assert_array_equal(train.y, labels)
    np.testing.assert_allclose(train.x.reshape(10, -1), pixels / np.float32(255), atol=1e-7)
    # CHW: the first 1024 bytes are the red plane, row-major.
    lab, pix = data["test_batch.bin"]
    np.testing.assert_array_equal(test.y, lab)
    assert test.x[1, 0, 0, 1] == np.float32(pix[1, 1]) / 255
    assert test.x[1, 1, 2, 3] == np.float32(pix[1, 1024 + 2 * 32 + 3]) / 255
    assert test.x[0, 2, 31, 31] == np.float32(pix[0, 3071]) / 255


def test_cifar10_binary_subfolder(tmp_path):
    _write_cifar10_bin(tmp_path / "cifar-10-batches-bin")
    train, test = LOADERS["cifar10"](tmp_path)
    assert (len(train), len(test)) == (10, 2)


def test_cifar10_binary_bad_length(tmp_path):
    _write_cifar10_bin(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x00" * 1000)
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_3.bin", "3073", "1000 bytes")
    (tmp_path / "data_batch_3.bin").write_bytes(b"")
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_3.bin")


def test_cifar10_binary_bad_label(tmp_path):
    _write_cifar10_bin(tmp_path)
    p = tmp_path / "test_batch.bin"
    raw = bytearray(p.read_bytes())
    raw[0] = 42
    p.write_bytes(bytes(raw))
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "test_batch.bin", "42")


def test_cifar10_missing_batch(tmp_path):
    _write_cifar10_bin(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_4.bin", "missing")


def test_cifar10_empty_folder(tmp_path):
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), str(tmp_path), "data_batch_1.bin")


# --------------------------------------------------------------------------- CIFAR python (pickles)


def _write_cifar10_py(folder: Path, n=2, protocol=pickle.HIGHEST_PROTOCOL, bytes_keys=False, old_numpy=False):
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in RNG.integers(0, 10, n)]
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        d = {"batch_label": "batch", "labels": labels, "data": data, "filenames": [b"a.png"] * n}
        if bytes_keys:  # what Python 2 files look like when read with encoding='bytes'
            d = {k.encode(): v for k, v in d.items()}
        raw = pickle.dumps(d, protocol=protocol)
        if old_numpy:  # spell the global as numpy 1.x (and the official py2 files) do
            raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (folder / f).write_bytes(raw)
        out[f] = (labels, data)
    return out


@pytest.mark.parametrize(
    "kwargs",
    [{"protocol": 2}, {"protocol": 5}, {"protocol": 0, "bytes_keys": True}, {"protocol": 2, "old_numpy": True}],
)
def test_cifar10_python_exact(tmp_path, kwargs):
    data = _write_cifar10_py(tmp_path / "cifar-10-batches-py", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy.core DeprecationWarning
        train, test = load_from_folder("cifar10", tmp_path)
    _check_ds(train, 10, (3, 32, 32), 10, "cifar10")
    lab, pix = data["test_batch"]
    np.testing.assert_array_equal(test.y, lab)
    np.testing.assert_allclose(test.x.reshape(2, -1), pix / np.float32(255), atol=1e-7)
    assert test.x[1, 2, 0, 5] == np.float32(pix[1, 2048 + 5]) / 255


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_python_refuses_malicious_pickle(tmp_path):
    _write_cifar10_py(tmp_path)
    marker = tmp_path / "pwned"
    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [_Evil(marker)]}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    msg = _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_2", "not allowed")
    assert "system" in msg
    assert not marker.exists()


def test_cifar10_python_corrupt_pickles(tmp_path):
    _write_cifar10_py(tmp_path)
    p = tmp_path / "data_batch_1"
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1", "pickle")
    p.write_bytes(b"\x00garbage\xff" * 10)
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1")
    p.write_bytes(pickle.dumps([1, 2, 3]))
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1", "dict")
    p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}))
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1", "'labels'")
    p.write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1", "3072")
    p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1", "labels")
    p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    _check_raises(lambda: load_from_folder("cifar10", tmp_path), "data_batch_1", "0..9")


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_binary_uses_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    labs, pixs = {}, {}
    for f, n in (("train.bin", 4), ("test.bin", 3)):
        labels, pixels, raw = _cifar_records(n, 2, 100)
        labels[:, 0] = 7  # coarse labels must be ignored
        (folder / f).write_bytes(np.concatenate([labels, pixels], 1).tobytes())
        labs[f], pixs[f] = labels, pixels
    train, test = load_from_folder("cifar100", tmp_path)
    _check_ds(train, 4, (3, 32, 32), 100, "cifar100")
    _check_ds(test, 3, (3, 32, 32), 100, "cifar100")
    np.testing.assert_array_equal(train.y, labs["train.bin"][:, 1])
    np.testing.assert_allclose(test.x.reshape(3, -1), pixs["test.bin"] / np.float32(255), atol=1e-7)


def test_cifar100_binary_bad_length(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\x01" * 3073)
    (tmp_path / "test.bin").write_bytes(b"\x01" * 3074)
    _check_raises(lambda: load_from_folder("cifar100", tmp_path), "train.bin", "3074")


def test_cifar100_missing_test(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\x01" * 3074)
    _check_raises(lambda: load_from_folder("cifar100", tmp_path), "test.bin", "missing")


def test_cifar100_python(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    want = {}
    for f, n in (("train", 4), ("test", 2)):
        fine = [int(v) for v in RNG.integers(0, 100, n)]
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        d = {"data": data, "fine_labels": fine, "coarse_labels": [0] * n}
        (folder / f).write_bytes(pickle.dumps(d, protocol=2))
        want[f] = (fine, data)
    train, test = load_from_folder("cifar100", tmp_path)
    _check_ds(train, 4, (3, 32, 32), 100, "cifar100")
    np.testing.assert_array_equal(test.y, want["test"][0])
    np.testing.assert_allclose(train.x.reshape(4, -1), want["train"][1] / np.float32(255), atol=1e-7)


def test_cifar100_python_malicious(tmp_path):
    (tmp_path / "train").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    (tmp_path / "test").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    _check_raises(lambda: load_from_folder("cifar100", tmp_path), "train", "os.system")


# --------------------------------------------------------------------------- SVHN


def _write_svhn(folder: Path, n_train=4, n_test=3):
    from scipy.io import savemat

    out = {}
    for f, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.arange(1, n + 1, dtype=np.uint8).reshape(n, 1)
        y[0, 0] = 10  # digit 0
        savemat(str(folder / f), {"X": x, "y": y})
        out[f] = (x, y)
    return out


def test_svhn_exact(tmp_path):
    data = _write_svhn(tmp_path)
    train, test = load_from_folder("svhn", tmp_path)
    _check_ds(train, 4, (3, 32, 32), 10, "svhn")
    _check_ds(test, 3, (3, 32, 32), 10, "svhn")
    x, _ = data["train_32x32.mat"]
    np.testing.assert_array_equal(train.y, [0, 2, 3, 4])
    np.testing.assert_array_equal(test.y, [0, 2, 3])
    # X[h, w, c, i] -> x[i, c, h, w]
    assert train.x[2, 1, 5, 7] == np.float32(x[5, 7, 1, 2]) / 255
    np.testing.assert_allclose(train.x, x.transpose(3, 2, 0, 1) / np.float32(255), atol=1e-7)


def test_svhn_bad_files(tmp_path):
    _write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    _check_raises(lambda: load_from_folder("svhn", tmp_path), "test_32x32.mat", "missing")
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 50)
    _check_raises(lambda: load_from_folder("svhn", tmp_path), "test_32x32.mat", "MATLAB")
    good = (tmp_path / "train_32x32.mat").read_bytes()
    (tmp_path / "test_32x32.mat").write_bytes(good[: len(good) // 2])
    _check_raises(lambda: load_from_folder("svhn", tmp_path), "test_32x32.mat")


def test_svhn_wrong_shape(tmp_path):
    from scipy.io import savemat

    _write_svhn(tmp_path)
    savemat(str(tmp_path / "train_32x32.mat"), {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))})
    _check_raises(lambda: load_from_folder("svhn", tmp_path), "train_32x32.mat", "(32, 32, 3, n)")
    savemat(str(tmp_path / "train_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1))})
    _check_raises(lambda: load_from_folder("svhn", tmp_path), "train_32x32.mat", "one numeric label")


# --------------------------------------------------------------------------- image folders


def _save(path: Path, arr: np.ndarray, fmt: str | None = None):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def test_imagefolder_cinic_exact(tmp_path):
    imgs = {}
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("bird", "airplane", "cat"):
            for i in range(n):
                arr = RNG.integers(0, 256, (8, 6, 3), dtype=np.uint8)  # H=8, W=6
                _save(tmp_path / split / cls / f"{cls}_{i}.png", arr)
                imgs[(split, cls, i)] = arr
    # valid/ is ignored, even with images of another size; non-images are skipped.
    _save(tmp_path / "valid" / "cat" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train" / "cat" / "README.txt").write_text("not an image")
    # a greyscale image is converted to RGB
    grey = RNG.integers(0, 256, (8, 6), dtype=np.uint8)
    _save(tmp_path / "test" / "bird" / "grey.png", grey)

    train, test = load_from_folder("imagefolder", tmp_path)
    _check_ds(train, 6, (3, 8, 6), 3, "imagefolder")
    _check_ds(test, 4, (3, 8, 6), 3, "imagefolder")
    # classes sorted by folder name: airplane=0, bird=1, cat=2; files sorted within a class
    np.testing.assert_array_equal(train.y, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(test.y, [0, 1, 1, 2])  # bird_0.png < grey.png
    np.testing.assert_allclose(
        train.x[2], imgs[("train", "bird", 0)].transpose(2, 0, 1) / np.float32(255), atol=1e-7
    )
    np.testing.assert_allclose(test.x[2], np.stack([grey] * 3) / np.float32(255), atol=1e-7)


def test_imagefolder_tiny_imagenet(tmp_path):
    wnids = ["n02", "n01"]
    colours = {"n01": (200, 10, 10), "n02": (10, 10, 200)}
    for w in wnids:
        for i in range(2):
            arr = np.full((16, 16, 3), colours[w], np.uint8)
            _save(tmp_path / "train" / w / "images" / f"{w}_{i}.JPEG", arr, "JPEG")
        (tmp_path / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    ann = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        _save(tmp_path / "val" / "images" / f"val_{i}.JPEG", np.full((16, 16, 3), colours[w], np.uint8), "JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t15\t15")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    # the unlabelled Tiny-ImageNet test/ split must not be mistaken for class folders
    _save(tmp_path / "test" / "images" / "test_0.JPEG", np.zeros((16, 16, 3), np.uint8), "JPEG")

    train, test = load_from_folder("imagefolder", tmp_path)
    _check_ds(train, 4, (3, 16, 16), 2, "imagefolder")
    _check_ds(test, 3, (3, 16, 16), 2, "imagefolder")
    np.testing.assert_array_equal(train.y, [0, 0, 1, 1])
    np.testing.assert_array_equal(test.y, [1, 0, 1])
    # JPEG is lossy: a flat colour comes back within a few levels
    np.testing.assert_allclose(test.x[1, :, 4, 4], np.array(colours["n01"]) / 255, atol=4 / 255)
    np.testing.assert_allclose(train.x[3, :, 0, 0], np.array(colours["n02"]) / 255, atol=4 / 255)


def test_imagefolder_tiny_imagenet_bad_annotations(tmp_path):
    _save(tmp_path / "train" / "n01" / "images" / "a.JPEG", np.zeros((8, 8, 3), np.uint8), "JPEG")
    ann = tmp_path / "val" / "val_annotations.txt"
    ann.parent.mkdir()
    ann.write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "val_annotations.txt", "n99")
    ann.write_text("val_0.JPEG\tn01\t0\t0\t1\t1\n")
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "val_0.JPEG")
    ann.write_text("justonefield\n")
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "val_annotations.txt", "line 1")


def test_imagefolder_size_mismatch(tmp_path):
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "train" / "b" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "test" / "a" / "odd.png", np.zeros((8, 9, 3), np.uint8))
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "odd.png", "9x8", "8x8")


def test_imagefolder_corrupt_image(tmp_path):
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "train" / "a" / "1.png").write_bytes(b"\x89PNG not really")
    _save(tmp_path / "test" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "1.png")
    good = (tmp_path / "train" / "a" / "0.png").read_bytes()
    (tmp_path / "train" / "a" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "1.png")


def test_imagefolder_layout_errors(tmp_path):
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "train")
    (tmp_path / "train").mkdir()
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "train", "no class folders")
    (tmp_path / "train" / "a").mkdir()
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), str(tmp_path / "train" / "a"), "no images")
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "test/ or val/")
    _save(tmp_path / "test" / "zzz" / "0.png", np.zeros((8, 8, 3), np.uint8))
    _check_raises(lambda: load_from_folder("imagefolder", tmp_path), "zzz", "train/")


def test_imagefolder_val_class_folders(tmp_path):
    _save(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "train" / "b" / "0.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "val" / "b" / "0.png", np.full((4, 4, 3), 255, np.uint8))
    train, test = load_from_folder("imagefolder", tmp_path)
    assert test.y.tolist() == [1] and test.n_classes == 2
    assert test.x.min() == 1.0


# --------------------------------------------------------------------------- dispatch


def test_dispatch_unknown_name_and_missing_dir(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_from_folder("imagenet-21k", tmp_path)
    for name in LOADERS:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        expected_layout("nope")
    missing = tmp_path / "does-not-exist"
    _check_raises(lambda: load_from_folder("cifar10", missing), str(missing), "does not exist", "data_batch_1")
    f = tmp_path / "file"
    f.write_text("x")
    _check_raises(lambda: load_from_folder("svhn", f), str(f), "not a folder")
    # loaders called directly also check the folder
    _check_raises(lambda: LOADERS["mnist"](missing), str(missing))


def test_expected_layout_covers_all_loaders():
    assert set(LOADERS) == {"mnist", "fashion-mnist", "cifar10", "cifar100", "svhn", "imagefolder"}
    for name in LOADERS:
        text = expected_layout(name)
        assert text and "\n" not in text


def test_load_from_folder_accepts_str(tmp_path):
    _write_idx(tmp_path, n_train=1, n_test=1)
    train, test = load_from_folder("fashion-mnist", str(tmp_path))
    assert (len(train), len(test)) == (1, 1)


def test_an_empty_split_is_refused_before_training(tmp_path):
    """A test file with 0 images used to run and report accuracy 0.0000."""
    from fldistill.data.registry import load_dataset

    _write_idx(tmp_path, n_test=0)
    _check_raises(lambda: load_dataset("mnist", str(tmp_path)), "test split", "0 samples")
    _write_idx(tmp_path, n_train=0, n_test=3)
    _check_raises(lambda: load_dataset("mnist", str(tmp_path)), "training split", "0 samples")


def test_a_forged_huge_header_reports_the_true_byte_count(tmp_path):
    """Dims of 2^32-1 each must not wrap around in the expected size (int64 overflow)."""
    _write_idx(tmp_path)
    dims = (2**32 - 1, 2**32 - 1, 2**32 - 1)
    raw = struct.pack(">I", 0x803) + struct.pack(">3I", *dims) + b"\0" * 10
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw)
    expected = 16 + (2**32 - 1) ** 3
    msg = _check_raises(lambda: load_from_folder("mnist", tmp_path), f"expected {expected}")
    assert "-" not in msg.split("expected", 1)[1].split()[0]


def test_the_public_set_is_verified_disjoint_from_client_data(tmp_path):
    """public.source=dataset:NAME reads its own folder; the clients' files given there are refused by content."""
    from fldistill.data.federation import build_public
    from fldistill.data.registry import load_dataset

    _write_idx(tmp_path / "clients", n_train=40, n_test=5)
    _write_idx(tmp_path / "other", n_train=30, n_test=5)
    pool, _ = load_dataset("mnist", str(tmp_path / "clients"))
    public, used = build_public("dataset:fashion-mnist", 10, "mnist", pool, str(tmp_path / "clients"), 0, str(tmp_path / "other"))
    assert len(public) == 10 and len(used) == 0
    _check_raises(
        lambda: build_public("dataset:fashion-mnist", 10, "mnist", pool, str(tmp_path / "clients"), 0, str(tmp_path / "clients")),
        "10 of its 10 samples are also in the clients' training data",
        "public.data_dir",
    )
    with pytest.raises(ConfigError, match="the clients' own dataset"):
        build_public("dataset:mnist", 10, "mnist", pool, None, 0, str(tmp_path / "other"))


def test_a_public_dataset_from_disk_needs_its_own_folder():
    from fldistill.checks import check_config
    from fldistill.config import parse_config

    cfg = parse_config({"method": "hfldd", "dataset": "mnist1d", "public": {"source": "dataset:cifar10"}})
    with pytest.raises(ConfigError, match="set public.data_dir"):
        check_config(cfg)


def test_an_installed_dataset_is_found_without_data_dir(tmp_path, monkeypatch):
    """apt-get install dataset-fashion-mnist: read from its folder, recorded in the config; absent, the error says how to install it."""
    import dataclasses

    from fldistill.checks import check_config
    from fldistill.config import parse_config
    from fldistill.data import registry
    from fldistill.runner import resolve_defaults

    info = registry.DATASETS["fashion-mnist"]
    assert info.system_dir == "/usr/share/datasets/fashion-mnist"
    _write_idx(tmp_path / "sys")
    monkeypatch.setitem(registry.DATASETS, "fashion-mnist", dataclasses.replace(info, system_dir=str(tmp_path / "sys")))
    train, _ = registry.load_dataset("fashion-mnist")
    assert len(train) == 5
    cfg = parse_config({"dataset": "fashion-mnist"})
    check_config(cfg)
    assert resolve_defaults(cfg).data_dir == str(tmp_path / "sys")
    monkeypatch.setitem(registry.DATASETS, "fashion-mnist", dataclasses.replace(info, system_dir=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        check_config(cfg)
