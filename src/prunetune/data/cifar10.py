"""CIFAR-10 as image folders: `data.source: cifar10` is `image_folder` with a default path and a class check.

The default `data.path` is `../shared/data/cifar10` beside the project checkout (`train.tar.gz` and
`test.tar.gz`, each `<split>/<class>/NNNN.jpg`, unpacked once into the cache). A user's own copy is
any image folder or archive of that layout. The original python-pickle release is never read (no
unpickling of downloaded files): convert it to image folders first.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PrunetuneError
from .base import DataBundle, data_source
from .image_folder import ImageFolderOptions, image_roots, read_image_folders

# The project checkout's sibling data folder (src/prunetune/data/cifar10.py -> <checkout>/../shared/data).
DEFAULT_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@data_source("cifar10", ImageFolderOptions)
def cifar10(spec, seed: int) -> DataBundle:
    """CIFAR-10 image folders or archives (default ../shared/data/cifar10: train.tar.gz, test.tar.gz)."""
    path = spec.path or str(DEFAULT_DIR)
    if not spec.path and not DEFAULT_DIR.is_dir():
        raise PrunetuneError(f"data.path: no CIFAR-10 at {DEFAULT_DIR}; set data.path to CIFAR-10 as image folders "
                             "(train/<class>/*.png, test/<class>/*.png) or archives of them")
    train, test, where = image_roots(path, "cifar10")
    if test is None:
        raise PrunetuneError(f"data.path: {where} has no train and test sets; CIFAR-10 needs train/ and test/ "
                             "(folders or train.tar.gz + test.tar.gz)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes != CLASSES:  # before decoding 50,000 images
        raise PrunetuneError(f"data.path: {where} has classes {', '.join(classes) or 'none'}, not CIFAR-10's; "
                             "use data.source image_folder for other image folders")
    return read_image_folders(spec, seed, train, test, where)
