"""Per-layer amounts (`prune.layer_sparsity`) and `prunetune sensitivity` (issue 14): the scan's
file format and what it measures, the allocation, a written recipe that runs with the widths it
asks for, and the bad inputs (one line, exit 2, nothing left behind)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_bundle
from prunetune import cli
from prunetune.errors import PrunetuneError
from prunetune.pruning.allocation import allocate, weighted_amount
from prunetune.pruning.controller import PruningController
from prunetune.pruning.targets import layer_amounts
from prunetune.recipe import PruneSpec, load_recipe
from prunetune.tasks import Task

TINY = ["model.name=tiny_cnn", "data.source=synthetic", "data.limit=300", "dense.epochs=4", "dense.lr=0.01",
        "dense.batch_size=16", "finetune.epochs=1", "finetune.batch_size=16", "evaluate.latency=false",
        "evaluate.memory=false"]
SETS = [a for s in TINY for a in ("--set", s)]
AMOUNTS = [0.25, 0.5, 0.75, 0.9]


def _cli(args: list, capsys) -> tuple[int, str, str]:
    """The command line in-process (the tiny model and data are registered in this process only)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["prunetune", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """A structured l2 scan of the trained tiny CNN, with a recipe allocated for an overall 0.5."""
    root = tmp_path_factory.mktemp("sens")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["prunetune", "sensitivity", *SETS, "--out", root / "scan",
                                "--write-recipe", root / "alloc.yaml", "--target", "0.5"])
        with pytest.raises(SystemExit) as e:
            cli.main()
    assert e.value.code == 0
    return root


def test_scan_file_has_the_agreed_format(scanned):
    doc = json.loads((scanned / "scan" / "sensitivity.json").read_text())
    assert list(doc) == ["kind", "metric", "higher_is_better", "dense", "method", "importance", "amounts", "layers",
                         "dense_macs"]
    assert (doc["kind"], doc["metric"], doc["higher_is_better"], doc["method"], doc["importance"]) == (
        "sensitivity", "accuracy", True, "structured", "l2")
    assert doc["amounts"] == AMOUNTS
    # The layers a run would prune (the classifier is kept), with their weights' sizes.
    assert [(r["layer"], r["params"]) for r in doc["layers"]] == [("features.0", 72), ("features.4", 1152), ("head.0", 2048)]
    for r in doc["layers"]:
        assert list(r) == ["layer", "params", "scores", "macs"] and list(r["scores"]) == ["0.25", "0.5", "0.75", "0.9"]
        assert all(0 <= v <= 100 for v in r["scores"].values() if v is not None)
        # The MACs of the model with this layer alone pruned: fewer as the amount grows, never more than dense.
        # An amount that would empty the layer (features.0 has 8 channels: 0.9 leaves none) is unreachable.
        m = [r["macs"][k] for k in ("0.25", "0.5", "0.75", "0.9") if r["macs"][k] is not None]
        assert m == sorted(m, reverse=True) and m[0] < doc["dense_macs"], r
        assert [k for k, v in r["scores"].items() if v is None] == [k for k, v in r["macs"].items() if v is None]
    assert doc["layers"][0]["scores"]["0.9"] is None and doc["layers"][0]["scores"]["0.75"] is not None
    png = (scanned / "scan" / "sensitivity.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert sorted(p.name for p in (scanned / "scan").iterdir()) == ["sensitivity.json", "sensitivity.png"]


def test_scan_measures_a_real_drop(scanned):
    doc = json.loads((scanned / "scan" / "sensitivity.json").read_text())
    assert doc["dense"] > 90  # trained: the drop below is pruning, not an untrained model
    worst = min((r for r in doc["layers"] if r["scores"]["0.9"] is not None), key=lambda r: r["scores"]["0.9"])
    assert worst["scores"]["0.9"] < doc["dense"] - 10
    # A light cut of one layer costs little somewhere (the scan is not just noise).
    assert max(r["scores"]["0.25"] for r in doc["layers"]) >= doc["dense"] - 5


def test_written_recipe_allocates_the_target(scanned):
    doc = json.loads((scanned / "scan" / "sensitivity.json").read_text())
    r = load_recipe(scanned / "alloc.yaml")
    assert r.prune.scope == "layer" and r.prune.sparsity == 0.5 and r.prune.method == "structured"
    assert set(r.prune.layer_sparsity) == {"features.0", "features.4", "head.0"}
    assert weighted_amount(doc, r.prune.layer_sparsity) == pytest.approx(0.5, abs=1e-4)
    assert max(r.prune.layer_sparsity.values()) <= 0.9
    assert r.data.limit == 300 and r.model.name == "tiny_cnn"  # the rest is the input recipe


def test_written_recipe_runs_with_its_per_layer_widths(scanned, capsys):
    rc, out, err = _cli(["run", scanned / "alloc.yaml", "--out", scanned / "run"], capsys)
    assert rc == 0, err
    want = load_recipe(scanned / "alloc.yaml").prune.layer_sparsity
    plan = {p["layer"]: p for p in json.loads((scanned / "run" / "report.json").read_text())["plan"]}
    for layer, a in want.items():
        before, after = plan[layer]["shape_before"][0], plan[layer]["shape_after"][0]
        assert abs(after - before * (1 - a)) < 1, (layer, a, before, after)
    assert plan["classifier"]["shape_after"][0] == 3


def test_table_is_printed(scanned, capsys, tmp_path):
    rc, out, err = _cli(["sensitivity", *SETS, "--amounts", "0.5", "--set", "prune.method=unstructured",
                         "--out", tmp_path / "u"], capsys)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[1].split() == ["layer", "params", "0.5"] and [ln.split()[0] for ln in lines[2:]] == [
        "features.0", "features.4", "head.0"]
    doc = json.loads((tmp_path / "u" / "sensitivity.json").read_text())
    assert doc["method"] == "unstructured" and doc["amounts"] == [0.5]
    assert float(lines[2].split()[-1]) == pytest.approx(doc["layers"][0]["scores"]["0.5"], abs=0.01)


SCAN = {"kind": "sensitivity", "metric": "accuracy", "higher_is_better": True, "dense": 90.0, "method": "structured",
        "importance": "l2", "amounts": [0.25, 0.5, 0.75, 0.9],
        "layers": [{"layer": "tough", "params": 1000, "scores": {"0.25": 85.0, "0.5": 70.0, "0.75": 40.0, "0.9": 20.0}},
                   {"layer": "easy", "params": 1000, "scores": {"0.25": 90.0, "0.5": 89.5, "0.75": 88.0, "0.9": 80.0}},
                   {"layer": "small", "params": 100, "scores": {"0.25": 89.0, "0.5": 88.0, "0.75": 85.0, "0.9": 70.0}}]}


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.6, 0.75])
def test_allocation_reaches_the_target_and_spares_the_sensitive_layer(target):
    a = allocate(SCAN, target)
    assert set(a) == {"tough", "easy", "small"}
    assert weighted_amount(SCAN, a) == pytest.approx(target, abs=0.15)  # within one grid step
    assert weighted_amount(SCAN, a) == pytest.approx(target, abs=1e-4)  # interpolated: exact
    assert a["easy"] > a["tough"] and max(a.values()) <= 0.9 and min(a.values()) >= 0


def test_allocation_follows_the_metric_direction():
    # Lower is better (perplexity): the layer whose perplexity rises most is spared.
    scan = {**SCAN, "higher_is_better": False, "dense": 10.0,
            "layers": [{"layer": "a", "params": 100, "scores": {"0.25": 30.0, "0.5": 60.0, "0.75": 99.0, "0.9": 200.0}},
                       {"layer": "b", "params": 100, "scores": {"0.25": 10.5, "0.5": 11.0, "0.75": 12.0, "0.9": 15.0}}]}
    a = allocate(scan, 0.4)
    assert a == {"a": 0.0, "b": 0.8}


# A conv whose channels hold most of the MACs, a fully connected layer holding most of the parameters.
MACS_SCAN = {**SCAN, "dense_macs": 1000,
             "layers": [{"layer": "conv", "params": 100, "scores": {"0.25": 89.5, "0.5": 88.0, "0.75": 85.0, "0.9": 80.0},
                         "macs": {"0.25": 800, "0.5": 600, "0.75": 400, "0.9": 280}},
                        {"layer": "fc", "params": 10000, "scores": {"0.25": 89.8, "0.5": 89.5, "0.75": 89.0, "0.9": 88.5},
                         "macs": {"0.25": 975, "0.5": 950, "0.75": 925, "0.9": 910}}]}


def test_a_macs_budget_spends_where_the_macs_are():
    by_params = allocate(MACS_SCAN, 0.5)
    assert by_params["fc"] > 0.49 and by_params["conv"] == 0.0  # cheapest per parameter: the fc layer
    by_macs = allocate(MACS_SCAN, 0.3, "macs")  # 30 % of the MACs removed: 300 of 1,000
    # Per MAC removed the conv's first two steps cost less (0.5 / 200, 1.5 / 200) than the fc's first (0.2 / 25).
    assert by_macs == {"conv": 0.375, "fc": 0.0}
    # Interpolated between the measured points, the layers' savings add up to the target exactly.
    saved = {"conv": {0.25: 200, 0.5: 400, 0.75: 600}, "fc": {0.25: 25, 0.5: 50, 0.75: 75, 0.9: 90}}

    def interp(layer, a):
        pts = sorted([(0.0, 0)] + list(saved[layer].items()))
        for (a0, s0), (a1, s1) in zip(pts, pts[1:]):
            if a0 <= a <= a1:
                return s0 + (s1 - s0) * (a - a0) / (a1 - a0)
    assert interp("conv", by_macs["conv"]) + interp("fc", by_macs["fc"]) == pytest.approx(300, abs=0.01)
    with pytest.raises(PrunetuneError, match=r"^--target: 0.9 is above what the scanned amounts remove \(0.810 of the MACs"):
        allocate(MACS_SCAN, 0.9, "macs")
    with pytest.raises(PrunetuneError, match=r"^--budget macs: this sensitivity scan has no MACs"):
        allocate(SCAN, 0.3, "macs")


@pytest.fixture(scope="module")
def macs_scanned(tmp_path_factory):
    """The tiny CNN scanned again, with a recipe allocated for half of its MACs removed."""
    root = tmp_path_factory.mktemp("sens_macs")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["prunetune", "sensitivity", *SETS, "--out", root / "scan", "--write-recipe",
                                root / "alloc.yaml", "--target", "0.5", "--budget", "macs"])
        with pytest.raises(SystemExit) as e:
            cli.main()
    assert e.value.code == 0
    return root


def test_a_macs_budget_recipe_runs_to_the_macs_it_was_given(macs_scanned, capsys):
    """The plan, not the layers' added savings, removes the target: a run of the written recipe
    reports MACs at most half of dense (within 1 % of the MACs kept)."""
    r = load_recipe(macs_scanned / "alloc.yaml")
    assert r.prune.scope == "layer" and set(r.prune.layer_sparsity) == {"features.0", "features.4", "head.0"}
    assert r.prune.sparsity == pytest.approx(weighted_amount(json.loads(
        (macs_scanned / "scan" / "sensitivity.json").read_text()), r.prune.layer_sparsity), abs=1e-4)
    rc, out, err = _cli(["run", macs_scanned / "alloc.yaml", "--out", macs_scanned / "run"], capsys)
    assert rc == 0, err
    stages = json.loads((macs_scanned / "run" / "report.json").read_text())["stages"]
    removed = 1 - stages["finetuned"]["macs"] / stages["dense"]["macs"]
    assert 0.5 - 0.005 <= removed < 0.6, removed


def test_an_unreachable_amount_caps_that_layer():
    # "small" could not be cut to 0.75 or 0.9 (it would have emptied the layer): it stops at 0.5, and a
    # score of null is never read as "no drop".
    scan = {**SCAN, "layers": [dict(SCAN["layers"][1]), {**SCAN["layers"][2], "scores": {
        "0.25": 89.9, "0.5": 89.8, "0.75": None, "0.9": None}}]}
    a = allocate(scan, 0.85)
    assert a["small"] == 0.5 and weighted_amount(scan, a) == pytest.approx(0.85, abs=1e-4)
    with pytest.raises(PrunetuneError, match=r"^--target: 0.89 is above what the scanned amounts remove \(0.864 of the parameters"):
        allocate(scan, 0.89)


def test_allocation_refuses_a_target_beyond_the_scan():
    with pytest.raises(PrunetuneError, match=r"^--target: 0.95 is above the largest scanned amount 0.9"):
        allocate(SCAN, 0.95)
    with pytest.raises(PrunetuneError, match=r"^--target: 1.0 is outside \[0, 1\)"):
        allocate(SCAN, 1.0)
    assert allocate(SCAN, 0.9) == {"tough": 0.9, "easy": 0.9, "small": 0.9}
    assert allocate(SCAN, 0.0) == {"tough": 0.0, "easy": 0.0, "small": 0.0}


def test_layer_amounts_resolution():
    t = ["features.0", "features.4", "head.0"]
    assert layer_amounts(t, {"features.*": 0.2, "features.4": 0.7}) == {"features.0": 0.2, "features.4": 0.7}
    assert layer_amounts(t, {}) == {}
    with pytest.raises(PrunetuneError, match=r"^prune.layer_sparsity: pattern 'conv\*' matches no layer selected for "
                                             r"pruning; target layers: features.0, features.4, head.0$"):
        layer_amounts(t, {"conv*": 0.5})


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("method", ["structured", "unstructured"])
def test_iterative_steps_scale_the_per_layer_amount(method):
    """Iterative to 0.25 in two steps (0.133975, then 0.25): layer 1 (own amount 0.5) goes through
    0.5 x 0.133975 / 0.25 = 0.268 on the way; layer 3 follows the global schedule."""
    spec = PruneSpec(method=method, sparsity=0.25, layer_sparsity={"1": 0.5}, schedule={"kind": "iterative", "steps": 2})
    bundle = make_bundle(n=30)
    c = PruningController(spec, Task.named("classification"), bundle, torch.device("cpu"), ["1", "3"], 1, 0)
    model = _mlp()
    pruner = c.make_pruner(model, c.sparsities)
    if method == "structured":
        widths = []
        for s in c.sparsities:
            c.prune_step(pruner, model, s)
            widths.append((model[1].out_features, model[3].out_features))
        assert widths == [(11, 13), (8, 12)]  # floor(16 x (1 - 0.268)), floor(16 x (1 - 0.134)); then 0.5, 0.25
    else:
        zeros = []
        for s in c.sparsities:
            c.prune_step(pruner, model, s)
            zeros.append((int((model[1].weight == 0).sum()), int((model[3].weight == 0).sum())))
        assert zeros == [(274, 34), (512, 64)]  # round(1024 x 0.268), round(256 x 0.134); then 0.5, 0.25


@pytest.mark.parametrize("method,check", [
    ("structured", lambda row, a: abs(row["shape_after"][0] - row["shape_before"][0] * (1 - a)) < 1),
    ("unstructured", lambda row, a: abs(row["sparsity"] - a) < 1e-2),
])
def test_runs_give_each_layer_its_amount(method, check, tmp_path, capsys):
    rc, out, err = _cli(["run", *SETS, "--set", f"prune.method={method}", "--set", "prune.sparsity=0.5",
                         "--set", "prune.layer_sparsity={features.0: 0.75, 'head.*': 0.25}", "--out", tmp_path / "r"], capsys)
    assert rc == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    plan = {p["layer"]: p for p in rep["plan"]}
    want = {"features.0": 0.75, "features.4": 0.5, "head.0": 0.25}
    for layer, a in want.items():
        assert check(plan[layer], a), (layer, plan[layer])
    assert plan["classifier"]["shape_after"][0] == 3
    assert rep["recipe"]["prune"]["layer_sparsity"] == {"features.0": 0.75, "head.*": 0.25}


BAD = [
    (["run", *SETS, "--set", "prune.layer_sparsity={features.0: 1.5}"], "prune.layer_sparsity: 'features.0': 1.5 is outside [0, 1)"),
    (["run", *SETS, "--set", "prune.layer_sparsity={features.0: -0.1}"], "prune.layer_sparsity: 'features.0': -0.1 is outside"),
    (["run", *SETS, "--set", "prune.layer_sparsity={features.0: 0.5}", "--set", "prune.scope=global"],
     "prune.layer_sparsity sets each layer's amount, but prune.scope global"),
    (["run", *SETS, "--set", "prune.layer_sparsity={features.0: 0.5}", "--set", "prune.method=nm"],
     "prune.layer_sparsity is not supported by prune.method 'nm'"),
    (["run", *SETS, "--set", "prune.layer_sparsity={'conv*': 0.5}"],
     "prune.layer_sparsity: pattern 'conv*' matches no layer selected for pruning; target layers: features.0"),
    (["run", *SETS, "--set", "prune.layer_sparsity={classifier: 0.5}"],  # kept: not a target layer
     "prune.layer_sparsity: pattern 'classifier' matches no layer"),
    (["sensitivity", *SETS, "--amounts", "0.5,1.2"], "--amounts: 1.2 is outside [0, 1)"),
    (["sensitivity", *SETS, "--amounts", "0.5,half"], "--amounts: 'half' is not a number"),
    (["sensitivity", *SETS, "--set", "prune.include=[nope*]"], "prune.include: pattern 'nope*' matches no prunable layer"),
    (["sensitivity", *SETS, "--set", "prune.method=nm"], "prune.method 'nm' has no per-layer amount to scan"),
    (["sensitivity", *SETS, "--write-recipe", "r.yaml", "--target", "0.95"], "--target: 0.95 is above the largest of --amounts"),
    (["sensitivity", *SETS, "--target", "0.5"], "--target: only used with --write-recipe"),
    (["sensitivity", *SETS, "--budget", "macs"], "--budget: only used with --write-recipe"),
    (["sensitivity", *SETS, "--write-recipe", "r.yaml", "--budget", "flops"], "--budget: 'flops' is not one of params, macs"),
    (["sensitivity", *SETS, "--amounts", "0.25", "--write-recipe", "r.yaml", "--budget", "macs", "--target", "0.9"],
     "--target: 0.9 is above what the scanned amounts remove"),
    (["sensitivity", *SETS, "--amounts", "0.5", "--set", "prune.method=unstructured", "--write-recipe", "r.yaml",
      "--budget", "macs"], "--budget macs: prune.method 'unstructured' removes no MACs"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_inputs_are_one_line_exit_2_and_leave_nothing(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _cli([*args, "--out", tmp_path / "out"], capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]  # progress logs go to stderr too
    assert rc == 2 and len(errors) == 1 and err.splitlines()[-1] == errors[0] and needle in errors[0], err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_existing_outputs_are_refused_untouched(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    rc, _, err = _cli(["sensitivity", *SETS, "--out", tmp_path / "out"], capsys)
    assert rc == 2 and err.startswith("error: --out:") and "already exists" in err and err.count("\n") == 1  # before any work
    (tmp_path / "r.yaml").write_text("old")
    rc, _, err = _cli(["sensitivity", *SETS, "--out", tmp_path / "new", "--write-recipe", tmp_path / "r.yaml"], capsys)
    assert rc == 2 and "--write-recipe:" in err and "already exists" in err
    assert (tmp_path / "r.yaml").read_text() == "old" and (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]


def test_recipe_reference_lists_the_new_field_and_command():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "| `prune.layer_sparsity` |" in readme and "prunetune sensitivity" in readme


@pytest.mark.parametrize("method", ["structured", "unstructured"])
def test_only_the_listed_layers_are_pruned_at_sparsity_0(method):
    spec = PruneSpec(method=method, sparsity=0.0, layer_sparsity={"3": 0.5})
    c = PruningController(spec, Task.named("classification"), make_bundle(n=30), torch.device("cpu"), ["1", "3"], 1, 0)
    model = _mlp()
    pruner = c.make_pruner(model, c.sparsities)
    c.prune_step(pruner, model, c.final_sparsity)
    if method == "structured":
        assert (model[1].out_features, model[3].out_features) == (16, 8)
    else:
        assert (int((model[1].weight == 0).sum()), int((model[3].weight == 0).sum())) == (0, 128)
