"""Any folder of images with one sub-folder per class (`train/` and `test/` inside, or one folder split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import PrunetuneError
from ..registry import DATA_SOURCES
from .base import DataBundle, balanced_subset, finish_bundle

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image(path: Path, size: int | tuple[int, int] | list[int], channels: int) -> np.ndarray:
    """Read one image as float32 [C, H, W] in [0, 1]; unreadable files raise PrunetuneError.

    `size` is a square side or (H, W); any image mode is converted to grey (1) or RGB (3).
    """
    from PIL import Image, UnidentifiedImageError

    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((w, h))  # PIL takes (width, height)
            arr = np.asarray(im, dtype=np.float32) / 255.0
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


@DATA_SOURCES.register("image_folder")
def image_folder(spec, seed: int) -> DataBundle:
    """Folder with class sub-folders (or train/ and test/ each with class sub-folders)."""
    if not spec.path:
        raise PrunetuneError("data.path: image_folder needs a folder; set data.path=/path/to/images")
    root = Path(spec.path)
    if not root.is_dir():
        raise PrunetuneError(f"data.path: folder {root} not found; set data.path to an image folder")
    size = spec.image_size or 32
    channels = 1 if spec.grayscale else 3
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
        tr_labels = [l for i, l in enumerate(labels) if i not in te]
        te_files = [f for i, f in enumerate(files) if i in te]
        te_labels = [l for i, l in enumerate(labels) if i in te]
    if not tr_files:
        raise PrunetuneError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

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
