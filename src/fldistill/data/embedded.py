"""Datasets that work offline with nothing downloaded: ``digits`` and ``mnist1d``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from fldistill.data.arrays import ArrayDataset
from fldistill.errors import DataError

MNIST1D_DEFAULT_SAMPLES = 20_000  # 16,000 train + 4,000 test: enough for a CNN to reach ~0.97


def cache_dir() -> Path:
    """Where generated datasets are cached (``$FLDISTILL_CACHE`` or ``~/.cache/fldistill``)."""
    d = Path(os.environ.get("FLDISTILL_CACHE", Path.home() / ".cache" / "fldistill"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_digits(split_seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split 80/20 (stratified, fixed)."""
    from sklearn.datasets import load_digits as _ld
    from sklearn.model_selection import train_test_split

    d = _ld()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=split_seed, stratify=y)
    return ArrayDataset(xtr, ytr, 10, "digits"), ArrayDataset(xte, yte, 10, "digits")


def _mnist1d_args(num_samples: int, seed: int, **overrides: float) -> object:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def make_mnist1d(num_samples: int = MNIST1D_DEFAULT_SAMPLES, seed: int = 42, **overrides: float) -> dict[str, np.ndarray]:
    """Generate MNIST-1D locally with the package's ``make_dataset`` (never its download path).

    Results are cached as ``.npz`` (no pickle) keyed by the generator arguments.
    """
    key = json.dumps({"n": num_samples, "seed": seed, **overrides}, sort_keys=True)
    path = cache_dir() / f"mnist1d-{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a corrupt cache entry is regenerated
    from mnist1d.data import make_dataset

    # make_dataset seeds NumPy's global RNG; keep the caller's global state untouched.
    state = np.random.get_state()
    try:
        d = make_dataset(_mnist1d_args(num_samples, seed, **overrides))
    finally:
        np.random.set_state(state)
    out = {
        "x": d["x"].astype(np.float32),
        "y": d["y"].astype(np.int64),
        "x_test": d["x_test"].astype(np.float32),
        "y_test": d["y_test"].astype(np.int64),
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def load_mnist1d(num_samples: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """MNIST-1D: 10 classes of length-40 1-D signals (train 80% / test 20%)."""
    n = num_samples or MNIST1D_DEFAULT_SAMPLES
    if n < 100:
        raise DataError(f"mnist1d needs at least 100 samples, got dataset_size={n}")
    d = make_mnist1d(n)
    return ArrayDataset(d["x"], d["y"], 10, "mnist1d"), ArrayDataset(d["x_test"], d["y_test"], 10, "mnist1d")


def mnist1d_shifted(size: int) -> ArrayDataset:
    """A related but differently distributed MNIST-1D set, for a public/auxiliary set.

    Another generator seed with stronger correlated noise and shear: the analogue of
    HFLDD's "a different dataset of the same shape" (FMNIST for MNIST).
    """
    d = make_mnist1d(max(100, int(np.ceil(size / 0.8)) + 10), seed=7, corr_noise_scale=0.5, shear_scale=1.2)
    return ArrayDataset(d["x"][:size], d["y"][:size], 10, "mnist1d-shifted")
