"""Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` (or any folder of them)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import PrunetuneError
from .base import DataBundle, data_source, finish_bundle

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Mean and std of the Fashion-MNIST training pixels (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array; corrupt files raise PrunetuneError."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise PrunetuneError(f"{path}: file not found; install dataset-fashion-mnist or set data.path") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise PrunetuneError(f"{path}: corrupt or truncated gzip ({e.__class__.__name__}); re-download the file") from None
    except zlib.error as e:  # a damaged deflate stream: not an OSError
        raise PrunetuneError(f"{path}: corrupt gzip data ({e}); re-download the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise PrunetuneError(f"{path}: not an IDX file (bad magic number); give the original IDX file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise PrunetuneError(f"{path}: truncated IDX header; re-download the file")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise PrunetuneError(
            f"{path}: truncated or corrupt IDX file ({len(raw) - header} data bytes, header says {expected}); "
            "re-download the file"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


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
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PrunetuneError(
                f"{folder}: {prefix} images {images.shape} and labels {labels.shape} do not match; check the files"
            )
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        arrays[split] = ((x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64)))
    return finish_bundle(
        spec, seed, *arrays["train"], *arrays["test"], class_names=list(CLASSES),
        preprocess={"kind": "image", "mean": [MEAN], "std": [STD], "size": [28, 28], "channels": 1},
        where=str(folder),
    )
