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

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from .base import DataBundle, FileOptions, TensorData, data_source, file_format, find_file, finish_bundle, label_names

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


class TextOptions(TokenOptions, FileOptions):
    """text's own `data:` keys."""

    format: Literal["auto", "tsv", "csv", "jsonl"] = Field("auto", description="file format (auto: by extension)")
    text_column: str | None = Field(None, description="column with the text (default: sentence or text)")
    label_column: str | None = Field(None, description="column with the label (default: label)")


@dataclass
class Rows:
    """One parsed file: texts, label strings and the line each row ends on."""

    path: Path
    texts: list[str]
    labels: list[str]
    lines: list[int]
    digest: str  # sha256 of the file's bytes and how it was parsed (the tokens' cache key)


def decode_file(path: Path, encoding: str | None, default: str = "utf-8") -> tuple[str, bytes]:
    """A data file's text (in `encoding`, else `default`) and its bytes; errors name the file, the line and the fix."""
    if not path.is_file():
        raise PrunetuneError(f"{path}: file not found; check data.path and the data.*_file fields")
    raw = path.read_bytes()
    enc = encoding or default
    try:
        text = raw.decode("utf-8-sig" if enc.lower().replace("_", "-") in ("utf-8", "utf8") else enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PrunetuneError(f"{path}:{line}: bytes not valid {enc}; set data.encoding (e.g. latin-1)") from None
    except LookupError:
        raise PrunetuneError(f"data.encoding: unknown encoding {enc!r}; use e.g. utf-8 or latin-1") from None
    return text, raw


def _rows(path: Path, raw: bytes, how: dict[str, Any], records: list[tuple[int, str, str]]) -> Rows:
    if not records:
        raise PrunetuneError(f"{path}: no rows; put data in the file or point data.path elsewhere")
    for line, text, label in records:
        if not text:
            raise PrunetuneError(f"{path}:{line}: empty text; remove the row or fill in its text")
        if not label:
            raise PrunetuneError(f"{path}:{line}: empty label; remove the row or give it a label")
    digest = hashlib.sha256(hashlib.sha256(raw).digest() + json.dumps(how, sort_keys=True).encode()).hexdigest()
    return Rows(path, [r[1] for r in records], [r[2] for r in records], [r[0] for r in records], digest)


def _pick_text_column(path: Path, columns: list[str], text_col: str | None) -> str:
    if text_col:
        return text_col
    for name in ("sentence", "text"):
        if name in columns:
            return name
    raise PrunetuneError(f"{path}: no 'sentence' or 'text' column (columns: {', '.join(columns)}); set data.text_column")


def json_lines(path: Path, content: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON Lines file; a line that is not one JSON
    object is refused naming path:line."""
    for i, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PrunetuneError(f"{path}:{i}: malformed JSON ({e.msg}); write one JSON object per line") from None
        except (ValueError, RecursionError) as e:  # a number of over 4300 digits; nesting too deep
            raise PrunetuneError(f"{path}:{i}: unreadable JSON ({str(e).split(':')[0][:80]}); "
                                 "write one flat JSON object per line") from None
        if not isinstance(obj, dict):
            raise PrunetuneError(f"{path}:{i}: expected a JSON object per line, got {type(obj).__name__}")
        yield i, obj


def read_table(path: Path, fmt: str, text_col: str | None = None, label_col: str | None = None,
               encoding: str | None = None) -> Rows:
    """Read a TSV / CSV (header row) or JSON Lines file into checked rows."""
    content, raw = decode_file(path, encoding)
    label_col = label_col or "label"
    records: list[tuple[int, str, str]] = []
    if fmt == "jsonl":
        for i, obj in json_lines(path, content):
            text_col = _pick_text_column(path, list(obj), text_col)
            for col in (text_col, label_col):
                if col not in obj:
                    raise PrunetuneError(f"{path}:{i}: no field {col!r} (fields: {', '.join(obj)}); "
                                         "set data.text_column / data.label_column")
            try:
                records.append((i, str(obj[text_col]).strip(), str(obj[label_col]).strip()))
            except ValueError:  # str() of an integer of over 4300 digits
                raise PrunetuneError(f"{path}:{i}: a number too long to read as text or label; quote it or shorten it") from None
    else:
        quoting = {"quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
        reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if fmt == "tsv" else ",", **quoting)
        try:
            header = [h.strip() for h in next(reader)]
            text_col = _pick_text_column(path, header, text_col)
            for col, field in ((text_col, "text_column"), (label_col, "label_column")):
                if col not in header:
                    raise PrunetuneError(f"{path}: no column {col!r} (columns: {', '.join(header)}); set data.{field}")
            ti, li = header.index(text_col), header.index(label_col)
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise PrunetuneError(f"{path}:{reader.line_num}: {len(row)} fields but the header has "
                                         f"{len(header)}; fix the row (stray {'tab' if fmt == 'tsv' else 'comma or quote'}?)")
                records.append((reader.line_num, row[ti].strip(), row[li].strip()))
        except StopIteration:
            pass  # empty file: reported below
        except csv.Error as e:
            raise PrunetuneError(f"{path}:{reader.line_num}: unreadable {fmt.upper()} ({e}); fix the quoting") from None
    return _rows(path, raw, {"fmt": fmt, "text": text_col, "label": label_col, "enc": encoding}, records)


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
    return _rows(path, raw, {"fmt": "trec", "labels": labels, "enc": encoding}, records)


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
            enc = tok(rows.texts, truncation=True, max_length=max_length, padding="longest", return_tensors="pt")
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


def build_text(spec, seed: int, model, where: str, train: Rows, test: Rows, val: Rows | None,
               names: list[str]) -> DataBundle:
    """Tokenise (or load cached tokens), encode labels and split: the common tail of every text source."""
    opts: TokenOptions = spec.options
    src = tokenizer_source(opts.tokenizer, model)
    get_tok = lazy_tokenizer(src)
    ys = [encode_labels(r, names) if r else None for r in (train, test, val)]  # label errors before slow work
    (tr_x, tr_y), (te_x, te_y), val_xy = [(tokenize(r, src, opts.max_length, get_tok), y) if r else None
                                          for r, y in zip((train, test, val), ys)]
    bundle = finish_bundle(spec, seed, tr_x, tr_y, te_x, te_y, names,
                           {"kind": "text", "max_length": opts.max_length, "tokenizer": src}, where, val=val_xy)
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


@data_source("text", TextOptions, "TSV / CSV / JSON Lines files with a text and a label column")
def text(spec, seed: int, model=None) -> DataBundle:
    opts: TextOptions = spec.options
    root = data_folder(spec, "text") if spec.path else None
    files = [find_file(root, opts.train_file, ("train",), "train_file", True, FORMATS, "train.tsv/.csv/.jsonl"),
             find_file(root, opts.test_file, ("test",), "test_file", True, FORMATS, "test.tsv/.csv/.jsonl"),
             find_file(root, opts.val_file, ("dev", "val"), "val_file", False, FORMATS, "dev.tsv/.csv/.jsonl")]
    train, test, val = (read_table(p, file_format(opts.format, p, FORMATS), opts.text_column, opts.label_column,
                                   opts.encoding) if p else None for p in files)
    return build_text(spec, seed, model, f"text {files[0]}", train, test, val, label_names(train.labels))
