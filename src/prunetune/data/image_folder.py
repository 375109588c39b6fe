"""Any folder of images with one sub-folder per class (`train/` and `test/` inside, or one folder split).

Small folders are decoded once into one tensor. Large ones are streamed (`data.stream`): the data
holds an `ImageFiles` store (the file list, size, channels, mean/std) and each image is read from
disk when a batch that contains it is taken, so only one batch of pixels is in memory at a time.
"""

from __future__ import annotations

import math
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from ..data_spec import SourceOptions
from ..errors import PrunetuneError
from .base import DataBundle, LazyInputs, balanced_subset, data_source, finish_bundle

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# data.stream unset: stream when the decoded (float32) train + test images would take more than this.
STREAM_AUTO_BYTES = 1 << 30
# Streamed data: mean/std come from at most this many training images (a seeded sample), read in chunks.
STATS_SAMPLE = 10_000
STATS_CHUNK = 64


def load_image(path: Path, size: int | tuple[int, int] | list[int], channels: int, raw: bool = False) -> np.ndarray:
    """Read one image as float32 [C, H, W] in [0, 1] (`raw`: the uint8 pixels); unreadable files raise
    PrunetuneError.

    `size` is a square side or (H, W); any image mode is converted to grey (1) or RGB (3).
    """
    from PIL import Image, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((w, h))  # PIL takes (width, height)
            arr = np.array(im, dtype=np.uint8) if raw else np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PrunetuneError(f"{path}: unreadable image ({e.__class__.__name__}); remove or replace the file") from None
    except Image.DecompressionBombError as e:  # not an OSError: a header claiming hundreds of megapixels
        raise PrunetuneError(f"{path}: image too large to decode ({str(e).split(',')[0]}); "
                             "resize it or remove the file") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _scan(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise PrunetuneError(f"{folder}: no class sub-folders; put each class's images in its own sub-folder")
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((folder / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    return files, labels, classes


def _mapped_empty(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 tensor in its own anonymous memory map, unmapped when the tensor is freed.

    A batch allocated with malloc is, once freed, kept by glibc for reuse (blocks under 32 MB); small
    tensors a caller keeps (logits) split those holes, so the next batch lands above them and the
    resident set grew with every batch (to +100 MB over 6,400 images in batches of 64, measured).
    A mapping goes back to the system at once: one batch of pixels stays one batch of memory."""
    count = math.prod(shape)
    if count == 0:
        return torch.empty(shape)
    return torch.frombuffer(mmap.mmap(-1, count * 4), dtype=torch.float32).view(shape)


class ImageFiles(LazyInputs):
    """Images on disk, decoded (resized, converted, normalised) only when indexed: `files[idx]` gives
    the float32 [len(idx), C, H, W] batch a decoded tensor's `x[idx]` would, and keeps nothing."""

    def __init__(self, files: list[str] | tuple[str, ...], size: int, channels: int,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        self.files = tuple(str(f) for f in files)
        self.size, self.channels = size, channels
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), self.channels, self.size, self.size)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self.files)} files, {self.channels}x{self.size}x{self.size})"

    def _positions(self, idx: Any) -> list[int]:
        if isinstance(idx, slice):
            return list(range(*idx.indices(len(self.files))))
        if isinstance(idx, torch.Tensor):
            if idx.dtype == torch.bool:
                idx = torch.nonzero(idx).flatten()
            return [int(i) for i in idx.reshape(-1).tolist()]
        return [int(i) for i in np.asarray(idx).reshape(-1).tolist()]

    def normalised(self, mean: torch.Tensor, std: torch.Tensor) -> "ImageFiles":
        return ImageFiles(self.files, self.size, self.channels, mean, std)

    def subset(self, idx: torch.Tensor) -> "ImageFiles":
        return ImageFiles([self.files[i] for i in self._positions(idx)], self.size, self.channels, self.mean, self.std)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (isinstance(idx, torch.Tensor) and idx.dim() == 0):
            return self[[int(idx)]][0]
        n = len(self.files)
        pos = self._positions(idx)
        for i in pos:
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for {n} images")
        out = _mapped_empty((len(pos), self.channels, self.size, self.size))
        for j, i in enumerate(pos):  # uint8 into the batch: no float copy of each image
            out[j] = torch.from_numpy(load_image(Path(self.files[i]), self.size, self.channels, raw=True))
        out.div_(255.0)  # as load_image: float32(pixel) / 255
        if self.mean is not None:
            out.sub_(self.mean[None, :, None, None]).div_(self.std[None, :, None, None])
        return out


def _streamed_stats(files: ImageFiles, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of the training pixels, read STATS_CHUNK images at a time
    from at most STATS_SAMPLE images (a seeded sample when there are more)."""
    n = len(files)
    pick = torch.arange(n) if n <= STATS_SAMPLE else torch.randperm(
        n, generator=torch.Generator().manual_seed(seed + 15485863))[:STATS_SAMPLE].sort().values
    total = torch.zeros(files.channels, dtype=torch.float64)
    squares = torch.zeros(files.channels, dtype=torch.float64)
    for i in range(0, len(pick), STATS_CHUNK):
        x = files[pick[i : i + STATS_CHUNK]]
        total += x.sum(dim=(0, 2, 3)).double()
        squares += x.square_().sum(dim=(0, 2, 3)).double()
    count = len(pick) * files.size * files.size
    mean = total / count
    var = (squares - count * mean * mean) / max(1, count - 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)


class ImageFolderOptions(SourceOptions):
    """image_folder's own `data:` keys."""

    image_size: int | None = Field(None, gt=0, description="resize images to this square size (default 32)")
    grayscale: bool | None = Field(None, description="convert to one channel (default: keep RGB)")
    stream: bool | None = Field(
        None, description="read images from disk batch by batch instead of decoding all of them into memory "
        "(default: stream when the decoded train + test images would exceed 1 GiB)")


def streams(choice: bool | None, n_images: int, channels: int, size: int) -> bool:
    """data.stream, or (unset) whether the decoded float32 images would exceed STREAM_AUTO_BYTES."""
    if choice is not None:
        return bool(choice)
    return n_images * channels * size * size * 4 > STREAM_AUTO_BYTES


@data_source("image_folder", ImageFolderOptions)
def image_folder(spec, seed: int) -> DataBundle:
    """Folder with class sub-folders (or train/ and test/ each with class sub-folders)."""
    if not spec.path:
        raise PrunetuneError("data.path: image_folder needs a folder; set data.path=/path/to/images")
    root = Path(spec.path)
    if not root.is_dir():
        raise PrunetuneError(f"data.path: folder {root} not found; set data.path to an image folder")
    opts: ImageFolderOptions = spec.options
    size = opts.image_size or 32
    channels = 1 if opts.grayscale else 3
    if (root / "train").is_dir() and (root / "test").is_dir():
        tr_files, tr_labels, classes = _scan(root / "train")
        te_files, te_labels, te_classes = _scan(root / "test")
        if te_classes != classes:
            raise PrunetuneError(f"{root}: train/ and test/ have different class folders; make them the same")
    else:
        files, labels, classes = _scan(root)
        y = torch.tensor(labels)
        # No test folder: hold out a seeded, stratified 20% as the test set.
        te = set(balanced_subset(y, max(1, len(y) // 5), seed + 104729).tolist())
        tr_files = [f for i, f in enumerate(files) if i not in te]
        tr_labels = [lab for i, lab in enumerate(labels) if i not in te]
        te_files = [f for i, f in enumerate(files) if i in te]
        te_labels = [lab for i, lab in enumerate(labels) if i in te]
    if not tr_files:
        raise PrunetuneError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

    if streams(opts.stream, len(tr_files) + len(te_files), channels, size):
        tr_lazy, te_lazy = ImageFiles(tr_files, size, channels), ImageFiles(te_files, size, channels)
        mean, std = _streamed_stats(tr_lazy, seed)
        return finish_bundle(
            spec, seed, tr_lazy.normalised(mean, std), torch.tensor(tr_labels), te_lazy.normalised(mean, std),
            torch.tensor(te_labels), class_names=classes,
            preprocess={"kind": "image", "mean": mean.tolist(), "std": std.tolist(), "size": [size, size],
                        "channels": channels},
            where=str(root),
        )

    def stack(fs: list[Path]) -> torch.Tensor:
        return torch.from_numpy(np.stack([load_image(f, size, channels) for f in fs])) if fs else torch.empty(0, channels, size, size)

    tr_x, te_x = stack(tr_files), stack(te_files)
    mean = tr_x.mean(dim=(0, 2, 3))
    std = tr_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    norm = lambda x: (x - mean[None, :, None, None]) / std[None, :, None, None]  # noqa: E731
    return finish_bundle(
        spec, seed, norm(tr_x), torch.tensor(tr_labels), norm(te_x), torch.tensor(te_labels),
        class_names=classes,
        preprocess={"kind": "image", "mean": mean.tolist(), "std": std.tolist(), "size": [size, size], "channels": channels},
        where=str(root),
    )
