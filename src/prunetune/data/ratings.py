"""User-item-rating triples for recommenders: the `ratings` source (task `regression`).

Files in `data.path` (or data.train_file / test_file / val_file, relative to data.path): `train.*`
(or `ratings.*`), optionally `test.*` and `val.*` / `dev.*`, each `.csv`, `.tsv`, `.dat`, `.data` or
`.txt`. One triple per line: `user, item, rating` (further columns, e.g. a timestamp, are ignored).
The delimiter is a comma (.csv), a tab (.tsv), else the first of `::`, tab, comma or whitespace found
in the first line. A first line whose rating is not a number is a header: its `user` / `user_id` /
`userId`, `item` / `item_id` / `itemId` / `movieId` and `rating` columns are used.

Ids: when every id of a kind (users, items) in the training file is a non-negative integer, the id is
the table row (table size: the largest id + 1); otherwise ids are strings, numbered in order of first
appearance in the training file. An id in the validation or test file beyond the table (or a string id
the training file never had) is refused, naming file:line. `num_users`, `num_items` and `rating_mean`
go to the model factory (DataBundle.model_kwargs); a model whose table is smaller than the data's ids
(model.kwargs or a saved model) is refused the same way.

Without a test file a seeded 20% of the training triples is the test set; without a validation file a
seeded `data.val_size` of the rest (default min(5000, 10%)). `data.limit` / `test_limit` take seeded
random subsets. Inputs are [N, 2] long (user, item); targets are float ratings.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PrunetuneError
from .base import DataBundle, FileOptions, TensorData, data_source, default_val_size, find_file, holdout, read_utf8

EXTS = (".csv", ".tsv", ".dat", ".data", ".txt")
USER = ("user", "user_id", "userid", "uid")
ITEM = ("item", "item_id", "itemid", "movie", "movie_id", "movieid", "iid")
RATING = ("rating", "ratings", "score", "stars")


@dataclass
class Triples:
    path: Path
    users: list[str]
    items: list[str]
    ratings: list[float]
    lines: list[int]


def _split(line: str, sep: str | None) -> list[str]:
    if sep is None:
        return line.split()
    if sep == ",":
        return next(csv.reader(io.StringIO(line)))
    return line.split(sep)


def _separator(path: Path, first: str) -> str | None:
    ext = path.suffix.lower()
    if ext == ".csv":
        return ","
    if ext == ".tsv":
        return "\t"
    for sep in ("::", "\t", ","):
        if sep in first:
            return sep
    return None


def _number(v: str) -> float | None:
    try:
        f = float(v)
    except ValueError:
        return None
    return f


def read_triples(path: Path) -> Triples:
    text = read_utf8(path)
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    sep = _separator(path, first)
    cols = (0, 1, 2)
    out = Triples(path, [], [], [], [])
    header_seen = False
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            fields = [f.strip() for f in _split(line, sep)]
        except csv.Error as e:
            raise PrunetuneError(f"{path}:{no}: malformed CSV ({e})") from None
        if not header_seen and not out.lines and len(fields) >= 3 and _number(fields[2]) is None:
            header_seen = True
            lower = [f.lower() for f in fields]
            found = [next((lower.index(n) for n in names if n in lower), None) for names in (USER, ITEM, RATING)]
            if None in found:
                missing = ("user", "item", "rating")[found.index(None)]
                raise PrunetuneError(f"{path}:{no}: rating {fields[2][:30]!r} is not a number, and as a header the line "
                                     f"has no {missing} column; give user, item, rating triples (a header may name them)")
            cols = tuple(found)
            continue
        header_seen = True
        if len(fields) <= max(cols):
            raise PrunetuneError(f"{path}:{no}: {len(fields)} field(s); each line needs user, item and rating")
        user, item, raw = fields[cols[0]], fields[cols[1]], fields[cols[2]]
        rating = _number(raw)
        if rating is None or not math.isfinite(rating):
            raise PrunetuneError(f"{path}:{no}: rating {raw[:30]!r} is not a finite number")
        if not user or not item:
            raise PrunetuneError(f"{path}:{no}: empty user or item id")
        out.users.append(user)
        out.items.append(item)
        out.ratings.append(rating)
        out.lines.append(no)
    return out


class IdTable:
    """Ids of one kind (users or items) -> table rows, decided by the training file."""

    def __init__(self, kind: str, train: Triples, ids: list[str], size: int | None, known: list[str] | None = None) -> None:
        self.kind, self.train = kind, train
        self.integer = known is None and all(re.fullmatch(r"\d+", i) for i in ids)
        if known is not None:  # a saved model's table: its ids keep their rows, whatever the new files hold
            self.index = {i: n for n, i in enumerate(known)}
            self.size = len(known)
        elif self.integer:
            self.index: dict[str, int] = {}
            self.size = max(int(i) for i in ids) + 1
        else:
            self.index = {}
            for i in ids:
                self.index.setdefault(i, len(self.index))
            self.size = len(self.index)
        self.model_size = size  # the model's table, when the recipe or a saved model fixes it

    @property
    def rows(self) -> int:
        return self.model_size if self.model_size is not None else self.size

    def encode(self, data: Triples, ids: list[str]) -> torch.Tensor:
        out = []
        for i, line in zip(ids, data.lines):
            if self.integer:
                if not re.fullmatch(r"\d+", i) or int(i) >= self.rows:
                    raise PrunetuneError(self._beyond(data.path, line, i))
                out.append(int(i))
            else:
                row = self.index.get(i)
                if row is None or row >= self.rows:
                    raise PrunetuneError(self._beyond(data.path, line, i))
                out.append(row)
        return torch.tensor(out, dtype=torch.long)

    def _beyond(self, path: Path, line: int, i: str) -> str:
        if self.model_size is not None and (self.integer or i in self.index):
            return (f"{path}:{line}: {self.kind} id {i[:40]!r} is beyond the model's table of {self.model_size} "
                    f"{self.kind}s (model.kwargs.num_{self.kind}s or the saved model); use data whose ids fit the model")
        if self.integer:
            return (f"{path}:{line}: {self.kind} id {i[:40]!r} is beyond the table of {self.size} {self.kind}s "
                    f"(ids 0..{self.size - 1} of the training file {self.train.path.name}); fix the id or add it to the training file")
        return (f"{path}:{line}: {self.kind} id {i[:40]!r} does not appear in the training file {self.train.path.name}, "
                f"which numbers the {self.size} {self.kind}s of the table; fix the id or add it to the training file")


def _subset(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


@data_source("ratings", FileOptions, "user-item-rating triples (CSV / TSV / MovieLens .dat) for recommenders")
def ratings(spec, seed: int, model=None, saved: dict | None = None) -> DataBundle:
    """`saved`: a saved model's preprocess; string ids keep the rows the model was trained with (eval, refine)."""
    root = None
    if spec.path:
        root = Path(spec.path).expanduser()
        if not root.is_dir():
            raise PrunetuneError(f"data.path: folder {root} not found; give the folder with the rating files")
    what = "train.csv / train.tsv / ratings.csv"
    opts: FileOptions = spec.options
    train_path = find_file(root, opts.train_file, ("train", "ratings"), "train_file", True, EXTS, what)
    test_path = find_file(root, opts.test_file, ("test",), "test_file", False, EXTS, what)
    val_path = find_file(root, opts.val_file, ("val", "dev"), "val_file", False, EXTS, what)
    train = read_triples(train_path)
    if not train.lines:
        raise PrunetuneError(f"{train_path}: the training set is empty; give user, item, rating lines")
    kw = (getattr(model, "kwargs", None) or {}) if model is not None else {}
    known = (saved or {}).get("id_tables") or {}
    users = IdTable("user", train, train.users, kw.get("num_users"), known.get("users"))
    items = IdTable("item", train, train.items, kw.get("num_items"), known.get("items"))

    def tensors(t: Triples) -> TensorData:
        x = torch.stack([users.encode(t, t.users), items.encode(t, t.items)], dim=1)
        return TensorData(x, torch.tensor(t.ratings, dtype=torch.float32))

    full = tensors(train)
    test = val = None
    for path, key in ((test_path, "test"), (val_path, "val")):
        if path is not None:
            t = read_triples(path)
            if not t.lines:
                raise PrunetuneError(f"{path}: the {key} set is empty; give user, item, rating lines")
            if key == "test":
                test = tensors(t)
            else:
                val = tensors(t)
    if test is None:
        rest, held = holdout(len(full), 0.2, seed + 104729, field="data.path")
        test, full = full.subset(held), full.subset(rest)
    if spec.limit and spec.limit < len(full):
        full = full.subset(_subset(len(full), spec.limit, seed))
    if val is None:
        size = spec.val_size if spec.val_size is not None else default_val_size(len(full))
        tr, va = holdout(len(full), size, seed + 7919)
        val, full = full.subset(va), full.subset(tr)
    if spec.test_limit and spec.test_limit < len(test):
        test = test.subset(_subset(len(test), spec.test_limit, seed + 1))
    r = full.y
    return DataBundle(
        train=full, val=val, test=test, class_names=[], input_shape=(2,),
        preprocess={"kind": "ratings", "ids": {"users": "int" if users.integer else "str",
                                               "items": "int" if items.integer else "str"},
                    # String ids -> rows, in row order, so a saved model maps new files' ids as it was trained.
                    "id_tables": {k: list(t.index) for k, t in (("users", users), ("items", items)) if not t.integer},
                    "rating_range": [float(r.min()), float(r.max())]},
        eval_batch_size=spec.eval_batch_size,
        model_kwargs={"num_users": users.size, "num_items": items.size, "rating_mean": round(float(r.mean()), 6)},
    )
