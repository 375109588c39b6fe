"""In-memory labelled data, seeded splits and batching.

Example:
    >>> import torch
    >>> from prunetune.data.base import TensorData, balanced_subset
    >>> y = torch.tensor([0, 0, 1, 1, 1, 1])
    >>> sorted(y[balanced_subset(y, 4, seed=0)].tolist())
    [0, 0, 1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..errors import PrunetuneError

if TYPE_CHECKING:
    from ..recipe import DataSpec


@dataclass
class TensorData:
    """Inputs `x` (already preprocessed) and integer labels `y`, both tensors."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> "TensorData":
        return TensorData(self.x[idx], self.y[idx])


@dataclass
class DataBundle:
    """Train / validation / test splits plus what a saved model needs to preprocess new inputs."""

    train: TensorData
    val: TensorData
    test: TensorData
    class_names: list[str]
    input_shape: tuple[int, ...]
    preprocess: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 512

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def balanced_subset(y: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Indices of a seeded subset of `limit` items with classes as equal as possible."""
    if limit >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    per_class = [torch.nonzero(y == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    take = [0] * len(classes)
    remaining = limit
    # Round-robin so the subset stays balanced even when some classes are small.
    while remaining > 0:
        progressed = False
        for i, idx in enumerate(per_class):
            if remaining and take[i] < len(idx):
                take[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    chosen = torch.cat([idx[:t] for idx, t in zip(per_class, take)])
    return chosen.sort().values


def split_train_val(y: torch.Tensor, val_size: float | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split; `val_size` is a count (>= 1) or a fraction (< 1)."""
    n = len(y)
    if val_size is None:
        val_size = min(5000, max(1, n // 10))
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if n_val <= 0 or n_val >= n:
        raise PrunetuneError(
            f"data.val_size: {val_size} leaves no training or no validation data from {n} examples; "
            "use a fraction below 1 or a smaller count"
        )
    val_idx = balanced_subset(y, n_val, seed=seed + 7919)
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    return torch.nonzero(mask).flatten(), val_idx


def batches(
    data: TensorData, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches; slicing in-memory tensors is far faster than a DataLoader here."""
    for x, y, _ in indexed_batches(data, batch_size, shuffle, generator):
        yield x, y


def indexed_batches(
    data: TensorData, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (x, y, example indices); the indices let per-example caches (teacher logits) be used."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        if not shuffle:
            yield data.x[i : i + batch_size], data.y[i : i + batch_size], idx
        else:
            yield data.x[idx], data.y[idx], idx


def finish_bundle(
    spec: "DataSpec",
    seed: int,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    class_names: list[str],
    preprocess: dict[str, Any],
    where: str,
) -> DataBundle:
    """Common tail of every image source: checks, limits and the validation split."""
    if len(train_y) == 0:
        raise PrunetuneError(f"{where}: the training set is empty; point data.path at a folder with data")
    if len(test_y) == 0:
        raise PrunetuneError(f"{where}: the test set is empty; point data.path at a folder with data")
    k = len(class_names)
    for name, y in (("training", train_y), ("test", test_y)):
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise PrunetuneError(f"{where}: {name} labels outside 0..{k - 1}; check the label file")
    train = TensorData(train_x, train_y)
    if spec.limit:
        train = train.subset(balanced_subset(train.y, spec.limit, seed))
    tr_idx, val_idx = split_train_val(train.y, spec.val_size, seed)
    test = TensorData(test_x, test_y)
    if spec.test_limit:
        test = test.subset(balanced_subset(test.y, spec.test_limit, seed + 1))
    return DataBundle(
        train=train.subset(tr_idx),
        val=train.subset(val_idx),
        test=test,
        class_names=class_names,
        input_shape=tuple(train_x.shape[1:]),
        preprocess=preprocess,
        eval_batch_size=spec.eval_batch_size,
    )


def build_data(spec: "DataSpec", seed: int) -> DataBundle:
    """Build the data bundle of the registered source named by `spec.source`."""
    from .. import registry as R

    R.load_builtins()
    return R.DATA_SOURCES.get(spec.source, "data.source")(spec, seed)
