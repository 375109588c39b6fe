"""Tasks own their metric: per-class precision / recall / F1, macro-F1 and the confusion matrix of the
classification task, the recipe's `evaluate.metric`, and how each task's metric reads (units,
formatting, direction) wherever a report or sweep document is shown."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from prunetune.dense import dense_key
from prunetune.errors import PrunetuneError
from prunetune.models import build_model
from prunetune.pipeline import run
from prunetune.recipe import FinetuneSpec, ModelSpec, load_recipe
from prunetune.tasks import Task
from prunetune.tasks.classification import Classification, class_metrics
from prunetune.training import Trainer

from conftest import make_bundle

# An imbalanced 4-class example: class d is rare (one example) and never predicted, which accuracy
# (7 of 12) hardly shows and macro-F1 counts as an F1 of 0.
TRUE = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
PRED = [0, 0, 0, 0, 1, 2, 1, 1, 0, 2, 0, 0]
NAMES = ["a", "b", "c", "d"]


def test_per_class_precision_recall_f1_and_macro_f1_match_scikit_learn():
    m = class_metrics(torch.tensor(TRUE), torch.tensor(PRED), NAMES)
    p, r, f, s = precision_recall_fscore_support(TRUE, PRED, labels=[0, 1, 2, 3], zero_division=0)
    for i, name in enumerate(NAMES):
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == (
            round(p[i] * 100, 4), round(r[i] * 100, 4), round(f[i] * 100, 4), int(s[i]))
    assert m["macro_f1"] == round(f1_score(TRUE, PRED, average="macro", zero_division=0) * 100, 4)
    # By hand: a: 4 right of 7 predicted and 6 true -> P 4/7, R 4/6, F1 2*4/(7+6); d: never predicted -> 0.
    assert m["per_class"]["a"] == {"precision": 57.1429, "recall": 66.6667, "f1": 61.5385, "support": 6}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["macro_f1"] == round((8 / 13 + 4 / 6 + 2 / 4 + 0) / 4 * 100, 4)


def test_confusion_matrix_counts_rows_true_columns_predicted():
    m = class_metrics(torch.tensor(TRUE), torch.tensor(PRED), NAMES)
    assert m["confusion_matrix"] == [[4, 1, 1, 0], [1, 2, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]]
    assert m["confusion_matrix"] == confusion_matrix(TRUE, PRED, labels=[0, 1, 2, 3]).tolist()
    json.dumps(m)  # JSON-friendly as it is


def test_a_class_neither_in_the_data_nor_predicted_is_left_out_of_macro_f1():
    m = class_metrics(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), ["a", "b", "unseen"])
    assert m["per_class"]["unseen"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["macro_f1"] == round(f1_score([0, 0, 1], [0, 1, 1], average="macro") * 100, 4)  # 2 classes: 66.6667
    assert m["confusion_matrix"][2] == [0, 0, 0]


def test_classification_evaluate_reports_the_imbalance_metrics_beside_accuracy():
    bundle = make_bundle(n=60)
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="tiny_mlp"), 3, bundle.input_shape)
    res = Classification().evaluate(model, bundle.test, 64, torch.device("cpu"), bundle.class_names)
    pred = model(bundle.test.x).argmax(1)
    assert res["confusion_matrix"] == confusion_matrix(bundle.test.y, pred, labels=[0, 1, 2]).tolist()
    assert res["macro_f1"] == round(f1_score(bundle.test.y, pred, average="macro", zero_division=0) * 100, 4)
    # Recall is per-class accuracy.
    assert {c: v["recall"] for c, v in res["per_class"].items()} == res["per_class_accuracy"]
    assert sum(map(sum, res["confusion_matrix"])) == len(bundle.test)


# ---------------------------------------------------------------- evaluate.metric


def test_the_recipe_names_the_metric_and_the_task_carries_it():
    r = load_recipe(None, ["evaluate.metric=macro_f1"])
    task = Task.from_recipe(r)
    assert (task.name, task.metric, task.key, task.direction) == ("classification", "macro_f1", "val_macro_f1", "maximize")
    assert Task.from_recipe(load_recipe(None, [])).metric == "accuracy"
    assert Classification.metric == "accuracy"  # the instance's choice leaves the class default alone
    # The default, named or not, keeps the dense cache key; another metric trains another dense model.
    assert dense_key(load_recipe(None, ["evaluate.metric=accuracy"])) == dense_key(load_recipe(None, []))
    assert dense_key(r) != dense_key(load_recipe(None, []))


@pytest.mark.parametrize("sets, error", [
    (["evaluate.metric=f1"], "evaluate.metric: task classification has no metric 'f1'; choose one of: accuracy, macro_f1"),
    (["task=regression", "model.name=recommender", "data.source=ratings", "evaluate.metric=macro_f1"],
     "evaluate.metric: task regression has no metric 'macro_f1'; choose one of: rmse"),
])
def test_a_metric_the_task_does_not_have_is_refused_in_one_line(sets, error):
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, sets)
    assert error in str(e.value) and "\n" not in str(e.value)


def test_trainer_keeps_the_best_epoch_and_stops_early_by_the_recipe_metric(monkeypatch):
    """Scripted validation results where accuracy and macro-F1 disagree: accuracy peaks at epoch 1,
    macro-F1 (a minority class learnt) at epoch 2."""
    script = [{"accuracy": 90.0, "macro_f1": 40.0}, {"accuracy": 80.0, "macro_f1": 70.0},
              {"accuracy": 85.0, "macro_f1": 50.0}, {"accuracy": 95.0, "macro_f1": 60.0}, {"accuracy": 99.0, "macro_f1": 65.0}]
    bundle = make_bundle()
    spec = FinetuneSpec(epochs=5, batch_size=16, early_stopping={"patience": 2})
    got = {}
    for metric in ("accuracy", "macro_f1"):
        task = Task.named("classification", metric)
        results = iter(script)
        monkeypatch.setattr(task, "evaluate", lambda *a, **k: {**next(results), "loss": 1.0})
        torch.manual_seed(0)
        model = build_model(ModelSpec(name="tiny_mlp"), 3, bundle.input_shape)
        trainer = Trainer(model, task, bundle, spec, torch.device("cpu"), 0, log=lambda m: None)
        history = trainer.fit(spec.epochs)
        assert all(f"val_{metric}" in row for row in history)
        got[metric] = (trainer.best_epoch, len(history))
    assert got == {"accuracy": (1, 3), "macro_f1": (2, 4)}


@pytest.fixture(scope="module")
def macro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("macro") / "run"
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=synthetic", "dense.epochs=3", "dense.lr=0.01", "finetune.epochs=3",
        "finetune.batch_size=16", "prune.method=unstructured", "prune.sparsity=0.5", "evaluate.metric=macro_f1",
        "evaluate.latency=false", "evaluate.memory=false",
    ])
    return run(recipe, out, log=lambda m: None), out


def test_a_macro_f1_run_selects_its_best_epoch_by_val_macro_f1(macro_run):
    rep, out = macro_run
    assert rep["metric"] == "macro_f1" and rep["higher_is_better"] is True
    for history, best in ((rep["finetune"]["history"], rep["finetune"]["best_epoch"]),
                          (rep["dense"]["history"], rep["dense"]["best_epoch"])):
        vals = [row["val_macro_f1"] for row in history]
        assert "val_accuracy" not in history[0]
        assert best == vals.index(max(vals)) + 1  # the first epoch with the highest validation macro-F1
    saved = json.loads((out / "report.json").read_text())
    for stage in ("dense", "pruned", "finetuned"):
        s = saved["stages"][stage]
        assert set(s["per_class"]) == {"c0", "c1", "c2"} and set(s["per_class"]["c0"]) == {"precision", "recall", "f1", "support"}
        assert sum(map(sum, s["confusion_matrix"])) == sum(v["support"] for v in s["per_class"].values())
        assert 0 <= s["macro_f1"] <= 100
    assert "| stage | test macro-F1 |" in (out / "report.md").read_text()


def test_the_reports_show_per_class_f1_and_the_confusion_matrix(macro_run):
    rep, out = macro_run
    fine = rep["stages"]["finetuned"]
    md = (out / "report.md").read_text()
    assert "## Per-class precision, recall and F1 (fine-tuned, %)" in md
    assert f"Macro-F1 dense {rep['stages']['dense']['macro_f1']:.2f}" in md
    c0 = fine["per_class"]["c0"]
    assert f"| c0 | {c0['support']} | {c0['precision']:.2f} | {c0['recall']:.2f} | {c0['f1']:.2f} |" in md
    assert "| c1 | " + " | ".join(str(v) for v in fine["confusion_matrix"][1]) + " |" in md
    html = (out / "report.html").read_text()
    assert 'id="per-class-f1"' in html and "confusion matrix of the fine-tuned model" in html
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_a_saved_model_keeps_its_metric(macro_run):
    from prunetune.artifacts import read_manifest

    _, out = macro_run
    assert Task.from_manifest(read_manifest(out / "model")).metric == "macro_f1"


# ---------------------------------------------------------------- how a metric reads


@pytest.mark.parametrize("doc, name, metric, units, label, shown, higher", [
    ({}, "classification", "accuracy", "pt", "acc", "91.23%", True),  # reports from before `metric` was recorded
    ({"metric": "accuracy"}, "classification", "accuracy", "pt", "acc", "91.23%", True),
    ({"metric": "macro_f1"}, "classification", "macro_f1", "pt", "macro-F1", "91.23%", True),
    ({"metric": "rmse", "higher_is_better": False}, "regression", "rmse", "rmse", "rmse", "91.23", False),
    ({"metric": "perplexity"}, "causal_lm", "perplexity", "perplexity", "perplexity", "91.23", False),
    ({"metric": "bleu", "higher_is_better": True}, "task", "bleu", "bleu", "bleu", "91.23", True),  # a plugin's, not installed
])
def test_the_task_of_a_stored_document_reads_its_metric(doc, name, metric, units, label, shown, higher):
    t = Task.of_report(doc)
    assert (t.name, t.metric, t.units, t.label, t.show(91.2345), t.higher_is_better) == (name, metric, units, label, shown, higher)


def test_formatting_follows_the_metric():
    acc, rmse, ppl = (Task.of_report({"metric": m}) for m in ("accuracy", "rmse", "perplexity"))
    assert (acc.format(3.14159), rmse.format(0.91234), ppl.format(23.456), ppl.format(5.4321)) == ("3.14", "0.9123", "23.46", "5.4321")
    assert (acc.format(-1.5, signed=True), rmse.format(0.01, signed=True), acc.format(None)) == ("-1.50", "+0.0100", "")
    assert (acc.headline, Task.of_report({"metric": "macro_f1"}).headline, rmse.headline) == ("", "macro-F1 ", "rmse ")
    assert (acc.threshold(90, 2), rmse.threshold(0.5, 0.25)) == (88, 0.75)
    assert rmse.hopeless(0.9, 0.5, 0.1, 0.1, 2) and not rmse.hopeless(0.9, 0.5, 0.1, 0.1, 0)
