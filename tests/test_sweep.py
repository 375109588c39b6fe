"""prunetune sweep: the balance point under a tolerance, outputs rebuilt from storage, bad input,
and the adaptive schedule (issue 4). Tiny models and in-process synthetic data; the PostgreSQL
multi-worker test is in test_sweep_postgres.py."""

from __future__ import annotations

import json

import pytest

from prunetune.errors import PrunetuneError
from prunetune.recipe import Recipe
from prunetune.search.study import sweep

BASE = {
    "name": "sw",
    "model": {"name": "tiny_cnn"},
    "data": {"source": "synthetic", "limit": 240},
    "dense": {"epochs": 4},
    "finetune": {"epochs": 2},
    "evaluate": {"min_run_time": 0.02, "memory": False},
}


def _recipe(search: dict, **extra) -> Recipe:
    return Recipe.model_validate({**BASE, **extra, "search": search})


SEARCH = {"tolerance": 3.0, "sampler": "grid", "trials": 4, "grid_points": 2, "objective": "nonzero",
          "space": {"prune.method": {"choices": ["structured", "unstructured"]}, "prune.sparsity": [0.3, 0.8]}}


def test_sweep_finds_the_cheapest_model_within_tolerance_and_scores_only_it_on_test(tmp_path, monkeypatch):
    logs: list[str] = []
    doc = sweep(_recipe(SEARCH), tmp_path / "s", log=logs.append)
    rows = doc["rows"]
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"complete", "pruned"}
    assert sorted((r["params"]["prune.method"], r["params"]["prune.sparsity"]) for r in rows) == [
        ("structured", 0.3), ("structured", 0.8), ("unstructured", 0.3), ("unstructured", 0.8)]
    done = [r for r in rows if r["state"] == "complete"]
    feasible = [r for r in done if r["val_accuracy"] >= doc["threshold"]]
    assert doc["threshold"] == pytest.approx(doc["dense"]["val_accuracy"] - 3.0)
    assert feasible, "with a 3-point tolerance some trial must qualify, or the balance checks below test nothing"
    if feasible:
        best = min(feasible, key=lambda r: r["cost"])
        assert doc["balance_trial"] == best["trial"]
        # Only the balance point is scored on the test set, as a complete run folder.
        rep = json.loads((tmp_path / "s" / "balance" / "report.json").read_text())
        assert rep["scored_on"] == "test" and (tmp_path / "s" / "balance" / "model" / "manifest.json").exists()
        assert doc["balance"]["test"]["accuracy"] == rep["stages"]["finetuned"]["accuracy"]
        # The re-run reproduces the trial (same seed): same non-zero count as the trial measured.
        assert rep["stages"]["finetuned"]["nonzero_params"] == best["nonzero_params"]
    for r in done:  # trials never touch the test set
        trial_rep = json.loads((tmp_path / "s" / "trials" / f"trial-{r['trial']:04d}" / "report.json").read_text())
        assert trial_rep["scored_on"] == "val" and not (tmp_path / "s" / "trials" / f"trial-{r['trial']:04d}" / "model").exists()
    # The front holds no dominated trial.
    front = [r for r in done if r["pareto"]]
    for f in front:
        assert not any(o["val_accuracy"] > f["val_accuracy"] and o["cost"] < f["cost"] for o in done)
    for name in ("sweep.json", "sweep.md", "pareto.png", "report.html", "study.db"):
        assert (tmp_path / "s" / name).exists(), name
    html = (tmp_path / "s" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Pareto front" in html

    # --report rebuilds every output from the storage alone: nothing is trained or run.
    import prunetune.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pytest.fail("--report must not run anything"))
    (tmp_path / "s" / "sweep.md").unlink()
    again = sweep(_recipe(SEARCH), tmp_path / "s", report_only=True, log=logs.append)
    assert (tmp_path / "s" / "sweep.md").exists()
    assert [r["val_accuracy"] for r in again["rows"]] == [r["val_accuracy"] for r in rows]
    assert again["balance_trial"] == doc["balance_trial"]


def test_trials_that_cannot_reach_the_tolerance_stop_early(tmp_path):
    # Zero slack and tolerance: any epoch below the dense accuracy stops the trial.
    search = {**SEARCH, "tolerance": 0.0, "early_stop_slack": 0.0, "trials": 2, "sampler": "grid",
              "space": {"prune.sparsity": {"choices": [0.9]}, "prune.method": {"choices": ["structured"]}}}
    doc = sweep(_recipe(search, finetune={"epochs": 3, "lr": 1e-5}), tmp_path / "s", log=lambda m: None)
    stopped = [r for r in doc["rows"] if r["state"] == "pruned"]
    assert stopped and all("stopped after epoch 1" in r["note"] for r in stopped)
    assert doc["balance_trial"] is None
    # On its last epoch a trial is never stopped: it completes, below the threshold, and stays on record.
    last = {**search, "trials": 1, "space": {"prune.sparsity": {"choices": [0.9]}, "prune.method": {"choices": ["structured"]}}}
    doc = sweep(_recipe(last, finetune={"epochs": 1, "lr": 1e-5}), tmp_path / "s1", log=lambda m: None)
    assert [r["state"] for r in doc["rows"]] == ["complete"] and doc["rows"][0]["val_accuracy"] < doc["threshold"]


def test_a_study_never_runs_more_trials_than_asked_and_resumes(tmp_path):
    search = {**SEARCH, "sampler": "random", "trials": 2}
    sweep(_recipe(search), tmp_path / "s", log=lambda m: None)
    doc = sweep(_recipe(search), tmp_path / "s", trials=3, log=lambda m: None)
    assert len(doc["rows"]) == 3  # two from the first call, one more
    doc = sweep(_recipe(search), tmp_path / "s", trials=3, log=lambda m: None)
    assert len(doc["rows"]) == 3


@pytest.mark.parametrize("space,needle", [
    ({"prune.sparsityy": [0.3, 0.9]}, "search.space.prune.sparsityy = 0.3: not a recipe field"),
    ({"prune.sparsity": [0.3, 1.2]}, "search.space.prune.sparsity = 1.2"),
    ({"prune.method": {"choices": ["structured", "magic"]}}, "unknown pruner 'magic'"),
    ({"prune.sparsity": [0.9, 0.3]}, "low < high"),
    ({"prune.sparsity": "half"}, "give [low, high]"),
    ({}, "search.space: empty"),
])
def test_bad_search_spaces_are_refused_before_anything_runs(tmp_path, space, needle):
    with pytest.raises(PrunetuneError, match=None) as e:
        sweep(_recipe({**SEARCH, "space": space}), tmp_path / "s", log=lambda m: None)
    assert needle in str(e.value)
    assert not (tmp_path / "s" / "study.db").exists()


def test_negative_tolerance_is_a_recipe_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tolerance"):
        _recipe({**SEARCH, "tolerance": -0.5})


def test_a_study_with_another_search_space_is_refused_and_kept(tmp_path):
    search = {**SEARCH, "sampler": "random", "trials": 1}
    sweep(_recipe(search), tmp_path / "s", log=lambda m: None)
    before = (tmp_path / "s" / "sweep.json").read_text()
    other = {**search, "space": {"prune.sparsity": [0.2, 0.6]}}
    with pytest.raises(PrunetuneError, match=r"exists with a different search space.*--study sw-2"):
        sweep(_recipe(other), tmp_path / "s", log=lambda m: None)
    doc = sweep(_recipe(search), tmp_path / "s", report_only=True, log=lambda m: None)
    assert len(doc["rows"]) == 1 and (tmp_path / "s" / "sweep.json").read_text() == before


def test_an_unreachable_storage_is_one_line_naming_host_and_port(tmp_path):
    with pytest.raises(PrunetuneError) as e:
        sweep(_recipe(SEARCH), tmp_path / "s", storage="postgresql://u:secret@127.0.0.1:9/nodb", log=lambda m: None)
    msg = str(e.value)
    assert "127.0.0.1:9" in msg and "\n" not in msg and "secret" not in msg


def test_adaptive_schedule_rolls_back_to_the_last_good_step(tmp_path):
    from prunetune.pipeline import run

    r = Recipe.model_validate({**BASE, "prune": {"method": "unstructured", "sparsity": 0.97,
                                                 "schedule": {"kind": "adaptive", "steps": 5, "tolerance": 2.0, "patience": 1}},
                               "finetune": {"epochs": 1}, "evaluate": {"latency": False, "memory": False}})
    rep = run(r, tmp_path / "r", log=lambda m: None)
    a = rep["adaptive"]
    steps = a["steps"]
    assert all(s["within_tolerance"] for s in steps[:-1])
    if a["rolled_back"]:
        assert not steps[-1]["within_tolerance"]
        kept = steps[-2]["sparsity"] if len(steps) > 1 else 0.0
        assert a["kept_sparsity"] == kept
        # The saved model has the kept step's sparsity over the pruned layers, not the failed one's.
        assert rep["stages"]["finetuned"]["prunable_sparsity"] == pytest.approx(kept, abs=0.01)
    else:
        assert a["kept_sparsity"] == 0.97 and len(steps) == 5


def test_dense_gradients_for_importance_are_computed_once_and_reused(tmp_path):
    from prunetune.pipeline import run
    from prunetune.pruning.masks import masked_layers

    r = Recipe.model_validate({**BASE, "prune": {"method": "unstructured", "importance": "taylor", "sparsity": 0.6},
                               "finetune": {"epochs": 0}, "evaluate": {"latency": False, "memory": False}})
    first = run(r, tmp_path / "a", log=lambda m: None)
    second = run(r, tmp_path / "b", log=lambda m: None)
    assert first["importance_gradients"] is None
    assert second["importance_gradients"]["from_cache"].endswith(".safetensors")
    from prunetune.artifacts import load_model

    ma, mb = (masked_layers(load_model(tmp_path / x / "model", keep_masks=True)[0]) for x in ("a", "b"))
    assert ma.keys() == mb.keys() and all(bool((ma[k] == mb[k]).all()) for k in ma)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_every_sampler_runs_a_study(tmp_path, sampler):
    # Latency as the cost: dense and trial model timed alternately after the trial; only the
    # balance point keeps a model folder.
    doc = sweep(_recipe({**SEARCH, "sampler": sampler, "trials": 2, "objective": "latency"}), tmp_path / "s", log=lambda m: None)
    assert len(doc["rows"]) == 2 and all(r["state"] in ("complete", "pruned") for r in doc["rows"])
    for r in doc["rows"]:
        if r["state"] == "complete":
            assert r["cost"] > 0 and r["speedup"] == pytest.approx(1 / r["cost"], rel=1e-2)
            # The cost's interval from the alternating timing, stored per trial and shown in sweep.md.
            assert r["cost_low"] <= r["cost"] <= r["cost_high"] and r["speedup_low"] <= r["speedup"] <= r["speedup_high"]
            assert r["verdict"] in ("faster", "slower", "no measurable change") and isinstance(r["noisy"], bool)
            assert f"({r['cost_low']:.3f}–{r['cost_high']:.3f})" in (tmp_path / "s" / "sweep.md").read_text()
            assert not (tmp_path / "s" / "trials" / f"trial-{r['trial']:04d}" / "model").exists()


# -- tasks whose metric is not accuracy: the tolerance, the front and the balance point follow its direction --


def test_a_regression_sweep_minimises_rmse_within_tolerance(tmp_path):
    from sequence_fixtures import write_ratings

    data = write_ratings(tmp_path / "ratings", users=40, items=30, n=1200)
    recipe = Recipe.model_validate({
        "name": "rsw", "task": "regression", "model": {"name": "recommender", "kwargs": {"dim": 16, "hidden": [32, 16]}},
        "data": {"source": "ratings", "path": str(data)},
        "dense": {"epochs": 8, "batch_size": 64, "lr": 0.01}, "finetune": {"epochs": 2, "batch_size": 64, "lr": 0.005},
        "evaluate": {"latency": False, "memory": False},
        "search": {"tolerance": 0.1, "sampler": "grid", "trials": 4, "grid_points": 2, "objective": "nonzero",
                   "space": {"prune.method": {"choices": ["structured", "unstructured"]}, "prune.sparsity": [0.2, 0.8]}},
    })
    doc = sweep(recipe, tmp_path / "s", log=lambda m: None)
    assert doc["metric"] == "rmse" and doc["higher_is_better"] is False
    dense = doc["dense"]["val_rmse"]
    assert doc["threshold"] == pytest.approx(dense + 0.1)
    done = [r for r in doc["rows"] if r["state"] == "complete"]
    assert len(doc["rows"]) == 4 and done and all("val_accuracy" not in r for r in doc["rows"])
    feasible = [r for r in done if r["val_rmse"] <= doc["threshold"] + 1e-9]
    assert feasible, "some trial must be within 0.1 RMSE of dense, or the balance checks below test nothing"
    best = min(feasible, key=lambda r: (r["cost"], r["val_rmse"]))
    assert doc["balance_trial"] == best["trial"]
    assert any(r["cost"] < best["cost"] for r in done if r not in feasible)  # the tolerance decided, not cost alone
    # Pareto in the minimise direction: no trial is both cheaper and lower (better) than a front trial.
    front = [r for r in done if r["pareto"]]
    assert front and doc["front"] == [r["trial"] for r in sorted(front, key=lambda r: r["cost"])]
    for f in front:
        assert not any(o["val_rmse"] < f["val_rmse"] and o["cost"] < f["cost"] for o in done)
    for r in done:  # every trial off the front is dominated by one on it
        if not r["pareto"]:
            assert any(f["val_rmse"] <= r["val_rmse"] and f["cost"] <= r["cost"] for f in front)
    rep = json.loads((tmp_path / "s" / "balance" / "report.json").read_text())
    assert doc["balance"]["test"]["rmse"] == rep["stages"]["finetuned"]["rmse"]
    assert doc["balance"]["test"]["dense_rmse"] == rep["stages"]["dense"]["rmse"]
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "Objective: validation rmse (min)" in md and "| val rmse |" in md and "tolerance 0.1 rmse" in md
    html = (tmp_path / "s" / "report.html").read_text()
    assert "Validation rmse (min)" in html and "test rmse (dense)" in html and "val acc" not in html

    import optuna

    study = optuna.load_study(study_name="rsw", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    # Reopened for --report, the stored study keeps its metric and direction.
    again = sweep(recipe, tmp_path / "s", report_only=True, log=lambda m: None)
    assert (again["metric"], again["balance_trial"], again["front"]) == ("rmse", doc["balance_trial"], doc["front"])


def test_the_early_stop_rule_follows_the_metric_direction():
    from prunetune.registry import TASKS

    rmse, acc = TASKS.get("regression")(), TASKS.get("classification")()
    assert rmse.threshold(1.0, 0.1) == pytest.approx(1.1) and acc.threshold(80.0, 3.0) == pytest.approx(77.0)
    # Lower is better: worse means higher. Dense 1.0, tolerance 0.1, slack 0.05 per epoch left.
    assert rmse.hopeless(1.3, 1.0, 0.1, 0.05, epochs_left=2)        # 0.3 worse > 0.1 + 0.1
    assert not rmse.hopeless(1.15, 1.0, 0.1, 0.05, epochs_left=2)   # 0.15 worse: two epochs may recover it
    assert not rmse.hopeless(0.5, 1.0, 0.1, 0.0, epochs_left=3)     # better than dense: never stopped
    assert not rmse.hopeless(9.0, 1.0, 0.1, 0.0, epochs_left=0)     # last epoch: always completes
    # Higher is better: the same rule mirrored.
    assert acc.hopeless(70.0, 80.0, 3.0, 2.0, epochs_left=2) and not acc.hopeless(90.0, 80.0, 3.0, 0.0, epochs_left=2)


def test_a_stored_study_with_other_directions_is_refused(tmp_path):
    import optuna

    search = {**SEARCH, "sampler": "random", "trials": 1}
    url = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    (tmp_path / "s").mkdir()
    optuna.create_study(storage=url, study_name="sw", directions=["minimize", "minimize"])
    with pytest.raises(PrunetuneError) as e:
        sweep(_recipe(search), tmp_path / "s", log=lambda m: None)
    assert "--study sw: exists with directions ['minimize', 'minimize']" in str(e.value)
    assert "(accuracy) needs ['maximize', 'minimize']" in str(e.value)


def test_a_causal_lm_sweep_minimises_perplexity(tmp_path):
    import csv
    from pathlib import Path

    sst2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
    if not (sst2 / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {sst2}")
    from prunetune.models.tiny_lm import tiny_model_folder, train_tokenizer

    with open(sst2 / "train.tsv", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        sentences = [r[0].strip() for _, r in zip(range(2000), rows)]
    folder = tiny_model_folder(tmp_path / "gpt", [], "gpt2", tokenizer=train_tokenizer(sentences, 512), layers=1, heads=2,
                               dim=32, positions=64)
    recipe = Recipe.model_validate({
        "name": "lmsw", "task": "causal_lm", "model": {"name": f"hf:{folder}"},
        "data": {"source": "lm_text", "path": str(sst2), "limit": 320, "test_limit": 64, "max_length": 32, "eval_batch_size": 64},
        "dense": {"epochs": 1, "lr": 3e-3, "batch_size": 16},
        "prune": {"method": "unstructured", "importance": "l1"},
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 32},
        "evaluate": {"latency": False, "memory": False, "generate": 0},
        "search": {"tolerance": 1000.0, "sampler": "grid", "trials": 2, "grid_points": 2, "objective": "nonzero",
                   "space": {"prune.sparsity": [0.2, 0.6]}},
    })
    doc = sweep(recipe, tmp_path / "s", log=lambda m: None)
    assert doc["metric"] == "perplexity" and doc["higher_is_better"] is False
    assert doc["threshold"] == pytest.approx(doc["dense"]["val_perplexity"] + 1000.0)
    done = [r for r in doc["rows"] if r["state"] == "complete"]
    assert len(done) == 2 and all(r["val_perplexity"] > 1 for r in done)
    assert doc["balance_trial"] == min(done, key=lambda r: r["cost"])["trial"]  # a generous tolerance: the cheapest
    assert "perplexity" in doc["balance"]["test"] and "dense_perplexity" in doc["balance"]["test"]


# The former flat schema dumped every data source's and every fine-tuning method's options with their defaults.
FORMER_DATA_DEFAULTS = {
    "path": None, "val_size": None, "limit": None, "test_limit": None, "image_size": None, "grayscale": None,
    "stream": None, "eval_batch_size": 128, "format": "auto", "train_file": None, "val_file": None, "test_file": None,
    "text_column": None, "label_column": None, "prompt_column": None, "completion_column": None, "max_length": 128,
    "tokenizer": None, "trec_labels": "coarse", "encoding": None}
FORMER_PEFT_DEFAULTS = {"include": None, "exclude": [], "r": 8, "alpha": 16.0, "dropout": 0.0, "virtual_tokens": 20,
                        "adapter_size": 64}


def test_a_study_stored_by_the_former_schema_still_opens_and_a_changed_base_does_not(tmp_path):
    import optuna

    search = {**SEARCH, "sampler": "random", "trials": 1}
    sweep(_recipe(search), tmp_path / "s", log=lambda m: None)
    study = optuna.load_study(study_name="sw", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    sig = study.user_attrs["signature"]
    base = sig["base"]
    former = {**base, "data": {**FORMER_DATA_DEFAULTS, **base["data"]},
              "finetune": {**base["finetune"], "peft": dict(FORMER_PEFT_DEFAULTS)}}
    assert former != base  # the stored base really is in the former, wider shape
    study.set_user_attr("signature", {**sig, "base": former})
    doc = sweep(_recipe(search), tmp_path / "s", trials=2, log=lambda m: None)
    assert len(doc["rows"]) == 2  # joined, one more trial

    study.set_user_attr("signature", {**sig, "base": {**former, "seed": 7}})
    with pytest.raises(PrunetuneError, match="exists with a different search space, objective, tolerance or base recipe"):
        sweep(_recipe(search), tmp_path / "s", trials=3, log=lambda m: None)
