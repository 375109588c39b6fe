"""Any folder of images with one sub-folder per class (`train/` and `test/` inside, or one folder split).

`data.path` may also be an archive of such a folder (.tar.gz, .tgz, .tar), or a folder holding
`train.tar.gz` and `test.tar.gz` (CIFAR-10 in ../shared/data/cifar10): each is unpacked once into the
cache (archives.py) and read like any folder. Images keep their own size unless `data.image_size`
resizes them; a folder of mixed sizes needs it.

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
from pydantic import Field, field_validator

from ..data_spec import SourceOptions
from ..errors import PrunetuneError
from .archives import ARCHIVE_SUFFIXES, content_root, is_archive, unpacked
from .base import DataBundle, LazyInputs, balanced_subset, data_source, finish_bundle

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# data.stream unset: stream when the decoded (float32) train + test images would take more than this.
STREAM_AUTO_BYTES = 1 << 30
# Streamed data: mean/std come from at most this many training images (a seeded sample), read in chunks.
STATS_SAMPLE = 10_000
STATS_CHUNK = 64


def load_image(path: Path, size: int | tuple[int, int] | list[int], channels: int, raw: bool = False,
               same_as: str | None = None) -> np.ndarray:
    """Read one image as float32 [C, H, W] in [0, 1] (`raw`: the uint8 pixels); unreadable files raise
    PrunetuneError.

    `size` is a square side or (H, W); any image mode is converted to grey (1) or RGB (3). With
    `same_as` (the first image's path; no data.image_size) an image of another size is refused, not resized.
    """
    from PIL import Image, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    try:
        with Image.open(path) as im:
            if same_as is not None and im.size != (w, h):
                raise PrunetuneError(f"{path}: {im.size[0]}x{im.size[1]} image among {w}x{h} ones ({same_as}); "
                                     "set data.image_size to resize all images to one size")
            im = im.convert("L" if channels == 1 else "RGB").resize((w, h))  # PIL takes (width, height)
            arr = np.array(im, dtype=np.uint8) if raw else np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PrunetuneError(f"{path}: unreadable image ({e.__class__.__name__}); remove or replace the file") from None
    except Image.DecompressionBombError as e:  # not an OSError: a header claiming hundreds of megapixels
        raise PrunetuneError(f"{path}: image too large to decode ({str(e).split(',')[0]}); "
                             "resize it or remove the file") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _scan(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class indices and the class names (sorted sub-folder names) of `folder`."""
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
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None, same_as: str | None = None) -> None:
        self.files = tuple(str(f) for f in files)
        self.size, self.channels = size, channels
        self.mean, self.std = mean, std
        self.same_as = same_as  # no data.image_size: every image must have the first one's size

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
        return ImageFiles(self.files, self.size, self.channels, mean, std, self.same_as)

    def subset(self, idx: torch.Tensor) -> "ImageFiles":
        return ImageFiles([self.files[i] for i in self._positions(idx)], self.size, self.channels, self.mean, self.std,
                          self.same_as)

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
            out[j] = torch.from_numpy(load_image(Path(self.files[i]), self.size, self.channels, raw=True,
                                                       same_as=self.same_as))
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

    image_size: int | None = Field(
        None, gt=0, description="resize images to this square size (default: their own size; all must be one square size)")
    grayscale: bool | None = Field(None, description="convert to one channel (default: keep RGB)")
    stream: bool | None = Field(
        None, description="read images from disk batch by batch instead of decoding all of them into memory "
        "(default: stream when the decoded train + test images would exceed 1 GiB)")
    mean: list[float] | None = Field(None, min_length=1, description="per-channel mean to normalise with, pixels in "
                                     "[0, 1] (default: the training images')")
    std: list[float] | None = Field(None, min_length=1, description="per-channel std to normalise with (default: the "
                                    "training images')")

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and min(v) <= 0:
            raise ValueError("every std must be above 0")
        return v


def streams(choice: bool | None, n_images: int, channels: int, size: int) -> bool:
    """data.stream, or (unset) whether the decoded float32 images would exceed STREAM_AUTO_BYTES."""
    if choice is not None:
        return bool(choice)
    return n_images * channels * size * size * 4 > STREAM_AUTO_BYTES


def _packed(folder: Path, split: str) -> Path | None:
    for suffix in ARCHIVE_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def image_roots(path: str | None, source: str = "image_folder") -> tuple[Path, Path | None, str]:
    """(training folder, test folder or None to hold out 20 %, what errors call it) for `data.path`:
    a folder, an archive of one, or a folder with train and test archives (each unpacked once)."""
    if not path:
        raise PrunetuneError(f"data.path: {source} needs a folder; set data.path=/path/to/images")
    root = Path(path).expanduser()
    if root.is_file():
        if not is_archive(root):
            raise PrunetuneError(f"data.path: {root} is a file; give an image folder or a .tar.gz/.tgz/.tar archive of one")
        root = content_root(unpacked(root))
    elif not root.is_dir():
        raise PrunetuneError(f"data.path: folder {root} not found; set data.path to an image folder or archive")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / "train", root / "test", path
    train, test = _packed(root, "train"), _packed(root, "test")
    if train is not None and test is not None:
        return content_root(unpacked(train)), content_root(unpacked(test)), path
    return root, None, path


def _first_size(files: list[Path]) -> int:
    """The side of the first image (data.image_size unset: every image keeps it); refused unless square."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(files[0]) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PrunetuneError(f"{files[0]}: unreadable image ({e.__class__.__name__}); remove or replace the file") from None
    if w != h:
        raise PrunetuneError(f"{files[0]}: {w}x{h} image, not square; set data.image_size to resize all images to one "
                             "square size")
    return w


def _given(values: list[float] | None, channels: int, key: str) -> torch.Tensor | None:
    if values is None:
        return None
    if len(values) != channels:
        raise PrunetuneError(f"data.{key}: {len(values)} values for {channels}-channel images; give one per channel")
    return torch.tensor(values, dtype=torch.float32)


@data_source("image_folder", ImageFolderOptions)
def image_folder(spec, seed: int) -> DataBundle:
    """Folder with class sub-folders (or train/ and test/ each with class sub-folders), or an archive of one."""
    return read_image_folders(spec, seed, *image_roots(spec.path))


def read_image_folders(spec, seed: int, train_dir: Path, test_dir: Path | None, where: str) -> DataBundle:
    """The bundle of class-folder images in `train_dir` (and `test_dir`; None: a seeded 20 % held out)."""
    opts: ImageFolderOptions = spec.options
    channels = 1 if opts.grayscale else 3
    if test_dir is not None:
        tr_files, tr_labels, classes = _scan(train_dir)
        te_files, te_labels, te_classes = _scan(test_dir)
        if te_classes != classes:
            raise PrunetuneError(f"{where}: train/ and test/ have different class folders; make them the same")
    else:
        files, labels, classes = _scan(train_dir)
        y = torch.tensor(labels)
        # No test folder: hold out a seeded, stratified 20% as the test set.
        te = set(balanced_subset(y, max(1, len(y) // 5), seed + 104729).tolist())
        tr_files = [f for i, f in enumerate(files) if i not in te]
        tr_labels = [lab for i, lab in enumerate(labels) if i not in te]
        te_files = [f for i, f in enumerate(files) if i in te]
        te_labels = [lab for i, lab in enumerate(labels) if i in te]
    if not tr_files:
        raise PrunetuneError(f"{where}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    same_as = None if opts.image_size else str(tr_files[0])
    size = opts.image_size or _first_size(tr_files)
    given_mean, given_std = _given(opts.mean, channels, "mean"), _given(opts.std, channels, "std")

    if streams(opts.stream, len(tr_files) + len(te_files), channels, size):
        tr_lazy = ImageFiles(tr_files, size, channels, same_as=same_as)
        te_lazy = ImageFiles(te_files, size, channels, same_as=same_as)
        if given_mean is None or given_std is None:
            mean, std = _streamed_stats(tr_lazy, seed)
        mean = given_mean if given_mean is not None else mean
        std = given_std if given_std is not None else std
        return finish_bundle(
            spec, seed, tr_lazy.normalised(mean, std), torch.tensor(tr_labels), te_lazy.normalised(mean, std),
            torch.tensor(te_labels), class_names=classes,
            preprocess={"kind": "image", "mean": mean.tolist(), "std": std.tolist(), "size": [size, size],
                        "channels": channels},
            where=where,
        )

    def stack(fs: list[Path]) -> torch.Tensor:
        # uint8 pixels straight into one float32 tensor (no list of per-image arrays, then a copy of them all)
        out = torch.empty(len(fs), channels, size, size)
        for j, f in enumerate(fs):
            out[j] = torch.from_numpy(load_image(f, size, channels, raw=True, same_as=same_as))
        return out.div_(255.0)  # as load_image: float32(pixel) / 255

    tr_x, te_x = stack(tr_files), stack(te_files)
    mean = given_mean if given_mean is not None else tr_x.mean(dim=(0, 2, 3))
    std = given_std if given_std is not None else tr_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    for x in (tr_x, te_x):  # in place: 50,000 CIFAR images are 600 MB as float32
        x.sub_(mean[None, :, None, None]).div_(std[None, :, None, None])
    return finish_bundle(
        spec, seed, tr_x, torch.tensor(tr_labels), te_x, torch.tensor(te_labels),
        class_names=classes,
        preprocess={"kind": "image", "mean": mean.tolist(), "std": std.tolist(), "size": [size, size], "channels": channels},
        where=where,
    )
