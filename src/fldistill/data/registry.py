"""Named datasets: what each one is, and how to load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fldistill.data.arrays import ArrayDataset
from fldistill.errors import ConfigError, DataError, did_you_mean


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, known before anything is loaded."""

    name: str
    n_classes: int
    input_shape: tuple[int, ...]
    embedded: bool
    description: str
    system_dir: str | None = None  # where a system package installs it (used when --data-dir is not given)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("mnist1d", 10, (40,), True, "MNIST-1D, generated locally (default 16,000 train / 4,000 test)"),
        DatasetInfo("digits", 10, (1, 8, 8), True, "scikit-learn 8x8 handwritten digits (1,437 train / 360 test)"),
        DatasetInfo("mnist", 10, (1, 28, 28), False, "MNIST from IDX files in --data-dir"),
        DatasetInfo(
            "fashion-mnist",
            10,
            (1, 28, 28),
            False,
            "Fashion-MNIST from IDX files in --data-dir, or from /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)",
            "/usr/share/datasets/fashion-mnist",
        ),
        DatasetInfo("cifar10", 10, (3, 32, 32), False, "CIFAR-10 (binary or python version) in --data-dir"),
        DatasetInfo("cifar100", 100, (3, 32, 32), False, "CIFAR-100 (binary or python version) in --data-dir"),
        DatasetInfo("svhn", 10, (3, 32, 32), False, "SVHN cropped digits (.mat) in --data-dir"),
        DatasetInfo("imagefolder", 0, (), False, "class-per-folder images (CINIC-10, Tiny-ImageNet layouts) in --data-dir"),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """Facts about ``name``; unknown names raise a :class:`ConfigError` listing valid ones."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'{did_you_mean(name, DATASETS)} (choose one of: {', '.join(DATASETS)})")
    return DATASETS[name]


def default_data_dir(name: str) -> str | None:
    """The folder a system package installed ``name`` into, if it is there (else None)."""
    d = dataset_info(name).system_dir
    return d if d is not None and Path(d).is_dir() else None


def missing_data_dir(name: str) -> DataError:
    """The one-line error for a dataset read from disk when no folder is given or installed."""
    info = dataset_info(name)
    hint = f", or install it where fldistill finds it: apt-get install dataset-{name}" if info.system_dir else ""
    return DataError(f"dataset '{name}' is read from disk: pass --data-dir ({info.description}){hint}")


def check_data_dir(data_dir: str | Path) -> None:
    """A one-line :class:`DataError` unless ``data_dir`` is an existing folder."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} is a file, not a folder; pass the folder that holds the dataset's files")
    if not Path(data_dir).is_dir():
        raise DataError(f"--data-dir {data_dir} does not exist; pass the folder that holds the dataset's files")


def load_dataset(name: str, data_dir: str | None = None, size: int | None = None) -> tuple[ArrayDataset, ArrayDataset]:
    """Load ``(train, test)`` for a named dataset.

    Embedded datasets ignore ``data_dir``; the others read it and never download.
    """
    dataset_info(name)  # an unknown name fails here, with the valid ones
    if name == "mnist1d":
        from fldistill.data.embedded import load_mnist1d

        return load_mnist1d(size)
    if name == "digits":
        from fldistill.data.embedded import load_digits

        return load_digits()
    data_dir = data_dir or default_data_dir(name)
    if data_dir is None:
        raise missing_data_dir(name)
    check_data_dir(data_dir)
    from fldistill.data.loaders import load_from_folder

    train, test = load_from_folder(name, data_dir)
    for split, ds in (("training", train), ("test", test)):
        if len(ds) == 0:  # it would train on nothing, or report accuracy 0 on nothing
            raise DataError(f"{name}: the {split} split in {data_dir} has 0 samples; check the files in that folder")
    return train, test
