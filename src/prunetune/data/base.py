"""In-memory labelled data, seeded splits and batching.

Example:
    >>> import torch
    >>> from prunetune.data.base import TensorData, balanced_subset
    >>> y = torch.tensor([0, 0, 1, 1, 1, 1])
    >>> sorted(y[balanced_subset(y, 4, seed=0)].tolist())
    [0, 0, 1, 1]
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from pydantic import Field

from ..data_spec import DataSpec, SourceOptions
from ..errors import PrunetuneError
from ..progress import progress
from ..registry import DATA_SOURCES
from .subsets import LIMIT_WAYS, balanced_subset, limited, stratified_subset  # noqa: F401  (balanced_subset: re-exported)


def data_source(name: str, options: type[SourceOptions] = SourceOptions,
                doc: str | None = None) -> Callable[[Callable[..., "DataBundle"]], Callable[..., "DataBundle"]]:
    """Register a data source with the model of its own `data:` keys (the recipe validates them with it;
    the source reads them as `spec.options`)."""

    def deco(fn: Callable[..., "DataBundle"]) -> Callable[..., "DataBundle"]:
        fn.options = options
        return DATA_SOURCES.register(name, doc)(fn)

    return deco


class FileOptions(SourceOptions):
    """Sources that read one file per split: each named here (relative to data.path), else found in data.path."""

    train_file: str | None = Field(None, description="training file (default: train.* in data.path)")
    val_file: str | None = Field(
        None, description="validation file (default: dev.*/val.* in data.path, else split from train)")
    test_file: str | None = Field(None, description="test file (default: test.* in data.path)")


class HoldoutOptions(SourceOptions):
    """Sources that hold a test split out of the training data when the data has none."""

    test_size: float | None = Field(
        None, gt=0, description="no test file: the test split held out of the training data (seeded, stratified): "
        "a count (>=1) or a fraction (<1); default 0.2")


class LazyInputs:
    """Inputs kept where they are (files on disk) and decoded only when a batch is taken: streaming data.

    A subclass gives `__len__`, `shape` (as a [N, ...] tensor's), `__getitem__` (an int, a slice or a 1-D
    int tensor of indices -> the decoded, preprocessed tensor, as indexing a tensor would give) and
    `subset(idx)` (a lazy store of the selected items; nothing is decoded)."""

    shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, idx: Any) -> torch.Tensor:
        raise NotImplementedError

    def subset(self, idx: torch.Tensor) -> "LazyInputs":
        raise NotImplementedError


@dataclass
class TensorData:
    """Inputs `x` (already preprocessed) and integer labels `y`.

    `x` is one tensor [N, ...] (images), a `LazyInputs` store (streamed images: `x[idx]` decodes just
    those items) or a dict of [N, L] tensors (text: `input_ids`, `attention_mask`, ... padded to the
    longest example). `take` cuts a batch and, for text, trims the padding to the longest example in
    that batch (dynamic padding).
    """

    x: Any
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_text(self) -> bool:
        return isinstance(self.x, dict)

    def lengths(self) -> torch.Tensor:
        """Real (unpadded) length of every text example; 1 for non-text inputs."""
        if not self.is_text or "attention_mask" not in self.x:
            return torch.ones(len(self), dtype=torch.long)
        return self.x["attention_mask"].sum(1)

    def take(self, idx: torch.Tensor | slice) -> Any:
        if not self.is_text:
            return self.x[idx]
        out = {k: v[idx] for k, v in self.x.items()}
        mask = out.get("attention_mask")
        if mask is not None and mask.shape[0]:
            longest = int(mask.sum(1).max())
            out = {k: v[:, :max(1, longest)] for k, v in out.items()}
        return out

    def head(self, n: int) -> Any:
        return self.take(slice(0, n))

    def subset(self, idx: torch.Tensor) -> "TensorData":
        if isinstance(self.x, LazyInputs):
            return TensorData(self.x.subset(idx), self.y[idx])  # still lazy: nothing decoded
        x = {k: v[idx] for k, v in self.x.items()} if self.is_text else self.x[idx]
        return TensorData(x, self.y[idx])


@dataclass
class DataBundle:
    """Train / validation / test splits plus what a saved model needs to preprocess new inputs."""

    train: TensorData
    val: TensorData
    test: TensorData
    class_names: list[str]
    input_shape: tuple[int, ...]
    preprocess: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 128
    # Arguments the data decides for the model factory (vocabulary size, users/items, feature width),
    # passed under the recipe's model.kwargs and stored in the manifest so a saved model rebuilds alike.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # How the splits were made (a held-out test split, data.limit), one line each for the run's data summary.
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def holdout(n: int, size: float, seed: int, labels: torch.Tensor | None = None,
            field: str = "data.val_size") -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of a seeded split of `n` examples; `size` is a count (>= 1) or a fraction
    (< 1). With class `labels` the held-out part is stratified (the classes' original proportions), else a
    uniform random subset."""
    k = int(round(size * n)) if size < 1 else int(size)
    if k <= 0 or k >= n:
        raise PrunetuneError(f"{field}: {size} leaves no training or no held-out data from {n} examples; "
                             "use a fraction below 1 or a smaller count")
    if labels is not None:
        held = stratified_subset(labels, k, seed=seed)
    else:
        held = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


def label_names(labels: list[str]) -> list[str]:
    """Sorted unique labels, numerically when all are integers."""
    names = set(labels)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def hold_out_test(y: torch.Tensor, size: float | None, seed: int, what: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train, test) indices of data with no test split: a seeded, stratified `size` (data.test_size; default
    20 %) held out as the test split, and the note saying so (`what` names the data)."""
    size = 0.2 if size is None else size
    keep, held = holdout(len(y), size, seed + 104729, labels=y, field="data.test_size")
    return keep, held, (f"no test split: {len(held):,} of {len(y):,} examples of {what} held out as the test set "
                        f"(data.test_size {size:g}, seeded, stratified)")


def default_val_size(n: int) -> int:
    return min(5000, max(1, n // 10))


def split_train_val(y: torch.Tensor, val_size: float | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split stratified by class (original proportions); `val_size` is a count (>= 1) or a fraction (< 1)."""
    size = default_val_size(len(y)) if val_size is None else val_size
    return holdout(len(y), size, seed + 7919, labels=y)


def batches(
    data: TensorData, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches; slicing in-memory tensors is far faster than a DataLoader here.

    A pass in order is an evaluation (validation, test scoring): on a terminal it shows a bar once it
    has run for a second (10,000 test images take a minute on a slow CPU)."""
    it = ((x, y) for x, y, _ in indexed_batches(data, batch_size, shuffle, generator))
    if shuffle:
        yield from it
    else:
        yield from progress(it, math.ceil(len(data) / batch_size), f"evaluate {len(data):,} examples", delay=1.0)


def indexed_batches(
    data: TensorData, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
    """Yield (x, y, example indices); the indices let per-example caches (teacher logits) be used.

    Text is shuffled in length-grouped batches: a random order is cut into chunks of 50 batches,
    each chunk is sorted by length and split, and the batches are shuffled, so each batch pads to
    similar lengths (as Hugging Face's LengthGroupedSampler does).
    """
    n = len(data)
    if not shuffle:
        for i in range(0, n, batch_size):
            yield data.take(slice(i, i + batch_size)), data.y[i : i + batch_size], torch.arange(i, min(n, i + batch_size))
        return
    order = torch.randperm(n, generator=generator)
    if data.is_text:
        lengths = data.lengths()
        chunk = batch_size * 50
        groups = []
        for c in range(0, n, chunk):
            part = order[c : c + chunk]
            part = part[torch.argsort(lengths[part], descending=True, stable=True)]
            groups.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        perm = torch.randperm(len(groups), generator=generator)
        batches_idx = [groups[int(j)] for j in perm]
    else:
        batches_idx = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    for idx in batches_idx:
        yield data.take(idx), data.y[idx], idx


def finish_bundle(
    spec: DataSpec,
    seed: int,
    train_x: Any,
    train_y: torch.Tensor,
    test_x: Any,
    test_y: torch.Tensor,
    class_names: list[str],
    preprocess: dict[str, Any],
    where: str,
    val: tuple[Any, torch.Tensor] | None = None,
    notes: list[str] | None = None,
) -> DataBundle:
    """Common tail of every source: checks, limits and the validation split.

    `val` is the source's own validation set (e.g. SST-2 dev); without one, a seeded stratified
    split is carved from train (`data.val_size`), after `data.limit` cut the training data.
    `notes` (how the source split its files) go first in the bundle's notes."""
    if len(train_y) == 0:
        raise PrunetuneError(f"{where}: the training set is empty; point data.path at a folder with data")
    if len(test_y) == 0:
        raise PrunetuneError(f"{where}: the test set is empty; point data.path at a folder with data")
    k = len(class_names)
    splits = [("training", train_y), ("test", test_y)] + ([("validation", val[1])] if val is not None else [])
    for name, y in splits:
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise PrunetuneError(f"{where}: {name} labels outside 0..{k - 1}; check the label file")
    if len(torch.unique(train_y)) < 2:  # it would train to 100 % and learn nothing
        raise PrunetuneError(f"{where}: the training data has a single class ({class_names[int(train_y[0])]!r}); a "
                             "classifier needs two or more: add examples of another class (image folders: one "
                             "sub-folder per class)")
    train = TensorData(train_x, train_y)
    notes = list(notes or [])
    way = getattr(spec, "limit_classes", "equal")
    if spec.limit:
        train = train.subset(limited(train.y, spec.limit, seed, way))
    if val is not None:
        val_data, train_data = TensorData(*val), train
    else:
        tr_idx, val_idx = split_train_val(train.y, spec.val_size, seed)
        val_data, train_data = train.subset(val_idx), train.subset(tr_idx)
    split = (f"{len(train_data):,} train / {len(val_data):,} validation "
             + ("(the validation file)" if val is not None else "(validation carved from train, stratified)"))
    if spec.limit:
        notes.append(f"limit {spec.limit:,} train examples, {LIMIT_WAYS[way]}, before the validation split: "
                     f"{len(train_y):,} -> {len(train):,} -> {split}")
    test = TensorData(test_x, test_y)
    if spec.test_limit:
        test = test.subset(limited(test.y, spec.test_limit, seed + 1, way))
        notes.append(f"test_limit {spec.test_limit:,}, {LIMIT_WAYS[way]}: {len(test_y):,} -> {len(test):,} test")
    return DataBundle(
        train=train_data,
        val=val_data,
        test=test,
        class_names=class_names,
        input_shape=(tuple(train_x["input_ids"].shape[1:]) if isinstance(train_x, dict) else tuple(train_x.shape[1:])),
        preprocess=preprocess,
        eval_batch_size=spec.eval_batch_size,
        notes=notes,
    )


def find_file(root: Path | None, given: str | None, stems: tuple[str, ...], field: str, required: bool,
              exts: tuple[str, ...] | dict[str, str], what: str) -> Path | None:
    """The file `data.<field>` names (relative to data.path), else the first `<stem><ext>` in data.path.

    `what` names the files looked for in the error (e.g. "train.tsv/.csv/.jsonl"); a named file that
    does not exist is refused naming the field."""
    if given:
        p = Path(given).expanduser()
        p = p if p.is_absolute() or root is None else root / p
        if not p.is_file():
            raise PrunetuneError(f"data.{field}: {p} not found; check data.path and data.{field}")
        return p
    for stem in stems:
        for ext in exts:
            if root is not None and (root / f"{stem}{ext}").is_file():
                return root / f"{stem}{ext}"
    if required:
        where = f"in {root}" if root else "(no data.path)"
        raise PrunetuneError(f"data.{field}: no {what} {where}; set data.{field} or data.path")
    return None


def file_format(fmt: str, path: Path, formats: dict[str, str]) -> str:
    """`fmt` (data.format), or with "auto" the format `formats` maps the file's extension to."""
    if fmt != "auto":
        return fmt
    if path.suffix.lower() not in formats:
        names = ", ".join(dict.fromkeys(formats.values()))
        raise PrunetuneError(f"{path}: cannot tell the format from the name {path.name!r}; set data.format ({names})")
    return formats[path.suffix.lower()]


def read_utf8(path: Path) -> str:
    """A text file's contents (a UTF-8 byte-order mark dropped), or one line naming the file and the fix."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PrunetuneError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise PrunetuneError(f"{path}: cannot read ({e.strerror})") from None


def build_data(spec: DataSpec, seed: int, model: Any = None, saved: dict[str, Any] | None = None) -> DataBundle:
    """Build the data bundle of the registered source named by `spec.source`.

    Sources that declare a `model` parameter (text: the tokenizer defaults to the model's) get the
    recipe's model spec. Sources that declare `saved` get a saved model's `preprocess` (eval, refine):
    they preprocess new data exactly as the model was trained (feature statistics, id tables)
    instead of deriving it again from the files."""
    source = DATA_SOURCES.get(spec.source, "data.source")
    try:
        params = inspect.signature(source).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs: dict[str, Any] = {}
    if "model" in params:
        kwargs["model"] = model
    if "saved" in params and saved is not None:
        kwargs["saved"] = saved
    return source(spec, seed, **kwargs)
