"""A search that finds the balance cheaply (issue 14, part 3): multi-fidelity trials (search.fidelity),
the compute spent in dense-training-epoch equivalents with its budget (search.budget_dense_epochs), and
the warm start from a sensitivity scan (search.warm_start). Tiny models, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import warm_cli
from conftest import cli_env
from prunetune.errors import PrunetuneError
from prunetune.recipe import Recipe
from prunetune.search.study import sweep
from prunetune.search.warm import best_amount, load_scan, predicted_drop, warm_amounts

BASE = {
    "name": "mf",
    "model": {"name": "tiny_cnn"},
    "data": {"source": "synthetic", "limit": 240},
    "dense": {"epochs": 4},
    "prune": {"method": "structured"},
    "finetune": {"epochs": 2},
    "evaluate": {"latency": False, "memory": False},
}
SEARCH = {"tolerance": 3.0, "sampler": "random", "trials": 2, "objective": "nonzero", "space": {"prune.sparsity": [0.3, 0.9]}}


def _recipe(search: dict, **extra) -> Recipe:
    return Recipe.model_validate({**BASE, **extra, "search": {**SEARCH, **search}})


def _scan(**over) -> dict:
    # Dense 90; predicted (summed) drops 1, 2, 6 and 30 points at amounts 0.25, 0.5, 0.75, 0.9.
    scan = {"kind": "sensitivity", "metric": "accuracy", "higher_is_better": True, "dense": 90.0, "method": "structured",
            "importance": "l2", "amounts": [0.25, 0.5, 0.75, 0.9],
            "layers": [{"layer": "features.0", "params": 72, "scores": {"0.25": 89.5, "0.5": 89.0, "0.75": 86.0, "0.9": 70.0}},
                       {"layer": "features.4", "params": 1152, "scores": {"0.25": 89.5, "0.5": 89.0, "0.75": 88.0, "0.9": 80.0}}]}
    return {**scan, **over}


# -- warm start: a pure function of the scan --


def test_the_warm_start_predicts_the_largest_amount_within_tolerance_on_a_synthetic_scan():
    scan = _scan()
    assert predicted_drop(scan, 0.5) == pytest.approx(2.0)
    assert predicted_drop(scan, 0.125) == pytest.approx(0.5)  # linear from no drop at amount 0
    assert predicted_drop(scan, 0.625) == pytest.approx(4.0)  # halfway between 2 and 6
    # Tolerance 3 is crossed inside [0.5, 0.75]: 0.5 + (3 - 2) / (6 - 2) * 0.25 = 0.5625; a tenth of [0.3, 0.9] either side.
    assert warm_amounts(scan, 0.3, 0.9, 3.0) == [0.5625, 0.5025, 0.6225]
    assert best_amount(scan, 0.3, 0.9, 6.0) == pytest.approx(0.75)  # exactly at a knot
    # Never extrapolated past the largest scanned amount; clipped to the range and deduplicated.
    assert best_amount(scan, 0.3, 0.95, 100.0) == pytest.approx(0.9)
    assert warm_amounts(scan, 0.8, 0.9, 1.0) == [0.8, 0.81]  # nothing predicted within tolerance: the low end
    # Lower is better (perplexity): scores above dense are the drop.
    low = _scan(higher_is_better=False, dense=10.0, layers=[
        {"layer": "a", "params": 1, "scores": {"0.25": 10.5, "0.5": 11.0, "0.75": 14.0, "0.9": 30.0}}])
    assert predicted_drop(low, 0.75) == pytest.approx(4.0) and best_amount(low, 0.1, 0.9, 2.5) == pytest.approx(0.625)  # 0.5 + 1.5 / 3 * 0.25


def test_without_bisection_a_warm_start_enqueues_the_first_trials(tmp_path):
    (tmp_path / "sensitivity.json").write_text(json.dumps(_scan()))
    search = {"warm_start": str(tmp_path / "sensitivity.json"), "trials": 3, "bisect": 0}
    doc = sweep(_recipe(search, finetune={"epochs": 1}), tmp_path / "s", log=lambda m: None)
    want = warm_amounts(_scan(), 0.3, 0.9, 3.0)
    assert [r["params"]["prune.sparsity"] for r in sorted(doc["rows"], key=lambda r: r["trial"])] == want
    assert doc["warm_start"]["points"] == [{"prune.sparsity": a} for a in want]
    assert "Warm start: the first trials were enqueued at prune.sparsity 0.5625, 0.5025, 0.6225" in (tmp_path / "s" / "sweep.md").read_text()


def test_a_searched_method_is_fixed_to_the_scans_and_a_foreign_one_is_refused(tmp_path):
    (tmp_path / "sensitivity.json").write_text(json.dumps(_scan(method="unstructured")))
    both = {"warm_start": str(tmp_path / "sensitivity.json"),
            "space": {"prune.sparsity": [0.3, 0.9], "prune.method": {"choices": ["structured", "unstructured"]}}}
    from prunetune.search.study import Sweep

    s = Sweep(_recipe({**both, "bisect": 0}), tmp_path / "s", None, None, lambda m: None)
    assert [p["prune.method"] for p in s.warm] == ["unstructured"] * 3
    s = Sweep(_recipe(both), tmp_path / "s", None, None, lambda m: None)  # bisecting: the method fixed likewise
    assert s.warm == [] and s.bisect["fixed"] == {"prune.method": "unstructured"} and s.bisect["start"] == 0.5625
    with pytest.raises(PrunetuneError, match=r"search.warm_start: the scan pruned with 'unstructured' but prune.method is 'structured'"):
        Sweep(_recipe({"warm_start": str(tmp_path / "sensitivity.json")}), tmp_path / "s", None, None, lambda m: None)


# -- multi-fidelity: Optuna's pruner on the companion study --


def test_halving_prunes_a_trial_whose_excess_drop_ranks_below_an_earlier_ones(tmp_path):
    import optuna

    from prunetune.search.fidelity import Rungs, excess_drop

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}")
    rungs = Rungs(storage, "x", "halving")
    first = rungs.start(0)
    assert first.report(6.0, 3.0, 1, last=False) is False  # alone at rung 0: promoted
    first.report(6.0, 3.0, 2, last=True)  # no recovery: nothing to credit later trials with
    first.close("complete")
    assert rungs.recovery(1) == 0.0
    worse = rungs.start(1)
    assert worse.report(9.0, 3.0, 1, last=False) is True  # 6 beyond tolerance > 3: halved away
    assert worse.credit == 0.0
    worse.close("pruned")
    within = rungs.start(2)
    assert within.report(1.0, 3.0, 1, last=False) is False  # within the tolerance: 0, always promoted
    assert excess_drop(1.0, 3.0) == 0.0
    last = rungs.start(3)
    assert last.report(50.0, 3.0, 1, last=True) is False  # a last epoch is never pruned on
    states = [t.state.name for t in optuna.load_study(study_name="x.fidelity", storage=storage).get_trials()]
    assert states[:2] == ["COMPLETE", "PRUNED"]

    # Hyperband: nothing is pruned before a trial completes (its max resource is read off completed trials);
    # then trials far worse than the first are pruned in the brackets that halve at epoch 1.
    hb = Rungs(storage, "h", "hyperband")
    lead = hb.start(0)
    assert [lead.report(1.0, 0.0, e, last=False) for e in (1, 2)] == [False, False]
    lead.report(0.5, 0.0, 3, last=True)
    lead.close("complete")
    pruned = []
    for i in range(1, 7):
        r = hb.start(i)
        pruned.append(r.report(5.0 + i, 0.0, 1, last=False))
        r.close("pruned" if pruned[-1] else "complete")
    assert any(pruned) and not all(pruned)  # brackets differ in where they first halve


def test_halving_credits_the_recovery_completed_trials_made_after_the_same_epoch(tmp_path):
    """Early epochs understate a pruned model (the decaying rate pays off late): a trial the ranking would
    halve away is kept while its drop less the completed trials' median recovery is within tolerance."""
    import optuna

    from prunetune.search.fidelity import Rungs

    rungs = Rungs(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}"), "x", "halving")
    for i, drops in enumerate(([4.0, 0.5], [3.0, 0.0], [6.0, 2.0])):  # recovered 3.5, 3.0, 4.0 after epoch 1
        r = rungs.start(i)
        r.report(drops[0], 1.0, 1, last=False)
        r.report(drops[1], 1.0, 2, last=True)
        r.close("complete")
    assert rungs.recovery(1) == 3.5 and rungs.recovery(2) == 0.0  # the median; nothing after the last epoch
    kept = rungs.start(3)  # ranks below all three (excess 3.4 > 2.0), but 4.4 - 3.5 = 0.9 is within 1.0
    assert kept.report(4.4, 1.0, 1, last=False) is False and kept.credit == 3.5
    kept.close("pruned")
    halved = rungs.start(4)  # 4.6 - 3.5 = 1.1: beyond the tolerance even after the credit, and ranked low
    assert halved.report(4.6, 1.0, 1, last=False) is True
    halved.close("pruned")
    values = [t.intermediate_values[1] for t in optuna.load_study(study_name="x.fidelity", storage=rungs.study._storage).get_trials()]
    assert values == [3.0, 2.0, 5.0, pytest.approx(3.4), pytest.approx(3.6)]  # the pruner ranks the uncredited excess


def test_a_halving_sweep_prunes_the_clearly_worse_trial_and_counts_its_compute(tmp_path, monkeypatch):
    import optuna

    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))  # a fresh cache: the sweep trains the dense model

    # Zero tolerance (both trials rank on their drop), no slack stop; the poor trial (90% of filters) runs second.
    search = {"fidelity": "halving", "tolerance": 0.0, "early_stop_slack": 100.0, "bisect": 0}
    recipe = _recipe(search, finetune={"epochs": 3, "lr": 1e-4})
    (tmp_path / "s").mkdir()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's' / 'study.db'}", study_name="mf",
                                directions=["maximize", "minimize"])
    study.enqueue_trial({"prune.sparsity": 0.3})
    study.enqueue_trial({"prune.sparsity": 0.9})
    doc = sweep(recipe, tmp_path / "s", log=lambda m: None)
    rows = sorted(doc["rows"], key=lambda r: r["trial"])
    assert [r["state"] for r in rows] == ["complete", "pruned"]
    curves = [(t.user_attrs.get("result") or t.user_attrs)["val_curve"] for t in study.get_trials()]
    assert curves[1][0] < curves[0][0] and len(curves[1]) == 1  # halved away for ranking below trial 0 at epoch 1
    assert [r["epochs_run"] for r in rows] == [3, 1] and rows[1]["note"] == "stopped after epoch 1 (halving)"
    # The compute: each trial's fine-tuning seconds over the dense model's mean seconds per training epoch.
    manifest = json.loads((Path(doc["dense"]["cache"]) / "manifest.json").read_text())
    timed = [h["epoch_s"] for h in manifest["dense"]["history"]]
    c = doc["compute"]
    assert c["basis"] == "measured" and c["dense_epoch_s"] == pytest.approx(sum(timed) / len(timed))
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())
    expect = sum(r["finetune_s"] for r in saved["rows"]) / c["dense_epoch_s"] + c["dense_training_epochs"]
    assert c["dense_training_epochs"] == 4 and doc["dense"]["dense_source"] == "train"  # trained by this sweep
    assert saved["compute"]["dense_epochs"] == pytest.approx(expect, abs=1e-3)
    assert all(r["finetune_s"] > 0 for r in saved["rows"]) and c["finetune_epochs"] == 4 and c["trials"] == 2
    assert sum(r["dense_epochs"] for r in saved["rows"]) == pytest.approx(expect - 4, abs=1e-3)
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "Compute: " in md and "Fidelity: successive halving" in md and "| 1 | pruned |" in md
    assert "dense-training-epoch equivalents" in (tmp_path / "s" / "report.html").read_text()


def test_the_budget_stops_launching_trials(tmp_path, monkeypatch):
    # The launch rule, not the clock: every fine-tuning epoch is recorded as costing one second, so each trial
    # costs the same 1 / dense_epoch_s. With measured seconds the test depended on the timing: a second trial
    # under a third of the first's cost (a cold first trial on a busy machine) left room for a third (CI, stop 28).
    from prunetune.search import compute, study as study_mod
    real = compute.trial_record

    def one_second_per_epoch(t):
        rec = real(t)
        return {**rec, "finetune_s": float(rec["epochs_run"])}

    monkeypatch.setattr(compute, "trial_record", one_second_per_epoch)
    monkeypatch.setattr(study_mod, "trial_record", one_second_per_epoch)
    # No teacher: its logits, cached on disk by the first trial, would make later trials cheaper than the first.
    ft = {"epochs": 1, "distill": None}
    first = sweep(_recipe({"trials": 1}, finetune=ft), tmp_path / "s", log=lambda m: None)
    trial = first["rows"][0]["dense_epochs"]
    # Room for one more trial of the mean cost, not for two (plus the dense training, when this sweep ran it).
    budget = first["compute"]["dense_training_epochs"] + 2 * trial + 0.01
    logs: list[str] = []
    doc = sweep(_recipe({"trials": 4, "budget_dense_epochs": budget}, finetune=ft), tmp_path / "s", log=logs.append)
    c = doc["compute"]
    assert len(doc["rows"]) == 2 and c["budget_spent"]
    assert [r["dense_epochs"] for r in doc["rows"]] == [pytest.approx(trial, abs=1e-4)] * 2
    # the mean of the two (each figure is rounded to 3 decimals, so the difference of two can be 1e-3 off)
    assert c["next_trial_expected"] == pytest.approx((c["dense_epochs"] - c["dense_training_epochs"]) / 2, abs=1.5e-3)
    assert c["dense_epochs"] + c["next_trial_expected"] > budget
    assert "no further trials were launched" in (tmp_path / "s" / "sweep.md").read_text()
    again = sweep(_recipe({"trials": 4, "budget_dense_epochs": budget}, finetune=ft), tmp_path / "s", log=logs.append)
    assert len(again["rows"]) == 2 and any("budget" in m and "no trial launched" in m for m in logs)


# -- bad input: one line naming the field, exit 2 --


@pytest.mark.parametrize("scan,search,needle", [
    (None, {}, "search.warm_start: "),                                  # the file does not exist
    ("not json", {}, "is not valid JSON"),
    ({"kind": "run"}, {}, "is not a sensitivity scan"),
    ({**_scan(), "layers": [{"layer": "a", "scores": {"0.25": 1.0}}]}, {}, "lacks dense, amounts"),
    (_scan(method="unstructured"), {}, "the scan pruned with 'unstructured' but prune.method is 'structured'"),
    (_scan(), {"space": {"finetune.lr": [1e-4, 1e-3]}}, "needs prune.sparsity searched as a [low, high] range"),
    (_scan(metric="rmse"), {}, "the scan measured 'rmse'"),
    (_scan(), {"sampler": "grid"}, "the grid sampler fixes every point"),
    (None, {"fidelity": "sometimes", "warm_start": None}, "search.fidelity"),
    (None, {"budget_dense_epochs": 0, "warm_start": None}, "search.budget_dense_epochs"),
])
def test_bad_search_inputs_exit_2_with_one_line(tmp_path, scan, search, needle):
    path = tmp_path / "sensitivity.json"
    if scan is not None:
        path.write_text(scan if isinstance(scan, str) else json.dumps(scan))
    recipe = {"name": "bad", "prune": {"method": "structured"},
              "search": {**SEARCH, "warm_start": str(path), **search}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    p = warm_cli.run(["sweep", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")], env=cli_env(tmp_path), timeout=300)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2, p.stderr[-1000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
    if search.get("warm_start", True) is not None:
        assert "search.warm_start" in lines[0]
    assert not (tmp_path / "o" / "study.db").exists()


def test_load_scan_accepts_the_documented_format(tmp_path):
    doc = {"kind": "sensitivity", "metric": "accuracy", "higher_is_better": True, "dense": 91.2, "method": "structured",
           "importance": "l2", "amounts": [0.25, 0.5, 0.75, 0.9],
           "layers": [{"layer": "features.0", "params": 320, "scores": {"0.25": 90.1, "0.5": 88.0, "0.75": 80.2, "0.9": 50.3}}]}
    (tmp_path / "s.json").write_text(json.dumps(doc))
    scan = load_scan(tmp_path / "s.json")
    assert predicted_drop(scan, 0.5) == pytest.approx(91.2 - 88.0)


def test_an_unreachable_amount_keeps_the_last_reachable_drop(tmp_path):
    # A layer the pruner could not cut to 0.9 (it would have emptied it) is scanned as null there.
    scan = _scan(layers=[{"layer": "features.0", "params": 72, "scores": {"0.25": 89.5, "0.5": 89.0, "0.75": 86.0, "0.9": None}}])
    (tmp_path / "s.json").write_text(json.dumps(scan))
    loaded = load_scan(tmp_path / "s.json")
    assert predicted_drop(loaded, 0.9) == pytest.approx(4.0) and predicted_drop(loaded, 0.8) == pytest.approx(4.0)
    assert predicted_drop(loaded, 0.625) == pytest.approx(2.5)


def test_a_cached_dense_model_is_timed_here_for_the_compute_unit(tmp_path, monkeypatch):
    """A cached model's training history may have been timed elsewhere or under load: the sweep times a
    slice of a dense epoch in its own process instead, and says so."""
    from prunetune.search import reference

    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    recipe = _recipe({"trials": 1})
    first = reference.dense_reference(recipe, lambda m: None)  # trains the dense model: its own epochs
    assert first["dense_source"] == "train" and first["trained_epochs"] == 4
    assert first["epoch_s_from"] == "the dense training epochs of this sweep"
    calls = []
    monkeypatch.setattr(reference, "CALIBRATION_STEPS", 1)  # one timed step of the epoch's two: scaled by 2
    real = reference.epoch_seconds_here
    monkeypatch.setattr(reference, "epoch_seconds_here", lambda *a: calls.append(1) or real(*a))
    again = reference.dense_reference(recipe, lambda m: None)  # from the cache now: timed here
    assert again["dense_source"] != "train" and again["trained_epochs"] == 0 and calls == [1]
    assert again["epoch_s_from"].startswith("1 dense training steps timed here")
    # The same model, machine and epoch: near the epochs it was trained in (milliseconds here: a wide band).
    assert first["epoch_s"] / 5 < again["epoch_s"] < first["epoch_s"] * 5


# -- bisection of prune.sparsity (search.bisect) --


def test_the_bisection_halves_the_bracket_between_the_largest_amount_reached_and_the_smallest_missed():
    from prunetune.search import bisect
    from prunetune.search.space import parse_space

    base = Recipe.model_validate({**BASE, "prune": {"method": "structured", "importance": "l2"}}).model_dump(mode="json")
    dims = parse_space({"prune.sparsity": [0.3, 0.9], "prune.importance": {"choices": ["l1", "l2"]},
                        "finetune.lr": [1e-3, 3e-3], "finetune.epochs": [4, 6]}, base)
    assert base["finetune"]["lr"] == 2e-3 and base["finetune"]["epochs"] == 2
    state = bisect.plan(dims, base, 3, "tpe")
    # The other fields at the recipe's values where the space holds them (lr 2e-3 is inside; 2 epochs is not).
    assert state["fixed"] == {"prune.importance": "l2", "finetune.lr": base["finetune"]["lr"]}
    assert state["start"] == 0.3 and state["start_from"] == "range"
    assert bisect.next_amount(state, []) == 0.6
    state["points"] = [0.6]
    assert bisect.next_amount(state, [(0.6, True)]) == 0.75  # reached: go up
    state["points"] = [0.6, 0.75]
    assert bisect.bracket(state, [(0.6, True), (0.75, False)]) == (0.6, 0.75)
    assert bisect.next_amount(state, [(0.6, True), (0.75, False)]) == 0.675  # missed: halfway back
    state["points"] = [0.6, 0.75, 0.675]
    assert bisect.next_amount(state, [(0.6, True), (0.75, False), (0.675, True)]) is None  # three steps spent
    # A miss below the largest amount reached (noise) does not move the bracket's top under it.
    assert bisect.bracket({**state, "points": []}, [(0.5, False), (0.6, True)]) == (0.6, 0.9)
    # The warm start's prediction is the low end; a bracket narrower than a fortieth of the range stops early.
    warm = bisect.plan(dims, base, 5, "tpe", start=0.6)
    assert bisect.next_amount(warm, []) == 0.75 and bisect.next_amount(warm, [(0.61, False)]) is None
    # Not applicable: no steps, the grid sampler, sparsity not a float range.
    assert bisect.plan(dims, base, 0, "tpe") is None and bisect.plan(dims, base, 3, "grid") is None
    assert bisect.plan(parse_space({"prune.sparsity": {"choices": [0.5, 0.7]}}, base), base, 3, "tpe") is None


def test_a_sweep_bisects_above_the_warm_starts_prediction_then_samples(tmp_path):
    (tmp_path / "sensitivity.json").write_text(json.dumps(_scan()))
    search = {"warm_start": str(tmp_path / "sensitivity.json"), "trials": 4, "bisect": 2,
              "space": {"prune.sparsity": [0.3, 0.9], "prune.importance": {"choices": ["l1", "l2"]}}}
    logs: list[str] = []
    doc = sweep(_recipe(search, finetune={"epochs": 1}, prune={"method": "structured", "importance": "l1"}),
                tmp_path / "s", log=logs.append)
    rows = sorted(doc["rows"], key=lambda r: r["trial"])
    assert len(rows) == 4 and doc["warm_start"]["points"] == [] and doc["warm_start"]["predicted"] == 0.5625
    dense = doc["dense"]["val_accuracy"]
    # Replay the rule on the trials' own outcomes: the scan's 0.5625 is the low end, 0.9 the top.
    lo, hi, want = 0.5625, 0.9, []
    for r in rows[:2]:
        want.append(round((lo + hi) / 2, 4))
        ok = r["state"] == "complete" and dense - r["val_accuracy"] <= 3.0
        lo, hi = (want[-1], hi) if ok else (lo, want[-1])
    assert [r["params"]["prune.sparsity"] for r in rows[:2]] == want
    assert all(r["params"]["prune.importance"] == "l1" for r in rows[:2])  # the recipe's value while bisecting
    b = doc["bisect"]
    assert [t["prune.sparsity"] for t in b["trials"]] == want and b["bracket"] == [lo, hi] and b["points"] == want
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "predicts prune.sparsity 0.5625 within the tolerance before fine-tuning" in md
    assert f"Bisection of prune.sparsity above the warm start's predicted 0.5625 up to 0.9: trials at {want[0]:g} (" in md
    assert f"the boundary lies in [{lo:g}, {hi:g}]" in (tmp_path / "s" / "report.html").read_text()
    assert any(m.startswith("sweep: bisection 2 of 2: prune.sparsity") for m in logs)


def test_a_running_trial_stops_before_an_epoch_that_would_pass_the_budget(tmp_path):
    import optuna

    from prunetune.search.objective import over_budget

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("dense", {"epoch_s": 10.0})
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[90.0, 0.5],
                                              user_attrs={"epoch_s": [30.0, 30.0]}))  # 6 dense epochs spent
    running = study.ask()
    running.set_user_attr("epoch_s", [15.0])  # 1.5 more, as the sweep's epoch hook records them
    # Spent 7.5; the next epoch is expected to cost the trial's mean so far, 1.5.
    assert not over_budget(study, 9.0, [15.0]) and over_budget(study, 8.9, [15.0])
    assert not over_budget(study, None, [15.0]) and not over_budget(study, 1.0, [])
    # In a sweep: a budget smaller than one epoch lets the first trial start and stops it after its first epoch.
    recipe = lambda **search: _recipe({**search, "early_stop_slack": 100.0}, finetune={"epochs": 2, "distill": None})  # noqa: E731
    dense = sweep(recipe(trials=0), tmp_path / "s", log=lambda m: None)["compute"]["dense_training_epochs"]  # 0 when cached
    doc = sweep(recipe(trials=3, budget_dense_epochs=dense + 0.01), tmp_path / "s", log=lambda m: None)
    assert [(r["state"], r["epochs_run"], r.get("note")) for r in doc["rows"]] == [("pruned", 1, "stopped after epoch 1 (budget)")]
    assert doc["bisect"]["trials"][0]["outcome"] is None  # out of budget says nothing about the amount
