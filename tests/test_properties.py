"""Property tests of the input parsers: on any input they either succeed or raise PrunetuneError (one line).

Never another exception: whatever reaches the user from these parsers must go through the CLI's
one-line `error:` path (issue 6). The recipe parser is fed arbitrary YAML text and arbitrary
`--set` strings; the text readers arbitrary bytes. Inputs are biased towards the shapes the
parsers expect (YAML mappings of recipe sections, headers with tabs/commas, JSON objects), so the
examples get past the first check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prunetune.data.text import read_table, read_trec
from prunetune.errors import PrunetuneError
from prunetune.recipe import Recipe, apply_overrides, load_recipe

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

SECTIONS = ["name", "seed", "task", "model", "data", "dense", "prune", "finetune", "evaluate", "bogus"]
KEYS = ["name", "kwargs", "source", "path", "val_size", "limit", "epochs", "lr", "sparsity", "method", "n", "m",
        "include", "schedule", "kind", "steps", "device", "early_stopping", "patience", "distill", "alpha", "hidden"]
SCALARS = ["0", "1", "-1", "1.2", "0.5", "1e400", ".nan", ".inf", "-.inf", "true", "null", "~", "''", "abc", "2024-13-01",
           "2001-02-03", "0x_", "0o9", "!!int abc", "!!float x", "!!binary '!!!'", "!!timestamp 2001-99-99", "[]", "{}",
           "[1, 2]", "{a: 1}", "&a [*a]", "*undefined", "99999999999999999999999", "'\\x00'", "\"\\ud800\""]


def _yaml_doc() -> st.SearchStrategy[str]:
    """Arbitrary text, or a YAML-looking mapping of sections, keys and odd scalars."""
    line = st.builds(lambda s, k, v: f"{s}:\n  {k}: {v}\n", st.sampled_from(SECTIONS), st.sampled_from(KEYS),
                     st.sampled_from(SCALARS) | st.text(max_size=12))
    flat = st.builds(lambda s, v: f"{s}: {v}\n", st.sampled_from(SECTIONS), st.sampled_from(SCALARS) | st.text(max_size=12))
    return st.text(max_size=200) | st.lists(line | flat, max_size=6).map("".join) | st.integers(1, 3000).map(lambda n: "[" * n)


def _check(e: PrunetuneError) -> None:
    assert "\n" not in str(e), str(e)


@SETTINGS
@given(doc=_yaml_doc())
@example(doc="a: 2020-13-45\n")
@example(doc="model:\n  kwargs: &k\n    x: *k\n")
@example(doc="seed: -1\n")
@example(doc="[" * 5000)
def test_load_recipe_on_any_yaml_returns_a_recipe_or_our_error(tmp_path, doc):
    p = tmp_path / "recipe.yaml"
    p.write_text(doc, encoding="utf-8")
    try:
        r = load_recipe(p)
    except PrunetuneError as e:
        _check(e)
    else:
        assert isinstance(r, Recipe)
        r.model_dump(mode="json")  # what run writes (recipe.resolved.yaml, the dense cache key) must serialise


_override = st.builds(lambda k, v: f"{k}={v}",
                      st.lists(st.sampled_from(SECTIONS + KEYS) | st.text(max_size=5), min_size=1, max_size=3).map(".".join),
                      st.sampled_from(SCALARS) | st.text(max_size=15))


@SETTINGS
@given(overrides=st.lists(_override | st.text(max_size=20), max_size=4))
@example(overrides=["seed=2020-13-45"])
@example(overrides=["model.kwargs=&a [*a]"])
@example(overrides=["prune=1", "prune.sparsity=0.5"])
@example(overrides=["0\n0=0"])  # a newline in the key: the message stays one line
def test_overrides_give_a_recipe_or_our_error(overrides):
    try:
        r = load_recipe(None, overrides)
    except PrunetuneError as e:
        _check(e)
    else:
        assert isinstance(r, Recipe)
        r.model_dump(mode="json")
    # apply_overrides on its own: a dict or our error, never another exception.
    try:
        assert isinstance(apply_overrides({}, overrides), dict)
    except PrunetuneError as e:
        _check(e)


# ---------------------------------------------------------------- text readers

_cell = st.sampled_from(["text", "sentence", "label", "good film", "0", "1", "", " ", '"', "'", "\\", "\x00", "caf\xe9",
                         "[[[[", "1" * 5000, '{"text": "a"}']) | st.text(max_size=8)


def _table(sep: str) -> st.SearchStrategy[bytes]:
    row = st.lists(_cell, min_size=0, max_size=4).map(sep.join)
    return st.lists(row, max_size=6).map(lambda rows: "\n".join(["text" + sep + "label", *rows]).encode("utf-8", "surrogatepass"))


_json_line = st.sampled_from(['{"text": "a", "label": 1}', '{"text": "a", "label": ' + "1" * 5000 + "}", "[" * 100000,
                              '{"text": ' + "1" * 5000 + ', "label": 0}', '{"text": null, "label": {}}', "[1, 2]", '"x"',
                              "{", "NaN", '{"text": "\\ud800", "label": "x"}']) | st.text(max_size=30)
_jsonl = st.lists(_json_line, max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))
_trec = st.lists(st.sampled_from(["DESC:manner How did it go ?", "NUM:date When ?", "nocolon here", "", ":", "A: b"])
                 | st.text(max_size=20), max_size=5).map(lambda ls: "\n".join(ls).encode("latin-1", "replace"))


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
@SETTINGS
@given(raw=st.binary(max_size=200) | _table("\t") | _table(",") | _jsonl,
       encoding=st.sampled_from([None, "latin-1", "utf-16", "no-such-codec"]))
@example(raw=b'"te\nxt",label\n"a",b\n', encoding=None)  # a newline inside a header cell (csv)
@example(raw=b'{"te\\nxt": "a", "label": 1}\n', encoding=None)  # ... inside a JSON key (jsonl)
@example(raw=b'{"text": "a", "label": ' + b"1" * 5000 + b"}\n", encoding=None)  # int too long for str()
@example(raw=b"[" * 100000, encoding=None)  # nesting deeper than json's recursion limit
def test_read_table_on_any_bytes_parses_or_raises_our_error(tmp_path, fmt, raw, encoding):
    p = tmp_path / f"train.{fmt}"
    p.write_bytes(raw)
    try:
        rows = read_table(p, fmt, encoding=encoding)
    except PrunetuneError as e:
        _check(e)
    else:
        assert len(rows.texts) == len(rows.labels) == len(rows.lines) > 0
        assert all(rows.texts) and all(rows.labels)


@SETTINGS
@given(raw=st.binary(max_size=200) | _trec, labels=st.sampled_from(["coarse", "fine"]),
       encoding=st.sampled_from([None, "utf-8", "ascii"]))
def test_read_trec_on_any_bytes_parses_or_raises_our_error(tmp_path, raw, labels, encoding):
    p = tmp_path / "train_5500.label"
    p.write_bytes(raw)
    try:
        rows = read_trec(p, labels, encoding)
    except PrunetuneError as e:
        _check(e)
    else:
        assert len(rows.texts) == len(rows.labels) > 0


def test_missing_file_is_our_error(tmp_path):
    with pytest.raises(PrunetuneError, match="file not found"):
        read_table(Path(tmp_path / "nope.tsv"), "tsv")
