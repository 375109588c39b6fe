"""IDX image data (the MNIST family: MNIST, Fashion-MNIST, KMNIST, EMNIST, ...): `data.source: idx`.

A folder of IDX files (gzip or plain): images `[N, H, W]` (or `[N, H, W, C]`) and labels `[N]`, a training
and a test pair found by name (`train` / `t10k` or `test`, `images` / `labels`, e.g. `train-images-idx3-ubyte.gz`)
or named by `data.train_images` ... `data.test_labels`. Labels are numbered in ascending order of their
values (EMNIST letters' 1..26 become classes 0..25), named by `data.class_names` (else the values).
Only training files: a seeded, stratified `data.test_size` (20 %) is held out as the test set. Only test
files: enough to score a saved model (`prunetune eval MODEL --set data.path=...`), which brings its own
normalisation and label values; a run needs training files.

Example recipe `data:` section:

    data:
      source: idx
      path: ./kmnist
      class_names: [o, ki, su, tsu, na, ha, ma, ya, re, wo]
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from ..errors import PrunetuneError
from .base import DataBundle, HoldoutOptions, TensorData, data_source, finish_bundle, hold_out_test

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_WORDS = {"train": ("train",), "test": ("t10k", "test")}
KIND_WORDS = {"images": ("images", "imgs", "idx3"), "labels": ("labels", "idx1")}


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


def idx_pair(images_path: Path, labels_path: Path, where: str) -> tuple[torch.Tensor, np.ndarray]:
    """Images as float32 [N, C, H, W] (uint8 pixels scaled to [0, 1]) and their labels, checked to match."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim == 3:
        images = images[:, None]
    else:
        raise PrunetuneError(f"{images_path}: images of shape {images.shape}; IDX images are [N, H, W] or [N, H, W, C] "
                             "with C 1 or 3")
    if labels.ndim != 1 or len(images) != len(labels):
        raise PrunetuneError(f"{where}: images {images_path.name} {images.shape} and labels {labels_path.name} "
                             f"{labels.shape} do not match; check the files")
    x = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    return torch.from_numpy(np.ascontiguousarray(x)), labels.astype(np.int64)


def image_bundle(spec, seed: int, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                 class_names: list[str], mean: list[float], std: list[float], where: str,
                 notes: list[str] | None = None, extra: dict[str, Any] | None = None) -> DataBundle:
    """Normalise with `mean` / `std` (per channel) and finish: the common tail of IDX sources."""
    m, s = torch.tensor(mean)[None, :, None, None], torch.tensor(std)[None, :, None, None]
    (tr_x, tr_y), (te_x, te_y) = train, test
    c, h, w = (te_x if len(tr_x) == 0 else tr_x).shape[1:]
    pre = {"kind": "image", "mean": mean, "std": std, "size": [h, w], "channels": c, **(extra or {})}
    return finish_bundle(spec, seed, (tr_x - m) / s, tr_y, (te_x - m) / s, te_y, class_names=class_names,
                         preprocess=pre, where=where, notes=notes)


class IdxOptions(HoldoutOptions):
    """idx's own `data:` keys."""

    class_names: list[str] | None = Field(
        None, min_length=2, description="names of the classes, one per distinct label value in ascending order "
        "(default: the values)")
    train_images: str | None = Field(None, description="training images file (default: found by name in data.path)")
    train_labels: str | None = Field(None, description="training labels file")
    test_images: str | None = Field(None, description="test images file (none: a test split is held out of train)")
    test_labels: str | None = Field(None, description="test labels file")


def _find(folder: Path, given: str | None, split: str, kind: str) -> Path | None:
    """The `data.<split>_<kind>` file, else the one IDX file in `folder` whose name says split and kind."""
    field = f"data.{split}_{kind}"
    if given:
        p = Path(given).expanduser()
        p = p if p.is_absolute() else folder / p
        if not p.is_file():
            raise PrunetuneError(f"{field}: {p} not found; check data.path and {field}")
        return p
    words = lambda name, ws: any(re.search(rf"(^|[-_.]){w}([-_.]|$)", name) for w in ws)  # noqa: E731
    found = sorted({p.name.removesuffix(".gz"): p for p in sorted(folder.iterdir(), reverse=True)
                    if p.is_file() and "idx" in p.name.lower() and words(p.name.lower(), SPLIT_WORDS[split])
                    and words(p.name.lower(), KIND_WORDS[kind])}.values())  # a .gz wins over its plain copy
    if len(found) > 1:
        raise PrunetuneError(f"{field}: several {split} {kind} files in {folder} ({', '.join(p.name for p in found)}); "
                             f"set {field}")
    return found[0] if found else None


def _label_values(saved: dict[str, Any] | None, *label_arrays: np.ndarray) -> list[int]:
    if saved and saved.get("kind") == "image" and "label_values" in saved:
        return [int(v) for v in saved["label_values"]]  # the saved model's classes, whatever this data holds
    return sorted({int(v) for y in label_arrays for v in np.unique(y)})


@data_source("idx", IdxOptions, "IDX image files (MNIST family): train and test pairs, class names settable")
def idx(spec, seed: int, saved: dict | None = None) -> DataBundle:
    opts: IdxOptions = spec.options
    if not spec.path:
        raise PrunetuneError("data.path: idx needs a folder of IDX files; set data.path=/path/to/idx-folder")
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise PrunetuneError(f"data.path: folder {folder} not found; set data.path to a folder of IDX files")
    files = {(s, k): _find(folder, getattr(opts, f"{s}_{k}"), s, k) for s in ("train", "test") for k in ("images", "labels")}
    for s in ("train", "test"):
        if (files[s, "images"] is None) != (files[s, "labels"] is None):
            have, miss = ("images", "labels") if files[s, "labels"] is None else ("labels", "images")
            raise PrunetuneError(f"data.{s}_{miss}: {folder} has {s} {have} ({files[s, have].name}) but no {s} {miss} "
                                 f"file; add it or set data.{s}_{miss}")
    has_train, has_test = files["train", "images"] is not None, files["test", "images"] is not None
    if not has_train and not (has_test and saved):
        what = "only test files: that scores a saved model (prunetune eval), but a run needs" if has_test else "no"
        raise PrunetuneError(f"data.path: {folder} has {what} training IDX files (train-images-idx3-ubyte(.gz) and "
                             "train-labels-idx1-ubyte(.gz)); add them or set data.train_images and data.train_labels")
    pairs = {s: idx_pair(files[s, "images"], files[s, "labels"], str(folder)) for s in ("train", "test") if
             files[s, "images"] is not None}
    values = _label_values(saved, *(y for _, y in pairs.values()))
    names = list(opts.class_names) if opts.class_names else [str(v) for v in values]
    if len(names) != len(values):
        raise PrunetuneError(f"data.class_names: {len(names)} names for {len(values)} label values "
                             f"({', '.join(map(str, values[:12]))}{', ...' if len(values) > 12 else ''}); "
                             "give one name per label value, in ascending order")
    lookup = {v: i for i, v in enumerate(values)}
    data = {s: (x, torch.tensor([lookup.get(int(v), -1) for v in y])) for s, (x, y) in pairs.items()}
    notes = []
    if not has_train:  # scoring a saved model: no training data, its own normalisation
        x, y = data["test"]
        empty = (x[:0], y[:0])
        bundle = DataBundle(TensorData(*empty), TensorData(*empty), TensorData(x, y), names, tuple(x.shape[1:]))
        m, s = torch.tensor(saved["mean"])[None, :, None, None], torch.tensor(saved["std"])[None, :, None, None]
        bundle.test = TensorData((x - m) / s, y)
        bundle.preprocess, bundle.eval_batch_size = dict(saved), spec.eval_batch_size
        bundle.notes = [f"only test files in {folder}: scoring with the saved model's normalisation"]
        return bundle
    if not has_test:
        x, y = data["train"]
        keep, held, note = hold_out_test(y, opts.test_size, seed, str(folder))
        data = {"train": (x[keep], y[keep]), "test": (x[held], y[held])}
        notes.append(note)
    tr_x = data["train"][0]
    if saved and saved.get("kind") == "image" and "mean" in saved:
        mean, std = [float(v) for v in saved["mean"]], [float(v) for v in saved["std"]]
    else:
        mean = tr_x.mean(dim=(0, 2, 3)).tolist()
        std = tr_x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
    return image_bundle(spec, seed, data["train"], data["test"], names, mean, std, str(folder), notes,
                        extra={"label_values": values})
