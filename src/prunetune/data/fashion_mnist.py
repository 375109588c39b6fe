"""Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` (or any folder of them): a preset
of the `idx` source with Fashion-MNIST's file names, class names and pixel statistics (both splits required;
for other IDX data, or one split, use `data.source: idx`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PrunetuneError
from .base import DataBundle, data_source
from .idx import idx_pair, image_bundle, read_idx  # noqa: F401  (read_idx: re-exported)

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Mean and std of the Fashion-MNIST training pixels (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).exists():
            return folder / name
    raise PrunetuneError(
        f"{folder}: missing {stem}(.gz); install Debian's dataset-fashion-mnist or set data.path to a folder of IDX files"
    )


@data_source("fashion_mnist")
def fashion_mnist(spec, seed: int) -> DataBundle:
    """Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)."""
    folder = Path(spec.path or DEFAULT_DIR)
    if not folder.is_dir():
        raise PrunetuneError(
            f"data.path: folder {folder} not found; run `apt-get install dataset-fashion-mnist` or set data.path"
        )
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        x, y = idx_pair(images, labels, str(folder))
        if x.shape[1] != 1:
            raise PrunetuneError(f"{images}: images {tuple(x.shape)} are not [N, H, W]; check the files")
        arrays[split] = (x, torch.from_numpy(y))
    return image_bundle(spec, seed, arrays["train"], arrays["test"], list(CLASSES), [MEAN], [STD], str(folder))
