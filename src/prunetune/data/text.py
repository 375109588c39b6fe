"""Text classification data: GLUE SST-2, TREC and generic TSV / CSV / JSON Lines files.

Each file is read and checked on every build (errors name file:line), while its tokenisation is
done once and cached as safetensors under $PRUNETUNE_CACHE/tokens, keyed by the file's bytes, how
it is parsed, the tokenizer (with its vocabulary files) and `max_length`. Inputs are
`{"input_ids", "attention_mask"}` [N, L], right-padded to the longest example of each split.

Example recipe `data:` section (the tokenizer defaults to the model's, e.g. `model.name: minilm`):

    data:
      source: text            # or sst2 / trec (data.path = the GLUE or TREC folder)
      path: ./reviews         # holds train.csv, test.csv and optionally dev.csv or val.csv
      text_column: review
      label_column: stars
      max_length: 64
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..data_spec import SourceOptions
from ..errors import PrunetuneError
from ..files import cache_root, cache_tensors
from ..models.hf import is_hf, load_tokenizer, pretrained_source
from .base import (DataBundle, FileOptions, HoldoutOptions, TensorData, data_source, file_format, find_file, finish_bundle,
                   hold_out_test, label_names)
from .tables import Column, Rows, decode_file, make_rows, read_table  # noqa: F401  (read_table: re-exported)

CACHE_VERSION = 1
TOKENIZE_CALLS = 0  # files tokenised (cache misses) in this process; tests check the cache with it
FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}


class TokenOptions(SourceOptions):
    """The `data:` keys of every tokenised text source (sst2's own)."""

    max_length: int = Field(128, ge=2, le=8192, description="tokens per example (longer ones are truncated)")
    tokenizer: str | None = Field(None, description="tokenizer folder or hub id (default: the model's)")
    encoding: str | None = Field(None, description="file encoding (default utf-8)")


class TrecOptions(TokenOptions):
    """trec's own `data:` keys."""

    trec_labels: Literal["coarse", "fine"] = Field("coarse", description="6 coarse or 50 fine classes")
    encoding: str | None = Field(None, description="file encoding (default latin-1)")


class TextOptions(TokenOptions, FileOptions, HoldoutOptions):
    """text's own `data:` keys."""

    format: Literal["auto", "tsv", "csv", "jsonl"] = Field("auto", description="file format (auto: by extension)")
    header: bool = Field(True, description="TSV / CSV: the first row names the columns (false: columns are positions)")
    text_column: Column | None = Field(
        None, description="column with the text: a name, or a position (0 = the first column; default: sentence or text)")
    text_columns: list[Column] | None = Field(
        None, min_length=1, description="several text columns (names or positions), joined with a space "
        "(text_pair: two segments)")
    text_pair: bool = Field(False, description="the two text_columns are the tokenizer's two segments (a sentence "
                            "pair: [CLS] first [SEP] second [SEP]) instead of one joined text")
    label_column: Column | None = Field(None, description="column with the label: a name or a position (default: label)")


def read_trec(path: Path, labels: str, encoding: str | None = None) -> Rows:
    """Read a TREC `COARSE:fine question` file; labels are the coarse or the full fine names."""
    content, raw = decode_file(path, encoding, default="latin-1")
    records = []
    for i, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        head, _, text = line.strip().partition(" ")
        if ":" not in head:
            raise PrunetuneError(f"{path}:{i}: expected 'COARSE:fine question text'; fix the line")
        records.append((i, text.strip(), head.split(":")[0] if labels == "coarse" else head))
    return make_rows(path, raw, {"fmt": "trec", "labels": labels, "enc": encoding}, records)


def encode_labels(rows: Rows, names: list[str]) -> torch.Tensor:
    index = {n: i for i, n in enumerate(names)}
    for line, label in zip(rows.lines, rows.labels):
        if label not in index:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise PrunetuneError(f"{rows.path}:{line}: label {label!r} is not among the training labels ({shown}); "
                                 "fix the label or add examples of it to the training file")
    return torch.tensor([index[label] for label in rows.labels], dtype=torch.long)


def tokenizer_source(tokenizer: str | None, model=None) -> str:
    """`tokenizer` (data.tokenizer), else the Hugging Face model's folder or hub id."""
    if tokenizer:
        src = Path(tokenizer).expanduser()
        return str(src.resolve()) if src.exists() else tokenizer
    if model is not None and is_hf(model.name):
        return pretrained_source(model.name)
    raise PrunetuneError("data.tokenizer: text data needs a tokenizer; set data.tokenizer or use a Hugging Face model "
                         "(model.name: minilm or hf:...)")


def tokenizer_id(src: str) -> str:
    """The tokenizer source, plus the bytes of its vocabulary files when it is a local folder."""
    h = hashlib.sha256(src.encode())
    folder = Path(src)
    if folder.is_dir():
        h = hashlib.sha256(b"local")  # a moved or copied folder keeps its cache
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                h.update(name.encode() + hashlib.sha256((folder / name).read_bytes()).digest())
    return h.hexdigest()


def cached_tokens(key: str, names: tuple[str, ...],
                  make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors `names` cached as $PRUNETUNE_CACHE/tokens/<key>.safetensors, else `make()`'s, then cached
    (written atomically: readers never see a half-written file; a damaged or unwritable cache only costs time)."""
    path = cache_root() / "tokens" / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))
            return {k: cached[k] for k in names}
        except (SafetensorError, OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt
    out = make()
    cache_tensors(out, path)
    return out


def tokenize(rows: Rows, src: str, max_length: int, get_tok: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """`input_ids` / `attention_mask` (int64, right-padded to the longest row), cached on disk."""

    def make() -> dict[str, torch.Tensor]:
        global TOKENIZE_CALLS
        tok = get_tok()
        try:
            segments = (rows.texts,) if rows.pairs is None else (rows.texts, rows.pairs)  # a pair: two segments
            enc = tok(*segments, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
        except (ValueError, TypeError) as e:
            raise PrunetuneError(f"data.tokenizer: {src} cannot tokenise {rows.path} ({str(e).splitlines()[0][:120]})") from None
        TOKENIZE_CALLS += 1
        return {k: enc[k].to(torch.int64).contiguous() for k in ("input_ids", "attention_mask")}

    key = hashlib.sha256(f"{CACHE_VERSION}|{rows.digest}|{tokenizer_id(src)}|{max_length}".encode()).hexdigest()[:32]
    return cached_tokens(key, ("input_ids", "attention_mask"), make)


def lazy_tokenizer(src: str) -> Callable[[], Any]:
    """A function that loads the tokenizer on its first call (cached tokens need none) and keeps it."""
    box: list[Any] = []

    def get():
        if not box:
            tok = load_tokenizer(src)
            tok.padding_side = "right"  # TensorData.take trims padding from the right
            box.append(tok)
        return box[0]

    return get


def label_note(names: list[str]) -> str:
    """The run's data summary line of how labels map to class indices (the manifest's class_names)."""
    shown = ", ".join(f"{n!r}={i}" for i, n in enumerate(names[:12])) + (", ..." if len(names) > 12 else "")
    return f"labels -> classes 0..{len(names) - 1} (sorted; saved with the model as class_names): {shown}"


def build_text(spec, seed: int, model, where: str, train: Rows, test: Rows | None, val: Rows | None,
               names: list[str]) -> DataBundle:
    """Tokenise (or load cached tokens), encode labels and split: the common tail of every text source.

    Without `test` rows a seeded, stratified part of `train` (data.test_size, default 20 %) is the test set."""
    opts: TokenOptions = spec.options
    src = tokenizer_source(opts.tokenizer, model)
    get_tok = lazy_tokenizer(src)
    notes = [label_note(names)]
    if test is None:
        keep, held, note = hold_out_test(encode_labels(train, names), getattr(opts, "test_size", None), seed,
                                         train.path.name)
        part = f"seed {seed}, test_size {getattr(opts, 'test_size', None)}"
        train, test = train.subset(keep.tolist(), f"train|{part}"), train.subset(held.tolist(), f"test|{part}")
        notes.insert(0, note)
    ys = [encode_labels(r, names) if r else None for r in (train, test, val)]  # label errors before slow work
    (tr_x, tr_y), (te_x, te_y), val_xy = [(tokenize(r, src, opts.max_length, get_tok), y) if r else None
                                          for r, y in zip((train, test, val), ys)]
    pre = {"kind": "text", "max_length": opts.max_length, "tokenizer": src}
    if train.pairs is not None:
        pre["text_pair"] = True  # predict reads each input line as two tab-separated segments
    bundle = finish_bundle(spec, seed, tr_x, tr_y, te_x, te_y, names, pre, where, val=val_xy, notes=notes)
    # Each split pads to its own longest example (limits and splits may have removed the longest).
    trim = lambda d: TensorData(d.take(slice(None)), d.y)  # noqa: E731
    bundle.train, bundle.val, bundle.test = trim(bundle.train), trim(bundle.val), trim(bundle.test)
    bundle.input_shape = (opts.max_length,)  # independent of which texts happen to be longest
    return bundle


def data_folder(spec, source: str) -> Path:
    """data.path as an existing folder, or one line saying the source needs one."""
    if not spec.path:
        raise PrunetuneError(f"data.path: {source} needs a folder; set data.path=/path/to/{source}")
    root = Path(spec.path).expanduser()
    if not root.is_dir():
        raise PrunetuneError(f"data.path: folder {root} not found; set data.path to the {source} folder")
    return root


@data_source("sst2", TokenOptions, "GLUE SST-2 sentiment (folder with train.tsv, dev.tsv, test.tsv)")
def sst2(spec, seed: int, model=None) -> DataBundle:
    root = data_folder(spec, "sst2")
    train, dev, test = (read_table(root / f"{split}.tsv", "tsv", "sentence", "label", spec.options.encoding)
                        for split in ("train", "dev", "test"))
    names = ["negative", "positive"]
    for rows in (train, dev, test):
        for line, label in zip(rows.lines, rows.labels):
            if label not in ("0", "1"):
                raise PrunetuneError(f"{rows.path}:{line}: SST-2 label {label!r} is not 0 or 1; fix the row")
        rows.labels = [names[int(label)] for label in rows.labels]
    return build_text(spec, seed, model, f"sst2 {root}", train, test, dev, names)


@data_source("trec", TrecOptions, "TREC question types (folder with train_5500.label, TREC_10.label)")
def trec(spec, seed: int, model=None) -> DataBundle:
    opts: TrecOptions = spec.options
    root = data_folder(spec, "trec")
    train = read_trec(root / "train_5500.label", opts.trec_labels, opts.encoding)
    test = read_trec(root / "TREC_10.label", opts.trec_labels, opts.encoding)
    return build_text(spec, seed, model, f"trec {root}", train, test, None, sorted(set(train.labels)))


@data_source("text", TextOptions, "TSV / CSV / JSON Lines files with a text and a label column "
             "(one labelled file is split into train / validation / test)")
def text(spec, seed: int, model=None) -> DataBundle:
    opts: TextOptions = spec.options
    if opts.text_column is not None and opts.text_columns:
        raise PrunetuneError("data.text_columns: set data.text_column (one column) or data.text_columns (several), "
                             "not both; remove one")
    one_file = spec.path and Path(spec.path).expanduser().is_file()  # data.path: ./reviews.csv
    root = Path(spec.path).expanduser().parent if one_file else data_folder(spec, "text") if spec.path else None
    train_file = opts.train_file or (Path(spec.path).expanduser().name if one_file else None)
    files = [find_file(root, train_file, ("train",), "train_file", True, FORMATS, "train.tsv/.csv/.jsonl"),
             find_file(root, opts.test_file, ("test",), "test_file", False, FORMATS, "test.tsv/.csv/.jsonl")
             if not one_file or opts.test_file else None,
             find_file(root, opts.val_file, ("dev", "val"), "val_file", False, FORMATS, "dev.tsv/.csv/.jsonl")
             if not one_file or opts.val_file else None]
    train, test, val = (read_table(p, file_format(opts.format, p, FORMATS), opts.text_column, opts.label_column,
                                   opts.encoding, header=opts.header, text_cols=opts.text_columns, pair=opts.text_pair)
                        if p else None for p in files)
    names = label_names(train.labels)
    if len(names) < 2:
        raise PrunetuneError(f"data.label_column: every label in {files[0]} is {names[0]!r}; a classifier needs two or "
                             "more classes: check data.label_column (and data.header) or add examples of other labels")
    return build_text(spec, seed, model, f"text {files[0]}", train, test, val, names)
