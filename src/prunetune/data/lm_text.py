"""Language-model text: the `lm_text` data source.

Files (found in `data.path` as train.* / test.* / dev.* or val.*, or named by data.*_file):

- `.txt`: one example per non-empty line;
- `.tsv` / `.csv` (header row): the text column (data.text_column, default `sentence` or `text`), or a
  prompt and a completion column (data.prompt_column / data.completion_column);
- `.jsonl`: one object per line with a `text` field, or `prompt` and `completion` fields.

Inputs are `{"input_ids", "attention_mask"}` [N, L], right-padded; the target `y` is a [N, L] tensor of
labels for next-token prediction: the input ids themselves, -100 on padding and, for prompt /
completion pairs, on the prompt (the loss is on the completion only). The tokenizer's end-of-text
token (when it has one) ends every example. Without a validation file a seeded split is carved from
train; `data.limit` / `data.test_limit` take seeded random subsets. Tokens are cached on disk like
the classification sources' (keyed by the file's bytes, how it was parsed, the tokenizer and
`max_length`).

Example recipe:

    task: causal_lm
    model: {name: hf:./my-gpt2}
    data: {source: lm_text, path: ./corpus, max_length: 128}     # train.txt, test.txt
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import PrunetuneError
from .base import DataBundle, FileOptions, TensorData, data_source, default_val_size, file_format, find_file, holdout
from .tables import decode_file, json_lines
from .text import FORMATS, TokenOptions, cached_tokens, data_folder, lazy_tokenizer, tokenizer_id, tokenizer_source

CACHE_VERSION = 1
IGNORE = -100
LM_FORMATS = {**FORMATS, ".txt": "txt"}


class LMTextOptions(TokenOptions, FileOptions):
    """lm_text's own `data:` keys."""

    format: Literal["auto", "tsv", "csv", "jsonl", "txt"] = Field(
        "auto", description="file format (auto: by extension; txt: one text per line)")
    text_column: str | None = Field(None, description="field / column with the text (default: text or sentence)")
    prompt_column: str | None = Field(
        None, description="field / column with the prompt of a prompt-completion pair (default: prompt); "
        "the loss is on the completion only")
    completion_column: str | None = Field(None, description="field / column with the completion (default: completion)")


@dataclass
class LMRows:
    """One parsed file: prompts ("" for plain text: the loss covers everything), texts and their lines."""

    path: Path
    prompts: list[str]
    texts: list[str]
    lines: list[int]
    digest: str

    @property
    def paired(self) -> bool:
        return any(self.prompts)


def _value(path: Path, line: int, obj: dict, field: str) -> str:
    v = obj[field]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise PrunetuneError(f"{path}:{line}: field {field!r} is {type(v).__name__}, not text; write it as a string")
    try:
        return str(v)
    except ValueError:  # an integer of over 4300 digits
        raise PrunetuneError(f"{path}:{line}: field {field!r} is a number too long to read as text; quote it") from None


def _columns(opts: LMTextOptions) -> tuple[str, str]:
    return opts.prompt_column or "prompt", opts.completion_column or "completion"


def _mode(path: Path, fields: list[str], opts: LMTextOptions, where: str) -> tuple[str, str | None]:
    """('text', column) or ('pair', None) for a file with these fields / columns."""
    p, c = _columns(opts)
    if opts.text_column:
        if opts.text_column not in fields:
            raise PrunetuneError(f"{where}: no {opts.text_column!r} (found: {', '.join(fields)}); set data.text_column")
        return "text", opts.text_column
    if p in fields or c in fields or opts.prompt_column or opts.completion_column:
        for name, key in ((p, "prompt_column"), (c, "completion_column")):
            if name not in fields:
                raise PrunetuneError(f"{where}: no {name!r} to pair with {c if name == p else p!r} "
                                     f"(found: {', '.join(fields)}); set data.{key}")
        return "pair", None
    for name in ("text", "sentence"):
        if name in fields:
            return "text", name
    raise PrunetuneError(f"{where}: no 'text' field and no '{p}'/'{c}' pair (found: {', '.join(fields) or 'nothing'}); "
                         "set data.text_column, or data.prompt_column and data.completion_column")


def read_lm(path: Path, fmt: str, opts: LMTextOptions) -> LMRows:
    """Read and check one file; every error names the file and the line."""
    content, raw = decode_file(path, opts.encoding)
    records: list[tuple[int, str, str]] = []  # (line, prompt, text)
    mode = None
    if fmt == "txt":
        for i, line in enumerate(content.split("\n"), 1):
            if line.strip():
                records.append((i, "", line.strip()))
    elif fmt == "jsonl":
        for i, obj in json_lines(path, content):
            if mode is None:
                mode = _mode(path, list(obj), opts, f"{path}:{i}")
            records.append(_record(path, i, obj, mode, opts))
    else:
        quoting = {"quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
        reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if fmt == "tsv" else ",", **quoting)
        try:
            header = [h.strip() for h in next(reader)]
            mode = _mode(path, header, opts, str(path))
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise PrunetuneError(f"{path}:{reader.line_num}: {len(row)} fields but the header has "
                                         f"{len(header)}; fix the row (stray {'tab' if fmt == 'tsv' else 'comma or quote'}?)")
                records.append(_record(path, reader.line_num, dict(zip(header, row)), mode, opts))
        except StopIteration:
            pass
        except csv.Error as e:
            raise PrunetuneError(f"{path}:{reader.line_num}: unreadable {fmt.upper()} ({e}); fix the quoting") from None
    if not records:
        raise PrunetuneError(f"{path}: no rows; put data in the file or point data.path elsewhere")
    how = {"fmt": fmt, "mode": mode, "cols": _columns(opts), "text": opts.text_column, "enc": opts.encoding}
    digest = hashlib.sha256(hashlib.sha256(raw).digest() + json.dumps(how, sort_keys=True).encode()).hexdigest()
    return LMRows(path, [r[1] for r in records], [r[2] for r in records], [r[0] for r in records], digest)


def _record(path: Path, line: int, obj: dict, mode: tuple[str, str | None], opts: LMTextOptions) -> tuple[int, str, str]:
    kind, col = mode
    if kind == "text":
        if col not in obj:
            raise PrunetuneError(f"{path}:{line}: no field {col!r} (fields: {', '.join(obj)}); set data.text_column")
        text = _value(path, line, obj, col).strip()
        if not text:
            raise PrunetuneError(f"{path}:{line}: empty text; remove the row or fill in its text")
        return line, "", text
    p, c = _columns(opts)
    for name in (p, c):
        if name not in obj:
            raise PrunetuneError(f"{path}:{line}: no field {name!r} (fields: {', '.join(obj)}); give every line a "
                                 f"{p!r} and a {c!r}")
    prompt, completion = _value(path, line, obj, p), _value(path, line, obj, c)
    if not completion.strip():
        raise PrunetuneError(f"{path}:{line}: empty completion; the loss is on the completion only, so give it text "
                             "or remove the line")
    if not prompt.strip():
        raise PrunetuneError(f"{path}:{line}: empty prompt; put the text in a 'text' field instead, or give it a prompt")
    return line, prompt, completion


def encode(rows: LMRows, tok, max_length: int) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask / labels [N, L] (int64), right-padded to the longest example."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    paired = rows.paired
    if paired:
        heads = tok(rows.prompts, add_special_tokens=True)["input_ids"]
        tails = tok(rows.texts, add_special_tokens=False)["input_ids"]
    else:
        heads = [[] for _ in rows.texts]
        tails = tok(rows.texts, add_special_tokens=True)["input_ids"]
    seqs, labels = [], []
    for line, h, t in zip(rows.lines, heads, tails):
        t = list(t) + ([eos] if eos is not None and (not t or t[-1] != eos) else [])
        if paired and len(h) >= max_length:
            raise PrunetuneError(f"{rows.path}:{line}: the prompt alone is {len(h)} tokens, which leaves no room for the "
                                 f"completion within data.max_length {max_length}; raise it or shorten the prompt")
        ids = (list(h) + t)[:max_length]
        seqs.append(ids)
        labels.append(([IGNORE] * len(h) + t)[:max_length])
    width = max(len(s) for s in seqs)
    n = len(seqs)
    ids, mask, lab = np.full((n, width), pad, np.int64), np.zeros((n, width), np.int64), np.full((n, width), IGNORE, np.int64)
    for i, (s, t) in enumerate(zip(seqs, labels)):  # numpy row writes: ~50x faster than torch's for 10^5 rows
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
        lab[i, : len(t)] = t
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "labels": torch.from_numpy(lab)}


def tokenize_lm(rows: LMRows, src: str, max_length: int, get_tok: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """`encode`, cached on disk under $PRUNETUNE_CACHE/tokens like the classification sources' tokens."""

    def make() -> dict[str, torch.Tensor]:
        try:
            return encode(rows, get_tok(), max_length)
        except (ValueError, TypeError) as e:
            raise PrunetuneError(f"data.tokenizer: {src} cannot tokenise {rows.path} ({str(e).splitlines()[0][:120]})") from None

    key = hashlib.sha256(f"lm{CACHE_VERSION}|{rows.digest}|{tokenizer_id(src)}|{max_length}".encode()).hexdigest()[:32]
    return cached_tokens(f"lm-{key}", ("input_ids", "attention_mask", "labels"), make)


def _data(enc: dict[str, torch.Tensor]) -> TensorData:
    return TensorData({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, enc["labels"])


def _subset(rows: LMRows, n: int | None, seed: int) -> LMRows:
    """A seeded random subset of `n` rows (in file order), taken before tokenising: a limit costs no time."""
    if not n or n >= len(rows.texts):
        return rows
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(rows.texts), generator=g)[:n].sort().values.tolist()
    digest = hashlib.sha256(f"{rows.digest}|subset|{n}|{seed}".encode()).hexdigest()
    return LMRows(rows.path, [rows.prompts[i] for i in keep], [rows.texts[i] for i in keep],
                  [rows.lines[i] for i in keep], digest)


def _trim(d: TensorData) -> TensorData:
    """Pad to the split's own longest example (inputs and labels alike)."""
    x = d.take(slice(None))
    return TensorData(x, d.y[:, : x["input_ids"].shape[1]].contiguous())


def build_lm(spec, seed: int, model, where: str, train: LMRows, test: LMRows, val: LMRows | None) -> DataBundle:
    opts: LMTextOptions = spec.options
    src = tokenizer_source(opts.tokenizer, model)
    get_tok = lazy_tokenizer(src)
    train, test = _subset(train, spec.limit, seed), _subset(test, spec.test_limit, seed + 1)
    tr, te, va = (_data(tokenize_lm(r, src, opts.max_length, get_tok)) if r else None for r in (train, test, val))
    if va is None:
        size = spec.val_size if spec.val_size is not None else default_val_size(len(tr))
        keep, held = holdout(len(tr), size, seed + 7919)
        va, tr = tr.subset(held), tr.subset(keep)
    splits = {"training": tr, "validation": va, "test": te}
    for name, d in splits.items():
        if not bool((d.y[:, 1:] != IGNORE).any()):
            raise PrunetuneError(f"{where}: the {name} examples have no token to predict (each needs two or more tokens); "
                                 "use longer texts")
    return DataBundle(
        train=_trim(tr), val=_trim(va), test=_trim(te), class_names=[], input_shape=(opts.max_length,),
        preprocess={"kind": "text", "max_length": opts.max_length, "tokenizer": src, "lm": True},
        eval_batch_size=spec.eval_batch_size, model_kwargs={"head": "causal_lm"})


@data_source("lm_text", LMTextOptions,
             "language-model text: .txt lines, a TSV/CSV text column, JSON Lines text or prompt/completion")
def lm_text(spec, seed: int, model=None) -> DataBundle:
    opts: LMTextOptions = spec.options
    root = data_folder(spec, "lm_text") if spec.path else None
    exts = ".txt/.tsv/.csv/.jsonl"
    files = [find_file(root, opts.train_file, ("train",), "train_file", True, LM_FORMATS, f"train{exts}"),
             find_file(root, opts.test_file, ("test",), "test_file", True, LM_FORMATS, f"test{exts}"),
             find_file(root, opts.val_file, ("dev", "val"), "val_file", False, LM_FORMATS, f"dev{exts}")]
    train, test, val = (read_lm(p, file_format(opts.format, p, LM_FORMATS), opts) if p else None for p in files)
    return build_lm(spec, seed, model, f"lm_text {files[0]}", train, test, val)


lm_text.task = "causal_lm"  # read by the recipe check: this source feeds language models only
