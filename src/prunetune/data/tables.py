"""Labelled text tables: TSV / CSV (with or without a header row) and JSON Lines, read into checked rows.

Columns are named (a header row, JSON fields) or given by position (0 = the first column; any TSV / CSV,
and the only way without a header). Several text columns are joined with a space, or kept apart as the two
segments of a text pair. Every error names the file (and line) and the `data.*` key that fixes it.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "news.csv"
    >>> _ = p.write_text('2,"Oil up",Prices rose\\n1,Cup final,"Late goal, 2-1"\\n')
    >>> rows = read_table(p, "csv", text_cols=[1, 2], label_col=0, header=False)
    >>> rows.texts, rows.labels
    (['Oil up Prices rose', 'Cup final Late goal, 2-1'], ['2', '1'])
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PrunetuneError

Column = str | int  # a name (header row, JSON field) or a 0-based position


@dataclass
class Rows:
    """One parsed file: texts (and the second segments of text pairs), label strings and the line each row ends on."""

    path: Path
    texts: list[str]
    labels: list[str]
    lines: list[int]
    digest: str  # sha256 of the file's bytes and how it was parsed (the tokens' cache key)
    pairs: list[str] | None = None

    def subset(self, idx: list[int], part: str) -> "Rows":
        """The rows at `idx`; `part` (which part of the file, how chosen) makes the cache key its own."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        digest = hashlib.sha256(f"{self.digest}|{part}".encode()).hexdigest()
        return Rows(self.path, pick(self.texts), pick(self.labels), pick(self.lines), digest,
                    pick(self.pairs) if self.pairs is not None else None)


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


def make_rows(path: Path, raw: bytes, how: dict[str, Any], records: list[tuple[int, str, str]],
              pairs: list[str] | None = None) -> Rows:
    """Checked rows from (line, text, label) records: none empty, no empty text or label."""
    if not records:
        raise PrunetuneError(f"{path}: no rows; put data in the file or point data.path elsewhere")
    for j, (line, text, label) in enumerate(records):
        if not text or (pairs is not None and not pairs[j]):
            raise PrunetuneError(f"{path}:{line}: empty text; remove the row or fill in its text")
        if not label:
            raise PrunetuneError(f"{path}:{line}: empty label; remove the row or give it a label")
    digest = hashlib.sha256(hashlib.sha256(raw).digest() + json.dumps(how, sort_keys=True).encode()).hexdigest()
    return Rows(path, [r[1] for r in records], [r[2] for r in records], [r[0] for r in records], digest, pairs)


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


def _label_text(value: Any) -> str:
    """A JSON label as text: 2.0 reads as "2" (so 2 and 2.0 are one class)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _text_columns(path: Path, names: list[str] | None, text_cols: list[Column] | None, field: str) -> list[Column]:
    if text_cols:
        return text_cols
    for name in ("sentence", "text"):
        if names is not None and name in names:
            return [name]
    if names is None:
        raise PrunetuneError(f"data.text_column: {path} has no header row (data.header: false), so columns are "
                             "positions; set data.text_column (e.g. 0) and data.label_column (e.g. 1)")
    raise PrunetuneError(f"{path}: no 'sentence' or 'text' column (columns: {', '.join(names)}); set data.{field}")


def _position(path: Path, col: Column, names: list[str] | None, width: int, field: str) -> int:
    """The 0-based position of column `col` (a name in the header `names`, or a position) in rows of `width` fields."""
    if isinstance(col, int):
        if not 0 <= col < width:
            raise PrunetuneError(f"data.{field}: column {col} is out of range: {path.name} has {width} column"
                                 f"{'s' if width != 1 else ''} (positions 0..{width - 1}); give a position from 0 to {width - 1}")
        return col
    if names is None:
        raise PrunetuneError(f"data.{field}: {col!r} is a column name, but {path.name} has no header row "
                             "(data.header: false); give a position (0 = the first column)")
    if col not in names:
        raise PrunetuneError(f"{path}: no column {col!r} (columns: {', '.join(names)}); set data.{field}")
    return names.index(col)


def read_table(path: Path, fmt: str, text_col: Column | None = None, label_col: Column | None = None,
               encoding: str | None = None, *, header: bool = True, text_cols: list[Column] | None = None,
               pair: bool = False) -> Rows:
    """Read a TSV / CSV (a header row unless `header` is False) or JSON Lines file into checked rows.

    `text_cols` (several columns) are joined with a space, or with `pair` kept as two segments
    (`Rows.pairs`); `text_col` is one column. Names are looked up in the header, integers are positions."""
    content, raw = decode_file(path, encoding)
    field = "text_columns" if text_cols else "text_column"
    cols = text_cols or ([text_col] if text_col is not None else None)
    if label_col is None and not header and fmt != "jsonl":
        raise PrunetuneError(f"data.label_column: {path} has no header row (data.header: false), so columns are "
                             "positions; set data.label_column (e.g. 1) and data.text_column (e.g. 0)")
    label_col = "label" if label_col is None else label_col
    records: list[tuple[int, list[str], str]] = []
    if fmt == "jsonl":
        if not header:
            raise PrunetuneError(f"data.header: {path.name} is JSON Lines, whose fields are named; remove data.header")
        for col, f in [(c, field) for c in (cols or [])] + [(label_col, "label_column")]:
            if isinstance(col, int):
                raise PrunetuneError(f"data.{f}: {col} is a column position, but JSON Lines fields are named; give "
                                     "the field's name")
        for i, obj in json_lines(path, content):
            cols = _text_columns(path, list(obj), cols, field)
            for col in cols + [label_col]:
                if col not in obj:
                    raise PrunetuneError(f"{path}:{i}: no field {col!r} (fields: {', '.join(obj)}); "
                                         f"set data.{field} / data.label_column")
            try:
                records.append((i, [str(obj[c]).strip() for c in cols], _label_text(obj[label_col])))
            except ValueError:  # str() of an integer of over 4300 digits
                raise PrunetuneError(f"{path}:{i}: a number too long to read as text or label; quote it or shorten it") from None
    else:
        quoting = {"quoting": csv.QUOTE_NONE} if fmt == "tsv" else {}
        reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if fmt == "tsv" else ",", **quoting)
        try:
            first = next(reader)
            while not first:
                first = next(reader)
            names = [h.strip() for h in first] if header else None
            width = len(first)
            cols = _text_columns(path, names, cols, field)
            ti = [_position(path, c, names, width, field) for c in cols]
            li = _position(path, label_col, names, width, "label_column")
            rows = reader if header else _chain(first, reader)
            for row in rows:
                if not row:
                    continue
                if len(row) != width:
                    what = "the header has" if header else "the first row has"
                    raise PrunetuneError(f"{path}:{reader.line_num}: {len(row)} fields but {what} "
                                         f"{width}; fix the row (stray {'tab' if fmt == 'tsv' else 'comma or quote'}?)")
                records.append((reader.line_num, [row[j].strip() for j in ti], row[li].strip()))
        except StopIteration:
            pass  # empty file: reported below
        except csv.Error as e:
            raise PrunetuneError(f"{path}:{reader.line_num}: unreadable {fmt.upper()} ({e}); fix the quoting") from None
    how = {"fmt": fmt, "text": cols, "label": label_col, "enc": encoding, "header": header, "pair": pair}
    if pair:
        if len(cols or []) != 2:
            raise PrunetuneError(f"data.text_pair: a text pair needs exactly two data.text_columns (got "
                                 f"{len(cols or [])}); set data.text_columns: [first, second]")
        return make_rows(path, raw, how, [(i, t[0], lab) for i, t, lab in records], [t[1] for _, t, _ in records])
    return make_rows(path, raw, how, [(i, " ".join(p for p in t if p), lab) for i, t, lab in records])


def _chain(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest
