"""Loaders for real datasets that the user has already placed in a folder.

Nothing is ever downloaded: each loader reads the files of one well-known
distribution format (MNIST IDX, CIFAR binary/python batches, SVHN ``.mat``,
class-per-folder images), validates them, and returns ``(train, test)`` as
:class:`~fldistill.data.arrays.ArrayDataset` with float32 ``(n, C, H, W)``
inputs in [0, 1] and int64 labels.

Every problem with the folder or its files raises :class:`DataError` with a
single line naming the file, what was expected and how to fix it; raw
numpy/gzip/pickle/PIL exceptions never escape for bad input.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fldistill.data.arrays import ArrayDataset
from fldistill.errors import ConfigError, DataError

__all__ = ["LOADERS", "expected_layout", "load_from_folder"]

_CIFAR_PIXELS = 3 * 32 * 32
_IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".webp", ".tif", ".tiff"})

_LAYOUTS: dict[str, str] = {
    "mnist": (
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (each plain or .gz) in the folder or in its MNIST/raw/ subfolder"
    ),
    "fashion-mnist": (
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte (each plain or .gz) in the folder or in its FashionMNIST/raw/ subfolder"
    ),
    "cifar10": (
        "data_batch_1.bin..data_batch_5.bin and test_batch.bin (binary version, optionally in "
        "cifar-10-batches-bin/) or data_batch_1..data_batch_5 and test_batch (python version, "
        "optionally in cifar-10-batches-py/)"
    ),
    "cifar100": (
        "train.bin and test.bin (binary version, optionally in cifar-100-binary/) or train and "
        "test (python version, optionally in cifar-100-python/)"
    ),
    "svhn": "train_32x32.mat and test_32x32.mat (SVHN cropped digits, format 2)",
    "imagefolder": (
        "train/<class>/*.png|jpg and test/<class>/* (CINIC-10 style; valid/ is ignored) or "
        "train/<wnid>/images/*.JPEG with val/images/*.JPEG and val/val_annotations.txt "
        "(Tiny-ImageNet style); all images of one size"
    ),
}


def expected_layout(name: str) -> str:
    """Describe, in one line, the files the loader ``name`` expects.

    Parameters
    ----------
    name : str
        A key of :data:`LOADERS`.

    Returns
    -------
    str
        Human-readable list of the expected files and folders.

    Raises
    ------
    ConfigError
        If ``name`` is not a known loader.
    """
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; valid folder datasets are: {', '.join(sorted(_LAYOUTS))}"
        ) from None


# --------------------------------------------------------------------------- helpers


def _reason(exc: BaseException) -> str:
    """Short one-line description of an exception, for embedding in a message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _missing(name: str, path: Path | str) -> DataError:
    return DataError(
        f"{name}: missing {path}; expected {expected_layout(name)}; "
        "put the files there or pass the folder that holds them"
    )


def _require_dir(name: str, data_dir: Path) -> None:
    if not data_dir.exists():
        raise DataError(
            f"{name}: data folder {data_dir} does not exist; expected it to hold "
            f"{expected_layout(name)}; create it or pass the right folder"
        )
    if not data_dir.is_dir():
        raise DataError(
            f"{name}: {data_dir} is not a folder; pass the folder that holds {expected_layout(name)}"
        )


def _read_bytes(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read {path} ({_reason(exc)}); check its permissions") from exc


def _pick_folder(name: str, data_dir: Path, options: list[tuple[Path, list[str], str]]) -> tuple[Path, str]:
    """Return the first ``(folder, kind)`` option where any of its files exists.

    Deciding on the folder from *any* file (not all) lets a partially copied
    dataset produce a precise "missing <file>" error instead of a vague one.
    """
    for folder, files, kind in options:
        if any((folder / f).is_file() for f in files):
            return folder, kind
    raise DataError(
        f"{name}: no {name} files found in {data_dir}; expected {expected_layout(name)}"
    )


def _to_unit(u8: np.ndarray) -> np.ndarray:
    """Scale a uint8 array (any strides) to a C-contiguous float32 array in [0, 1]."""
    out = np.empty(u8.shape, dtype=np.float32)
    # One allocation: the float32 loop divides straight into ``out`` (also
    # materialising a transposed view in C order).
    np.divide(u8, np.float32(255), out=out)
    return out


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)

_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_idx_file(name: str, path: Path) -> bytes:
    if path.suffix != ".gz":
        return _read_bytes(name, path)
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(
            f"{name}: {path} is not a valid gzip file ({_reason(exc)}); re-download it, or "
            "decompress it and keep the plain IDX file"
        ) from exc


def _parse_idx(name: str, path: Path, raw: bytes, images: bool) -> np.ndarray:
    kind = "images" if images else "labels"
    magic_expected = 0x00000803 if images else 0x00000801
    if len(raw) < 4:
        raise DataError(
            f"{name}: {path} is {len(raw)} bytes, too short for an IDX header; the file is "
            "truncated, re-download it"
        )
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != magic_expected:
        raise DataError(
            f"{name}: {path} starts with IDX magic 0x{magic:08x}, expected 0x{magic_expected:08x} "
            f"(uint8 {kind}); the file is corrupt or not an IDX {kind} file, re-download it"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{name}: {path} is {len(raw)} bytes, shorter than its {header}-byte IDX header; "
            "the file is truncated, re-download it"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + math.prod(dims)  # Python ints: a forged header must not wrap around
    if len(raw) != expected:
        raise DataError(
            f"{name}: {path} is {len(raw)} bytes, expected {expected} ({header}-byte header + "
            f"{'x'.join(map(str, dims))} bytes); the file is truncated or corrupt, re-download it"
        )
    if images and dims[1:] != (28, 28):
        raise DataError(
            f"{name}: {path} holds {'x'.join(map(str, dims[1:]))} images, expected 28x28; "
            f"this is not a {name} file, use the original {name} IDX files"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_split(name: str, folder: Path, prefix: str) -> ArrayDataset:
    paths = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        plain, gz = folder / stem, folder / f"{stem}.gz"
        # Prefer the plain file: a user who decompressed may leave a stale .gz.
        path = plain if plain.is_file() else gz if gz.is_file() else None
        if path is None:
            raise _missing(name, f"{plain} (or {gz.name})")
        paths.append(path)
    img_path, lab_path = paths
    x = _parse_idx(name, img_path, _read_idx_file(name, img_path), images=True)
    y = _parse_idx(name, lab_path, _read_idx_file(name, lab_path), images=False)
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{name}: {img_path} has {x.shape[0]} images but {lab_path} has {y.shape[0]} labels; "
            "the files belong to different splits or are corrupt, re-download them"
        )
    if y.size and int(y.max()) >= 10:
        raise DataError(
            f"{name}: {lab_path} contains label {int(y.max())}, expected 0..9; re-download it"
        )
    return ArrayDataset(_to_unit(x[:, None]), y.astype(np.int64), 10, name)


def _load_idx(name: str, data_dir: Path, raw_subdir: str) -> tuple[ArrayDataset, ArrayDataset]:
    _require_dir(name, data_dir)
    stems = [s + ext for s in _IDX_STEMS for ext in ("", ".gz")]
    folder, _ = _pick_folder(
        name,
        data_dir,
        [(data_dir, stems, "idx"), (data_dir / raw_subdir / "raw", stems, "idx")],
    )
    return _idx_split(name, folder, "train"), _idx_split(name, folder, "t10k")


def load_mnist(data_dir: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load MNIST from its four IDX files (plain or gzipped).

    Parameters
    ----------
    data_dir : Path
        Folder holding the files, or a torchvision root with ``MNIST/raw/``.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)`` with ``x`` of shape ``(n, 1, 28, 28)`` and 10 classes.
    """
    return _load_idx("mnist", Path(data_dir), "MNIST")


def load_fashion_mnist(data_dir: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load Fashion-MNIST from its four IDX files (plain or gzipped).

    Parameters
    ----------
    data_dir : Path
        Folder holding the files, or a torchvision root with ``FashionMNIST/raw/``.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)`` with ``x`` of shape ``(n, 1, 28, 28)`` and 10 classes.
    """
    return _load_idx("fashion-mnist", Path(data_dir), "FashionMNIST")


# --------------------------------------------------------------------------- restricted unpickling


def _numpy_pickle_globals() -> dict[tuple[str, str], Any]:
    """The only globals a pickled numpy array (or numpy scalar) refers to.

    Old pickles name ``numpy.core.*`` and new ones ``numpy._core.*``; both are
    resolved here from whichever module this numpy has, so neither spelling
    triggers the ``numpy.core`` deprecation shim.
    """
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # bytes pickled by Python 3 at protocol < 3, and py2 str with encoding.
        ("_codecs", "encode"): _codecs.encode,
        # Plain containers need no globals, except these (fix_imports maps
        # Python 2's __builtin__ to builtins before find_class is called).
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
    }
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]  # private, not in numpy's stubs
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers.

    CIFAR's python version is distributed as pickles; a plain ``pickle.load``
    of a file from an untrusted folder could run arbitrary code, so any global
    outside the numpy-array allow-list is refused with :class:`DataError`.
    """

    _allowed = _numpy_pickle_globals()

    def __init__(self, file: Any, *, dataset: str, path: Path) -> None:
        # latin1 is numpy's documented way to read Python 2 array pickles
        # (the official CIFAR files): byte strings arrive as str, losslessly.
        super().__init__(file, encoding="latin1")
        self._dataset = dataset
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._dataset}: {self._path} is a pickle that references {module}.{name}, which "
                "is not allowed (only numpy arrays and plain containers are); refusing to load it, "
                "re-download the official file or use the binary version"
            ) from None


def _load_pickle(name: str, path: Path) -> Any:
    try:
        with path.open("rb") as fh:
            return _RestrictedUnpickler(fh, dataset=name, path=path).load()
    except DataError:
        raise
    except Exception as exc:
        # Arbitrary bytes can make the unpickler raise nearly anything
        # (UnpicklingError, EOFError, ValueError, KeyError, MemoryError, ...).
        raise DataError(
            f"{name}: {path} is not a readable pickle ({_reason(exc)}); the file is truncated or "
            "corrupt, re-download it"
        ) from exc


# --------------------------------------------------------------------------- CIFAR-10 / CIFAR-100


def _cifar_bin_batch(
    name: str, path: Path, label_bytes: int, n_classes: int, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_bytes(name, path)
    rec = label_bytes + _CIFAR_PIXELS
    if not raw or len(raw) % rec:
        what = "1 label byte" if label_bytes == 1 else "coarse + fine label bytes"
        raise DataError(
            f"{name}: {path} is {len(raw)} bytes, expected a non-empty multiple of {rec} ({what} + "
            f"{_CIFAR_PIXELS} pixel bytes); {fix}"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    y = records[:, label_bytes - 1].astype(np.int64)  # last label byte: CIFAR-100's fine label
    if int(y.max()) >= n_classes:
        raise DataError(
            f"{name}: {path} contains label {int(y.max())}, expected 0..{n_classes - 1}; "
            f"the file is corrupt or from another dataset, {fix}"
        )
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), y


def _cifar_py_batch(
    name: str, path: Path, label_key: str, n_classes: int, fix: str
) -> tuple[np.ndarray, np.ndarray]:
    obj = _load_pickle(name, path)
    if not isinstance(obj, dict):
        raise DataError(
            f"{name}: {path} holds a {type(obj).__name__}, expected a dict with 'data' and "
            f"'{label_key}'; {fix}"
        )
    # Keys are str with latin1 decoding, but bytes if the file was made so.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise DataError(
                f"{name}: {path} has no '{key}' entry (found {sorted(map(str, batch))}); "
                f"expected a dict with 'data' and '{label_key}'; {fix}"
            )
    data = batch["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR_PIXELS
    ):
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(
            f"{name}: {path} 'data' is a {desc}, expected a uint8 array of shape "
            f"(n, {_CIFAR_PIXELS}); {fix}"
        )
    try:
        y = np.asarray(batch[label_key])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name}: {path} '{label_key}' is not a list of integers ({_reason(exc)}); {fix}") from exc
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != data.shape[0]:
        raise DataError(
            f"{name}: {path} '{label_key}' has shape {y.shape} and dtype {y.dtype}, expected "
            f"{data.shape[0]} integer labels (one per row of 'data'); {fix}"
        )
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise DataError(
            f"{name}: {path} '{label_key}' contains labels in [{int(y.min())}, {int(y.max())}], "
            f"expected 0..{n_classes - 1}; {fix}"
        )
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _cifar_dataset(
    name: str, parts: list[tuple[np.ndarray, np.ndarray]], n_classes: int
) -> ArrayDataset:
    # Scale each batch straight into one preallocated float32 array instead of
    # concatenating the uint8 batches first (one fewer full-size copy).
    x = np.empty((sum(len(p[0]) for p in parts), 3, 32, 32), dtype=np.float32)
    start = 0
    for u8, _ in parts:
        np.divide(u8, np.float32(255), out=x[start : start + len(u8)])
        start += len(u8)
    y = np.concatenate([p[1] for p in parts])
    return ArrayDataset(x, y, n_classes, name)


def load_cifar10(data_dir: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load CIFAR-10 from its binary or (restricted-unpickled) python batches.

    Parameters
    ----------
    data_dir : Path
        Folder holding the batches, or their ``cifar-10-batches-bin/`` or
        ``cifar-10-batches-py/`` parent.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)`` with ``x`` of shape ``(n, 3, 32, 32)`` and 10 classes.
    """
    name = "cifar10"
    data_dir = Path(data_dir)
    _require_dir(name, data_dir)
    py_files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    bin_files = [f + ".bin" for f in py_files]
    folder, kind = _pick_folder(
        name,
        data_dir,
        [
            (data_dir, bin_files, "bin"),
            (data_dir, py_files, "py"),
            (data_dir / "cifar-10-batches-bin", bin_files, "bin"),
            (data_dir / "cifar-10-batches-py", py_files, "py"),
        ],
    )
    files = bin_files if kind == "bin" else py_files
    for f in files:  # check all first: report a missing batch before parsing 150 MB
        if not (folder / f).is_file():
            raise _missing(name, folder / f)
    if kind == "bin":
        fix = "re-download the CIFAR-10 binary version"
        read = lambda p: _cifar_bin_batch(name, p, 1, 10, fix)  # noqa: E731
    else:
        fix = "re-download the CIFAR-10 python version"
        read = lambda p: _cifar_py_batch(name, p, "labels", 10, fix)  # noqa: E731
    train = _cifar_dataset(name, [read(folder / f) for f in files[:5]], 10)
    test = _cifar_dataset(name, [read(folder / files[5])], 10)
    return train, test


def load_cifar100(data_dir: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load CIFAR-100 (fine labels) from its binary or python files.

    Parameters
    ----------
    data_dir : Path
        Folder holding ``train.bin``/``test.bin`` or ``train``/``test``, or
        their ``cifar-100-binary/`` or ``cifar-100-python/`` parent.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)`` with ``x`` of shape ``(n, 3, 32, 32)`` and 100 classes.
    """
    name = "cifar100"
    data_dir = Path(data_dir)
    _require_dir(name, data_dir)
    bin_files, py_files = ["train.bin", "test.bin"], ["train", "test"]
    folder, kind = _pick_folder(
        name,
        data_dir,
        [
            (data_dir, bin_files, "bin"),
            (data_dir, py_files, "py"),
            (data_dir / "cifar-100-binary", bin_files, "bin"),
            (data_dir / "cifar-100-python", py_files, "py"),
        ],
    )
    files = bin_files if kind == "bin" else py_files
    for f in files:
        if not (folder / f).is_file():
            raise _missing(name, folder / f)
    if kind == "bin":
        fix = "re-download the CIFAR-100 binary version"
        read = lambda p: _cifar_bin_batch(name, p, 2, 100, fix)  # noqa: E731
    else:
        fix = "re-download the CIFAR-100 python version"
        read = lambda p: _cifar_py_batch(name, p, "fine_labels", 100, fix)  # noqa: E731
    return (
        _cifar_dataset(name, [read(folder / files[0])], 100),
        _cifar_dataset(name, [read(folder / files[1])], 100),
    )


# --------------------------------------------------------------------------- SVHN


def _svhn_split(name: str, path: Path) -> ArrayDataset:
    if not path.is_file():
        raise _missing(name, path)
    fix = "re-download the SVHN cropped-digits (format 2) .mat file"
    from scipy.io import loadmat  # lazy: scipy's import cost is paid only when used

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:
        # scipy raises ValueError/MatReadError/NotImplementedError (v7.3 HDF5)
        # or struct/zlib errors on truncated files; all mean "unreadable".
        raise DataError(f"{name}: {path} is not a readable MATLAB file ({_reason(exc)}); {fix}") from exc
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{name}: {path} lacks the 'X' and/or 'y' variables; {fix}")
    x, y = mat["X"], mat["y"]
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(
            f"{name}: {path} 'X' is {getattr(x, 'dtype', type(x).__name__)} of shape "
            f"{getattr(x, 'shape', '?')}, expected uint8 of shape (32, 32, 3, n); {fix}"
        )
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != x.shape[3] or y.dtype.kind not in "iuf":
        raise DataError(
            f"{name}: {path} has {x.shape[3]} images but 'y' is {y.dtype} with {y.shape[0]} "
            f"entries, expected one numeric label per image; {fix}"
        )
    y = y.astype(np.int64)
    if y.size and (int(y.min()) < 0 or int(y.max()) > 10):
        raise DataError(
            f"{name}: {path} 'y' contains labels in [{int(y.min())}, {int(y.max())}], expected "
            f"1..10 (10 = digit 0); {fix}"
        )
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    # (H, W, C, n) -> (n, C, H, W)
    return ArrayDataset(_to_unit(x.transpose(3, 2, 0, 1)), y, 10, name)


def load_svhn(data_dir: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load SVHN (cropped digits) from ``train_32x32.mat`` and ``test_32x32.mat``.

    Parameters
    ----------
    data_dir : Path
        Folder holding the two ``.mat`` files (``extra_32x32.mat`` is ignored).

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)`` with ``x`` of shape ``(n, 3, 32, 32)``, 10 classes,
        digit 0 labelled 0.
    """
    name = "svhn"
    data_dir = Path(data_dir)
    _require_dir(name, data_dir)
    return _svhn_split(name, data_dir / "train_32x32.mat"), _svhn_split(name, data_dir / "test_32x32.mat")


# --------------------------------------------------------------------------- image folders


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in _IMAGE_EXTS and not p.name.startswith(".") and p.is_file()
    )


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_images(name: str, class_dir: Path) -> list[Path]:
    # Tiny-ImageNet keeps a class's images in <wnid>/images/ next to a boxes file.
    sub = class_dir / "images"
    files = _list_images(sub if sub.is_dir() else class_dir)
    if not files:
        raise DataError(
            f"{name}: class folder {class_dir} has no images ({', '.join(sorted(_IMAGE_EXTS))}); "
            "remove it or add its images"
        )
    return files


def _folder_split(
    name: str, split_dir: Path, index: dict[str, int]
) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    classes = _class_dirs(split_dir)
    if not classes:
        raise DataError(
            f"{name}: {split_dir} has no class folders; expected {expected_layout(name)}"
        )
    for c in classes:
        if c not in index:
            raise DataError(
                f"{name}: {split_dir / c} is a class not present in train/; the test classes must "
                "be a subset of the train classes, rename or remove it"
            )
        imgs = _class_images(name, split_dir / c)
        files += imgs
        labels += [index[c]] * len(imgs)
    return files, labels


def _tiny_imagenet_val(
    name: str, val_dir: Path, index: dict[str, int]
) -> tuple[list[Path], list[int]]:
    ann = val_dir / "val_annotations.txt"
    try:
        lines = ann.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read {ann} ({_reason(exc)}); re-download Tiny-ImageNet") from exc
    files: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DataError(
                f"{name}: {ann} line {lineno} is {line!r}, expected '<file>\\t<wnid>[\\t<box>...]'; "
                "re-download Tiny-ImageNet"
            )
        fname, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(
                f"{name}: {ann} line {lineno} names class {wnid!r}, which has no folder in train/; "
                "the annotation file and train/ do not match, re-download Tiny-ImageNet"
            )
        path = val_dir / "images" / fname
        if not path.is_file():
            raise DataError(
                f"{name}: {ann} line {lineno} names {path}, which does not exist; "
                "restore val/images/ or re-download Tiny-ImageNet"
            )
        files.append(path)
        labels.append(index[wnid])
    if not files:
        raise DataError(f"{name}: {ann} lists no images; re-download Tiny-ImageNet")
    return files, labels


def _read_images(name: str, files: list[Path]) -> np.ndarray:
    """Read ``files`` as RGB into one uint8 ``(n, H, W, 3)`` array; sizes must agree."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow ships with matplotlib
        raise DataError(f"{name}: reading image folders needs Pillow; install it with 'pip install pillow'") from exc

    out: np.ndarray | None = None
    first = files[0]
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as exc:
            # PIL raises UnidentifiedImageError/OSError/ValueError/SyntaxError
            # and DecompressionBombError depending on the codec and the damage.
            raise DataError(
                f"{name}: cannot read image {path} ({_reason(exc)}); the file is corrupt, "
                "replace or delete it"
            ) from exc
        if out is None:
            # Preallocate once: stacking a list would double peak memory.
            out = np.empty((len(files), *arr.shape), dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            h, w = out.shape[1:3]
            raise DataError(
                f"{name}: {path} is {arr.shape[1]}x{arr.shape[0]} pixels but {first} is {w}x{h}; "
                f"all images must share one size, resize them (e.g. to {w}x{h}) first"
            )
        out[i] = arr
    assert out is not None  # files is never empty here
    return out


def load_imagefolder(data_dir: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load a class-per-folder image dataset (CINIC-10 or Tiny-ImageNet layout).

    Classes are the sub-folders of ``train/``, sorted by name. The test split
    is ``val/`` with ``val/val_annotations.txt`` (Tiny-ImageNet) when that
    file exists, else ``test/<class>/``, else ``val/<class>/``.

    Parameters
    ----------
    data_dir : Path
        Folder holding ``train/`` and ``test/`` or ``val/``.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)`` with RGB ``x`` of shape ``(n, 3, H, W)``.
    """
    name = "imagefolder"
    data_dir = Path(data_dir)
    _require_dir(name, data_dir)
    train_dir = data_dir / "train"
    if not train_dir.is_dir():
        raise _missing(name, train_dir)
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"{name}: {train_dir} has no class folders; expected {expected_layout(name)}")
    index = {c: i for i, c in enumerate(classes)}
    train_files, train_labels = _folder_split(name, train_dir, index)

    # Tiny-ImageNet also ships an unlabelled test/images/, so its labelled
    # val/ must be recognised before a plain test/ is considered.
    val_dir, test_dir = data_dir / "val", data_dir / "test"
    if (val_dir / "val_annotations.txt").is_file():
        test_files, test_labels = _tiny_imagenet_val(name, val_dir, index)
    elif test_dir.is_dir():
        test_files, test_labels = _folder_split(name, test_dir, index)
    elif val_dir.is_dir():
        test_files, test_labels = _folder_split(name, val_dir, index)
    else:
        raise DataError(
            f"{name}: {data_dir} has no test/ or val/ folder; expected {expected_layout(name)}"
        )

    # One read for both splits so the size check spans train and test.
    u8 = _read_images(name, train_files + test_files)
    n = len(train_files)
    x = u8.transpose(0, 3, 1, 2)  # (n, H, W, C) -> (n, C, H, W)
    return (
        ArrayDataset(_to_unit(x[:n]), np.asarray(train_labels, np.int64), len(classes), name),
        ArrayDataset(_to_unit(x[n:]), np.asarray(test_labels, np.int64), len(classes), name),
    )


# --------------------------------------------------------------------------- dispatch

LOADERS: dict[str, Callable[[Path], tuple[ArrayDataset, ArrayDataset]]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "imagefolder": load_imagefolder,
}


def load_from_folder(name: str, data_dir: str | Path) -> tuple[ArrayDataset, ArrayDataset]:
    """Load the dataset ``name`` from files the user placed in ``data_dir``.

    Parameters
    ----------
    name : str
        A key of :data:`LOADERS`.
    data_dir : str or Path
        Folder holding the files described by :func:`expected_layout`.

    Returns
    -------
    tuple of ArrayDataset
        ``(train, test)``.

    Raises
    ------
    ConfigError
        If ``name`` is not a known loader.
    DataError
        If the folder or a file is missing, malformed or of the wrong layout.
    """
    if name not in LOADERS:
        raise ConfigError(
            f"unknown dataset {name!r}; valid folder datasets are: {', '.join(sorted(LOADERS))}"
        )
    path = Path(data_dir).expanduser()
    _require_dir(name, path)
    return LOADERS[name](path)
