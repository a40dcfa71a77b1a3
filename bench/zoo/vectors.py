"""Fixed-length feature vectors by name: scikit-learn's digits and Fashion-MNIST.

The classic distillation setting (Hinton et al. 2015: MLPs on MNIST) needs image data that
is on disk offline. Each loader returns a `VectorDataset` of flattened pixels scaled to
[0, 1]; `vector_splits` gives the task's (train, test): Fashion-MNIST's standard 60,000 /
10,000 split, or a seeded, label-stratified split of digits (which has none).

Splits and subsets reuse the text datasets' rules (`bench.zoo.data.split_dataset`,
`validation_split`), applied to example indices, so a vector task divides its data exactly
as a text task of the same labels would.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.zoo import ZooError, sha256_file
from bench.zoo.data import TextDataset, split_dataset, validation_split

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"  # Debian; 0.0~git20200523.55506a9-1 was checked here
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one these files use

VECTOR_DATASETS = {
    "digits": "1,797 8x8 grey-scale digit images in 10 classes (scikit-learn load_digits; seeded stratified split)",
    "fashion-mnist": f"70,000 28x28 grey-scale clothing images in 10 classes, standard 60,000/10,000 split "
                     f"(Debian package {FASHION_PACKAGE}, files under {FASHION_DIR})",
}


@dataclass(frozen=True, eq=False)
class VectorDataset:
    """Examples as fixed-length float vectors, with class labels.

    Attributes:
        name: where it came from ("digits", "fashion-mnist:train", "digits:train:fit").
        features: (N, D) float32, pixels scaled to [0, 1].
        labels: (N,) int64 class ids into `label_names`.
        label_names: the class names, id order.
        image_shape: (H, W) the D features are a row-major image of (a CNN may reshape them).
        source_hash: identifies exactly these examples (caches key on it): the sha256 of the
            source content, and for a subset the parent's hash with the chosen indices.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    image_shape: tuple[int, int]
    source_hash: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def subset(self, index: np.ndarray | list[int], part: str) -> VectorDataset:
        """The examples at `index` (in that order), named "<name>:<part>", hashed from the parent and the index."""
        index = np.asarray(index, dtype=np.int64)
        digest = hashlib.sha256(f"{self.source_hash}:{part}:".encode() + index.tobytes()).hexdigest()
        return VectorDataset(f"{self.name}:{part}", self.features[index], self.labels[index], self.label_names,
                             self.image_shape, digest)


def known_vector_datasets() -> dict[str, str]:
    """Vector dataset names -> one-line description."""
    return dict(VECTOR_DATASETS)


def is_vector_dataset(name: str) -> bool:
    return name in VECTOR_DATASETS


def load_vector_dataset(name: str) -> tuple[VectorDataset, VectorDataset | None]:
    """(examples, held-out examples or None when the dataset has no standard split) by name.

    Raises:
        ZooError: unknown name, or Fashion-MNIST's package not installed or its files changed.
    """
    if name == "digits":
        return _digits(), None
    if name == "fashion-mnist":
        return _fashion_mnist()
    raise ZooError(f"unknown vector dataset {name!r}: use {' or '.join(VECTOR_DATASETS)}")


def vector_dataset_hash(name: str) -> str:
    """sha256 identifying all of a vector dataset's examples (what a run's manifest records)."""
    data, held_out = load_vector_dataset(name)
    parts = [data.source_hash] + ([] if held_out is None else [held_out.source_hash])
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def vector_splits(name: str, seed: int = 0, test_fraction: float = 0.3) -> tuple[VectorDataset, VectorDataset]:
    """(train, test) of a vector dataset, whole (a task's limits are `bench.data.vector_task.vector_head`).

    Fashion-MNIST keeps its standard split (`test_fraction` unused); digits is split with
    `split_dataset`'s rule (per label, a seeded round(n * test_fraction) held out).
    """
    data, held_out = load_vector_dataset(name)
    if held_out is None:
        train_part, test_part = split_dataset(_index_dataset(data), test_fraction, seed)
        train, test = data.subset(_indices(train_part), "train"), data.subset(_indices(test_part), "test")
    else:
        train, test = data, held_out
    return train, test


def vector_validation_split(train: VectorDataset, fraction: float, seed: int) -> tuple[VectorDataset, VectorDataset]:
    """(fit, validation) of a train split by `bench.zoo.data.validation_split`'s rule (seeded, stratified)."""
    fit, validation = validation_split(_index_dataset(train), fraction, seed)
    return train.subset(_indices(fit), "fit"), train.subset(_indices(validation), "validation")


# ---- loaders --------------------------------------------------------------------------------
@functools.cache
def _digits() -> VectorDataset:
    """scikit-learn's copy of the UCI optical digits (shipped inside the package: no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    features = (bunch.data / 16.0).astype(np.float32)  # grey levels 0..16
    labels = bunch.target.astype(np.int64)
    digest = hashlib.sha256(features.tobytes() + labels.tobytes()).hexdigest()
    return VectorDataset("digits", features, labels, tuple(str(c) for c in bunch.target_names), (8, 8), digest)


@functools.cache
def _fashion_mnist() -> tuple[VectorDataset, VectorDataset]:
    missing = [f for f in FASHION_SHA256 if not (FASHION_DIR / f).is_file()]
    if missing:
        raise ZooError(f"dataset 'fashion-mnist' needs Debian's package (missing {FASHION_DIR / missing[0]}): "
                       f"apt-get install {FASHION_PACKAGE}")
    for file, expected in FASHION_SHA256.items():
        if sha256_file(FASHION_DIR / file) != expected:
            raise ZooError(f"{FASHION_DIR / file} does not match its pinned sha256 {expected[:12]}...; "
                           f"reinstall: apt-get install --reinstall {FASHION_PACKAGE}")
    parts = []
    for prefix, part in (("train", "train"), ("t10k", "test")):
        images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")  # (N, 28, 28) uint8
        labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")  # (N,) uint8
        if images.shape[0] != labels.shape[0]:
            raise ZooError(f"fashion-mnist {part}: {images.shape[0]} images but {labels.shape[0]} labels; "
                           f"reinstall: apt-get install --reinstall {FASHION_PACKAGE}")
        digest = hashlib.sha256(f"fashion-mnist:{part}:".encode()
                                + "".join(FASHION_SHA256[f] for f in sorted(FASHION_SHA256)).encode()).hexdigest()
        features = (images.reshape(len(images), -1).astype(np.float32) / 255.0)
        parts.append(VectorDataset(f"fashion-mnist:{part}", features, labels.astype(np.int64), FASHION_CLASSES,
                                   images.shape[1:], digest))
    return parts[0], parts[1]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzip-compressed) of unsigned bytes as an array of its shape.

    Header: two zero bytes, the type code (0x08 = unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the data follows in row-major order.
    """
    raw = gzip.open(path).read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise ZooError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ZooError(f"{path}: header says {shape} but {len(raw) - offset} bytes follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _index_dataset(ds: VectorDataset) -> TextDataset:
    """A stand-in TextDataset whose texts are example indices, so the text splitters decide a vector split."""
    return TextDataset(ds.name, tuple(str(i) for i in range(len(ds))), tuple(ds.labels.tolist()), ds.label_names,
                       ds.source_hash)


def _indices(part: TextDataset) -> list[int]:
    return [int(text) for text in part.texts]
