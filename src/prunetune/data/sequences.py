"""Labelled sequences of feature vectors from NPY or CSV files: the `sequences` source.

Files in `data.path` (or named by data.train_file / test_file / val_file, relative to data.path):

- NPY: `train.npy` float [sequences, time, features] with `train_labels.npy` [sequences] (integer or
  string labels); likewise `test.npy` + `test_labels.npy` and optionally `val.npy` + `val_labels.npy`.
  An optional `classes.txt` (one name per line) names integer labels 0..K-1.
- CSV (long format, one row per time step, with a header): a `sequence` column (the sequence id), an
  optional `step` column (the order within a sequence; else file order), a `label` column (or
  data.label_column; the same on every row of a sequence) and every other column a feature. Every
  sequence of a file has the same number of steps.

Without a test file, a seeded, class-stratified 20% of the training file is held out as the test set.
Features are standardised with the training split's per-feature mean and std (recorded in the saved
model's `preprocess`). Inputs are [N, time, features]; the feature width goes to the model factory as
`features` (DataBundle.model_kwargs), and a model built for another width is refused.

Example recipe:

    task: classification
    model: {name: lstm_classifier, kwargs: {hidden_size: 32}}
    data: {source: sequences, path: ./gestures}     # train.npy, train_labels.npy, test.npy, ...
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from ..errors import PrunetuneError
from .base import (DataBundle, FileOptions, data_source, find_file, finish_bundle, label_names, read_utf8,
                   split_train_val)

EXTS = (".npy", ".csv")
ID_COLUMNS = ("sequence", "sequence_id", "seq", "id")
STEP_COLUMNS = ("step", "t", "time")


def _folder(spec) -> Path | None:
    if not spec.path:
        return None
    root = Path(spec.path).expanduser()
    if not root.is_dir():
        raise PrunetuneError(f"data.path: folder {root} not found; give the folder with the sequence files")
    return root


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PrunetuneError(f"{path}: file not found; give the matching labels file") from None
    except (ValueError, OSError, EOFError) as e:  # pickled object arrays, truncated or foreign files
        detail = (str(e).splitlines() or [e.__class__.__name__])[0][:100]
        raise PrunetuneError(f"{path}: not a readable .npy array ({detail}); save it with numpy.save") from None


def _read_npy(path: Path) -> tuple[np.ndarray, list[str], list[int] | None]:
    x = _load_npy(path)
    if x.ndim != 3:
        raise PrunetuneError(f"{path}: array of shape {list(x.shape)}; sequences must be [sequences, time, features]")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise PrunetuneError(f"{path}: {x.dtype} values; sequences must be numbers")
    labels_path = path.with_name(f"{path.stem}_labels.npy")
    y = _load_npy(labels_path)
    if y.ndim != 1 or len(y) != len(x):
        raise PrunetuneError(f"{labels_path}: {list(y.shape)} labels for {len(x)} sequences in {path.name}; "
                             "give one label per sequence")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise PrunetuneError(f"{labels_path}: labels must be integers or strings, not fractional numbers")
        y = y.astype(np.int64)
    if y.dtype.kind not in "iuUS":
        raise PrunetuneError(f"{labels_path}: {y.dtype} labels; give integer or string labels")
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()]
    return x.astype(np.float32, copy=False), labels, None


def _read_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, list[str], list[int]]:
    """Long-format CSV -> [sequences, time, features], labels, and the line of each sequence's first row."""
    text = read_utf8(path)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise PrunetuneError(f"{path}: empty file; give a header line and one row per time step") from None
    except csv.Error as e:
        raise PrunetuneError(f"{path}:1: malformed CSV ({e})") from None
    cols = [c.strip() for c in header]
    lower = [c.lower() for c in cols]

    def col(names: tuple[str, ...], required: str | None) -> int | None:
        for n in names:
            if n.lower() in lower:
                return lower.index(n.lower())
        if required:
            raise PrunetuneError(f"{path}:1: no {required} column among {', '.join(cols)}; "
                                 f"name one {' / '.join(names)}")
        return None

    sid = col(ID_COLUMNS, "sequence id")
    step = col(STEP_COLUMNS, None)
    lab = col((label_column,) if label_column else ("label",), "label")
    feats = [i for i in range(len(cols)) if i not in (sid, step, lab)]
    if not feats:
        raise PrunetuneError(f"{path}:1: no feature columns besides {', '.join(cols)}; add at least one")
    seqs: dict[str, dict[str, Any]] = {}
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(cols):
                raise PrunetuneError(f"{path}:{line}: {len(row)} fields, the header has {len(cols)}; fix the row")
            key = row[sid].strip()
            try:
                values = [float(row[i]) for i in feats]
                order = float(row[step]) if step is not None else None
            except ValueError:
                bad = next(row[i] for i in ([*feats, step] if step is not None else feats) if not _is_float(row[i]))
                raise PrunetuneError(f"{path}:{line}: {bad.strip()[:30]!r} is not a number; features and steps must be numbers") from None
            if not all(np.isfinite(values)):
                raise PrunetuneError(f"{path}:{line}: a feature is NaN or infinite; give finite numbers")
            s = seqs.setdefault(key, {"label": row[lab].strip(), "line": line, "rows": []})
            if row[lab].strip() != s["label"]:
                raise PrunetuneError(f"{path}:{line}: sequence {key!r} has label {row[lab].strip()!r} here but "
                                     f"{s['label']!r} on line {s['line']}; one label per sequence")
            s["rows"].append((order if order is not None else len(s["rows"]), values))
    except csv.Error as e:
        raise PrunetuneError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None
    if not seqs:
        return np.zeros((0, 1, len(feats)), np.float32), [], []
    lengths = {len(s["rows"]) for s in seqs.values()}
    if len(lengths) > 1:
        first = next(iter(seqs.values()))
        odd = next((k, s) for k, s in seqs.items() if len(s["rows"]) != len(first["rows"]))
        raise PrunetuneError(f"{path}:{odd[1]['line']}: sequence {odd[0]!r} has {len(odd[1]['rows'])} steps but the first "
                             f"has {len(first['rows'])}; every sequence of a file needs the same number of steps")
    x = np.array([[v for _, v in sorted(s["rows"], key=lambda r: r[0])] for s in seqs.values()], dtype=np.float32)
    return x, [s["label"] for s in seqs.values()], [s["line"] for s in seqs.values()]


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_sequences(path: Path, label_column: str | None = None) -> tuple[np.ndarray, list[str], list[int] | None]:
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, label_column)
    raise PrunetuneError(f"{path}: cannot tell the format from the name {path.name!r}; give a .npy or .csv file")


def _class_names(root: Path | None, train_labels: list[str]) -> list[str] | None:
    """classes.txt (names of integer labels 0..K-1), if present."""
    if root is None or not (root / "classes.txt").is_file():
        return None
    path = root / "classes.txt"
    names = [n.strip() for n in path.read_text(encoding="utf-8").splitlines() if n.strip()]
    if not names or len(set(names)) != len(names):
        raise PrunetuneError(f"{path}: give one distinct class name per line")
    return names


def _encode(path: Path, labels: list[str], lines: list[int] | None, names: list[str], by_index: bool) -> torch.Tensor:
    index = {str(i): i for i in range(len(names))} if by_index else {n: i for i, n in enumerate(names)}
    for i, label in enumerate(labels):
        if label not in index:
            where = f"{path}:{lines[i]}" if lines else f"{path} (sequence {i})"
            shown = ", ".join(list(index)[:20]) + (", ..." if len(index) > 20 else "")
            raise PrunetuneError(f"{where}: label {label!r} is not among the training labels ({shown}); "
                                 "fix the label or add examples of it to the training file")
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def check_width(path: Path, width: int, model) -> None:
    """Refuse a model (recipe's model.kwargs, or a saved model's) built for another feature width."""
    want = (getattr(model, "kwargs", None) or {}).get("features") if model is not None else None
    if want is not None and int(want) != width:
        raise PrunetuneError(f"{path}: feature width {width} but the model expects {int(want)} features "
                             "(model.kwargs.features or the saved model); give data with the model's features")


class SequenceOptions(FileOptions):
    """sequences' own `data:` keys."""

    label_column: str | None = Field(None, description="CSV: column with the label (default: label)")


@data_source("sequences", SequenceOptions,
             "labelled feature sequences: NPY [N, time, features] + labels, or long-format CSV")
def sequences(spec, seed: int, model=None, saved: dict | None = None) -> DataBundle:
    """`saved`: a saved model's preprocess; its feature mean / std standardise the data (eval, refine)."""
    opts: SequenceOptions = spec.options
    root = _folder(spec)
    train_path = find_file(root, opts.train_file, ("train",), "train_file", True, EXTS, "train.npy / train.csv")
    test_path = find_file(root, opts.test_file, ("test",), "test_file", False, EXTS, "test.npy / test.csv")
    val_path = find_file(root, opts.val_file, ("val", "dev"), "val_file", False, EXTS, "val.npy / val.csv")
    x_tr, l_tr, ln_tr = read_sequences(train_path, opts.label_column)
    if len(l_tr) == 0:
        raise PrunetuneError(f"{train_path}: the training set is empty; give at least one sequence")
    width = int(x_tr.shape[2])
    check_width(train_path, width, model)
    names = _class_names(root, l_tr)
    by_index = names is not None
    names = names or label_names(l_tr)
    y_tr = _encode(train_path, l_tr, ln_tr, names, by_index)
    x_tr_t = torch.from_numpy(np.ascontiguousarray(x_tr))
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, path in (("test", test_path), ("val", val_path)):
        if path is None:
            continue
        x, labels, lines = read_sequences(path, opts.label_column)
        if x.shape[2] != width:
            raise PrunetuneError(f"{path}: feature width {x.shape[2]} but the training file {train_path.name} has {width}; "
                                 "give files with the same features")
        if len(labels) == 0:
            raise PrunetuneError(f"{path}: the {key} set is empty; give at least one sequence")
        splits[key] = (torch.from_numpy(np.ascontiguousarray(x)), _encode(path, labels, lines, names, by_index))
    if "test" not in splits:  # hold out a seeded, stratified 20% of the training file
        rest, held = split_train_val(y_tr, 0.2, seed + 104729)
        splits["test"] = (x_tr_t[held], y_tr[held])
        x_tr_t, y_tr = x_tr_t[rest], y_tr[rest]
    if saved and saved.get("kind") == "sequence" and "mean" in saved and "std" in saved:
        # The statistics the model was trained with, not the new files' (a saved model's input scale is fixed).
        mean = torch.tensor(saved["mean"], dtype=torch.float64)
        std = torch.tensor(saved["std"], dtype=torch.float64)
        if mean.numel() != width or std.numel() != width:
            raise PrunetuneError(f"{train_path}: feature width {width} but the saved model standardises "
                                 f"{mean.numel()} features; give data with the model's features")
    else:
        flat = x_tr_t.reshape(-1, width).double()
        mean, std = flat.mean(0), flat.std(0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - mean) / std).float()

    val = (norm(splits["val"][0]), splits["val"][1]) if "val" in splits else None
    bundle = finish_bundle(
        spec, seed, norm(x_tr_t), y_tr, norm(splits["test"][0]), splits["test"][1], class_names=names,
        preprocess={"kind": "sequence", "features": width, "mean": [round(float(v), 8) for v in mean],
                    "std": [round(float(v), 8) for v in std]},
        where=str(train_path), val=val,
    )
    bundle.model_kwargs = {"features": width}
    return bundle
