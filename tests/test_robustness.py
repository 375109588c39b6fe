"""Robustness as a measurement (issue 8, part 3): accuracy under Gaussian noise and FGSM / PGD attacks
(the Adversarial Robustness Toolbox's) at every stage, in the report, and as a sweep constraint.

Tiny models on in-process images whose pixels lie in [0, 1] and are stored normalised (mean 0.3,
std 0.25), as Fashion-MNIST's are: the class is a brighter quadrant (+0.25) over uniform noise."""

from __future__ import annotations

import builtins
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyMLP

from prunetune.data.base import DataBundle, TensorData, split_train_val
from prunetune.errors import PrunetuneError
from prunetune.recipe import Recipe, RobustnessSpec, load_recipe
from prunetune.registry import DATA_SOURCES, load_builtins
from prunetune.robustness import attack_inputs, check_inputs, measure_robustness
from prunetune.tasks import Task
from prunetune.tasks.classification import Classification

pytest.importorskip("art", reason="evaluate.robustness needs the robust extra (adversarial-robustness-toolbox)")

MEAN, STD = 0.3, 0.25
CPU = torch.device("cpu")


def pixel_bundle(n: int = 300, classes: int = 3, seed: int = 0, size: int = 8) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    pix = 0.5 * torch.rand(n, 1, size, size, generator=g)
    h = size // 2
    for c in range(classes):
        r, q = divmod(c, 2)
        pix[y == c, :, r * h:(r + 1) * h, q * h:(q + 1) * h] += 0.25
    x = (pix.clamp(0, 1) - MEAN) / STD
    data = TensorData(x, y)
    rest, test = split_train_val(y, 0.3, seed)
    tr, va = split_train_val(y[rest], 0.25, seed + 1)
    return DataBundle(data.subset(rest[tr]), data.subset(rest[va]), data.subset(test), [f"c{i}" for i in range(classes)],
                      (1, size, size), {"kind": "image", "mean": [MEAN], "std": [STD], "size": [size, size], "channels": 1}, 64)


def text_bundle(n: int = 12) -> DataBundle:
    ids = torch.randint(5, 50, (n, 6))
    data = TensorData({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.arange(n) % 2)
    return DataBundle(data, data, data, ["neg", "pos"], (6,), {"kind": "text", "max_length": 6}, 8)


load_builtins()
if "robust_pixels" not in DATA_SOURCES:  # in-process only, like conftest's "synthetic"
    DATA_SOURCES.register("robust_pixels", "test data: normalised [0, 1] images, 3 classes")(
        lambda spec, seed: pixel_bundle(n=int(spec.limit or 300), seed=seed))
    DATA_SOURCES.register("robust_text", "test data: token ids")(lambda spec, seed: text_bundle())


@pytest.fixture(scope="module")
def trained():
    """TinyMLP trained to 100% test accuracy: robust at small eps, broken at eps 0.1."""
    b = pixel_bundle()
    torch.manual_seed(0)
    m = TinyMLP(3, (1, 8, 8))
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(60):
        for i in range(0, len(b.train), 32):
            loss = torch.nn.functional.cross_entropy(m(b.train.x[i:i + 32]), b.train.y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.zero_grad(set_to_none=True)
    return m.eval(), b


def _numbers(r: dict) -> dict:
    return {k: r[k] for k in ("examples", "clean", "noise", "fgsm", "pgd")}


def test_accuracy_falls_from_clean_to_fgsm_to_pgd_and_strength_zero_is_clean(trained):
    model, b = trained
    task = Classification()
    spec = RobustnessSpec(noise=[0, 0.05, 0.2], fgsm=[0, 0.05, 0.1], pgd=[0, 0.05, 0.1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    np.random.seed(5)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(123)
    np.random.seed(5)
    with torch.no_grad():  # attacks need gradients: the measurement turns them on itself
        r = measure_robustness(model, task, b, spec, CPU)
    # The global RNGs are untouched (PGD's random start draws from numpy's).
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert r["examples"] == len(b.test) == 90  # fewer than `examples`: all of them
    stage_acc = task.evaluate(model, b.test, 64, CPU, b.class_names)["accuracy"]
    assert r["clean"] == stage_acc == 100.0
    # Strength 0 is the clean accuracy exactly (FGSM at 0 goes through ART).
    assert r["noise"]["0.0"] == r["fgsm"]["0.0"] == r["pgd"]["0.0"] == r["clean"]
    for key in ("0.05", "0.1"):
        assert r["pgd"][key] <= r["fgsm"][key] <= r["clean"]
    # Not vacuous: at eps 0.1 both attacks bite, PGD harder than FGSM.
    assert r["pgd"]["0.1"] < r["fgsm"]["0.1"] < r["clean"]
    assert r["fgsm"]["0.05"] > r["fgsm"]["0.1"]
    assert r["noise"]["0.2"] <= r["clean"]
    assert r["pgd_steps"] == 10 and r["pgd_step_size"] == 0.25 and r["pgd_random_init"] == 1
    assert r["library"].startswith("adversarial-robustness-toolbox ")
    # The model comes back as it was: weights, eval mode, requires_grad, and no gradients left on it.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    # Deterministic (seeded subset, noise and random start), even inside inference_mode.
    with torch.inference_mode():
        again = measure_robustness(model, task, b, spec, CPU)
    assert _numbers(again) == _numbers(r)


def test_attacked_images_are_valid_pixels_within_eps_of_the_originals(trained):
    model, b = trained
    spec = RobustnessSpec(noise=[0.1], fgsm=[0.05, 0.1], pgd=[0.05, 0.1])
    idx = torch.arange(len(b.test))
    x, y, out = attack_inputs(model, Classification(), b, spec, CPU, idx)
    normalised = b.test.x.numpy()
    assert np.allclose((x - MEAN) / STD, normalised, atol=1e-5) and np.array_equal(y, b.test.y.numpy())
    assert set(out) == {("noise", "0.1"), ("fgsm", "0.05"), ("fgsm", "0.1"), ("pgd", "0.05"), ("pgd", "0.1")}
    for (attack, key), adv in out.items():
        eps = float(key)
        assert adv.shape == x.shape and adv.dtype == np.float32
        assert adv.min() >= 0.0 and adv.max() <= 1.0, (attack, key)  # clip_values: valid pixels
        if attack == "noise":
            inside = (adv > 0) & (adv < 1)
            assert abs(float((adv - x)[inside].std()) - eps) < 0.1 * eps
            continue
        delta = np.abs(adv - x)
        assert delta.max() <= eps + 1e-6, (attack, key)  # the L-inf ball, pixel units
        assert delta.max() >= eps - 1e-6, (attack, key)  # and the attack uses it
        # In the model's normalised space the ball is eps / std.
        assert np.abs((adv - MEAN) / STD - normalised).max() <= eps / STD + 1e-5
    # FGSM is one signed step: every unclipped pixel moved by exactly 0 or eps.
    d = np.abs(out[("fgsm", "0.1")] - x)
    free = (out[("fgsm", "0.1")] > 0) & (out[("fgsm", "0.1")] < 1)
    assert np.all(np.isclose(d[free], 0.1, atol=1e-6) | (d[free] < 1e-6))


def test_examples_is_a_seeded_class_balanced_subset(trained):
    model, b = trained
    spec = RobustnessSpec(fgsm=[0.1], examples=30, seed=3)
    r = measure_robustness(model, Classification(), b, spec, CPU)
    assert r["examples"] == 30 and r["seed"] == 3
    x, y, _ = attack_inputs(model, Classification(), b, spec, CPU)
    assert np.bincount(y).tolist() == [10, 10, 10]


def _run_recipe(**evaluate) -> Recipe:
    return load_recipe(None, [
        "name=rob", "model.name=tiny_cnn", "data.source=robust_pixels", "data.limit=300", "dense.epochs=6",
        "dense.batch_size=16", "prune.method=structured", "prune.sparsity=0.5", "finetune.epochs=2",
        "finetune.batch_size=16", "evaluate.latency=false",
        "evaluate.memory=false", *[f"evaluate.{k}={v}" for k, v in evaluate.items()]])


def test_a_run_measures_robustness_at_every_stage_and_reports_it_side_by_side(tmp_path):
    from prunetune.pipeline import run

    recipe = _run_recipe(**{"robustness.noise": "[0.1]", "robustness.fgsm": "[0.05]", "robustness.pgd": "[0.05, 0.1]"})
    rep = run(recipe, tmp_path / "r", log=lambda m: None)
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["stages"] == json.loads(json.dumps(rep["stages"]))
    for name in ("dense", "pruned", "finetuned"):
        r = saved["stages"][name]["robustness"]
        assert r["examples"] == 90  # the whole (validation-free) test split: fewer than the default 1000
        assert r["clean"] == saved["stages"][name]["accuracy"]
        assert r["pgd"]["0.1"] <= r["pgd"]["0.05"] <= r["fgsm"]["0.05"] <= r["clean"]
        assert set(r["noise"]) == {"0.1"} and set(r["fgsm"]) == {"0.05"} and set(r["pgd"]) == {"0.05", "0.1"}
        assert all(0 <= v <= 100 for a in ("noise", "fgsm", "pgd") for v in r[a].values())
    dense = saved["stages"]["dense"]["robustness"]
    assert dense["clean"] >= 90 and dense["pgd"]["0.1"] < dense["clean"] - 20  # a trained model, and the attack bites
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Robustness" in md and "| condition | dense | pruned | Δ | finetuned | Δ |" in md
    st = saved["stages"]
    for label, attack, key in (("clean", "clean", None), ("noise σ=0.1", "noise", "0.1"), ("FGSM ε=0.05", "fgsm", "0.05"),
                               ("PGD ε=0.05", "pgd", "0.05"), ("PGD ε=0.1", "pgd", "0.1")):
        v = [st[s]["robustness"][attack] if key is None else st[s]["robustness"][attack][key] for s in ("dense", "pruned", "finetuned")]
        assert (f"| {label} | {v[0]:.2f} | {v[1]:.2f} | {v[1] - v[0]:+.2f} | {v[2]:.2f} | {v[2] - v[0]:+.2f} |") in md, label
    assert md.index("| PGD ε=0.05 |") < md.index("| PGD ε=0.1 |")
    html = (tmp_path / "r" / "report.html").read_text()
    assert '<section id="robustness">' in html and "PGD ε=0.1" in html


def test_without_robustness_nothing_is_measured_or_reported(tmp_path):
    from prunetune.pipeline import run

    rep = run(_run_recipe(), tmp_path / "r", log=lambda m: None, save=False)
    assert all("robustness" not in s for s in rep["stages"].values())
    assert "## Robustness" not in (tmp_path / "r" / "report.md").read_text()


def test_text_inputs_are_refused_before_any_training(tmp_path, monkeypatch):
    import prunetune.pipeline as pipeline
    import prunetune.session as session

    monkeypatch.setattr(session, "obtain_dense", lambda *a, **k: pytest.fail("refused after training"))
    recipe = load_recipe(None, ["model.name=tiny_mlp", "data.source=robust_text", "evaluate.robustness.fgsm=[0.1]"])
    with pytest.raises(PrunetuneError) as e:
        pipeline.run(recipe, tmp_path / "r", log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("evaluate.robustness: only image inputs") and "embedding-space attacks are out of scope" in msg
    assert "\n" not in msg and not (tmp_path / "r").exists()
    with pytest.raises(PrunetuneError, match="only image inputs"):
        measure_robustness(TinyMLP(2, (6,)), Classification(), text_bundle(), RobustnessSpec(fgsm=[0.1]), CPU)


def test_tasks_without_classes_are_refused(trained):
    _, b = trained
    with pytest.raises(PrunetuneError, match="evaluate.robustness: measures classification accuracy; task 'regression' "
                                             "is scored by rmse"):
        check_inputs(b, RobustnessSpec(fgsm=[0.1]), Task.named("regression"))
    check_inputs(b, RobustnessSpec(fgsm=[0.1]), Classification())
    check_inputs(b, RobustnessSpec(fgsm=[0.1]), Task.named("classification", "macro_f1"))  # still has classes


def test_without_the_robust_extra_the_error_names_it(trained, monkeypatch):
    real = builtins.__import__

    def no_art(name, *args, **kwargs):
        if name == "art" or name.startswith("art."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_art)
    model, b = trained
    spec = RobustnessSpec(pgd=[0.05])
    for call in (lambda: check_inputs(b, spec), lambda: measure_robustness(model, Classification(), b, spec, CPU)):
        with pytest.raises(PrunetuneError) as e:
            call()
        assert str(e.value) == ("evaluate.robustness needs the Adversarial Robustness Toolbox; "
                                "pip install 'prunetune[robust]'")
    check_inputs(b, None)  # nothing asked, nothing needed


@pytest.mark.parametrize("overrides,needle", [
    (["evaluate.robustness.fgsm=[-0.1]"], "recipe: evaluate.robustness.fgsm: strengths must be >= 0 (got -0.1)"),
    (["evaluate.robustness.pgd=[0.05, -0.05]"], "recipe: evaluate.robustness.pgd: strengths must be >= 0 (got -0.05)"),
    (["evaluate.robustness.noise=-0.2"], "recipe: evaluate.robustness.noise: strengths must be >= 0 (got -0.2)"),
    (["evaluate.robustness.noise=[.nan]"], "evaluate.robustness.noise: strengths must be >= 0 (got nan)"),
    (["evaluate.robustness.pgd=[1.5]"], "evaluate.robustness.pgd: epsilon 1.5 is more than the whole [0, 1] pixel range"),
    (["evaluate.robustness.examples=10"], "evaluate.robustness: give at least one of noise, fgsm, pgd"),
    (["evaluate.robustness.fgsm=[0.1]", "evaluate.robustness.pgd_steps=0"], "evaluate.robustness.pgd_steps: Input should be greater"),
    (["search.robustness_floor.attack=pgd", "search.robustness_floor.strength=0.05", "search.robustness_floor.min_accuracy=60"],
     "search.robustness_floor: evaluate.robustness.pgd must include 0.05"),
    (["search.robustness_floor.attack=fgsm", "search.robustness_floor.strength=0.05", "search.robustness_floor.min_accuracy=60",
      "evaluate.robustness.pgd=[0.05]"], "search.robustness_floor: evaluate.robustness.fgsm must include 0.05"),
    (["search.robustness_floor.attack=pgd", "search.robustness_floor.strength=-0.05", "search.robustness_floor.min_accuracy=60"],
     "search.robustness_floor.strength: Input should be greater than or equal to 0"),
    (["search.robustness_floor.attack=cw", "search.robustness_floor.strength=0.05", "search.robustness_floor.min_accuracy=60"],
     "search.robustness_floor.attack: Input should be 'noise', 'fgsm' or 'pgd'"),
])
def test_bad_robustness_settings_are_one_line_recipe_errors(overrides, needle):
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_strengths_accept_a_scalar_and_are_sorted_once_each():
    r = load_recipe(None, ["evaluate.robustness.fgsm=0.1", "evaluate.robustness.pgd=[0.1, 0.05, 0.1]",
                           "search.robustness_floor.attack=pgd", "search.robustness_floor.strength=0.05",
                           "search.robustness_floor.min_accuracy=60"])
    assert r.evaluate.robustness.fgsm == [0.1] and r.evaluate.robustness.pgd == [0.05, 0.1]
    assert r.evaluate.robustness.noise == [] and r.evaluate.robustness.examples == 1000
    assert load_recipe(None, []).evaluate.robustness is None


# -- the sweep's robustness floor -----------------------------------------------------------------

SWEEP_BASE = {
    "name": "rsw", "model": {"name": "tiny_cnn"}, "data": {"source": "robust_pixels", "limit": 300},
    "dense": {"epochs": 6, "batch_size": 16}, "finetune": {"epochs": 2, "batch_size": 16},
    "evaluate": {"latency": False, "memory": False, "robustness": {"pgd": [0.05, 0.3], "examples": 60}},
}
SEARCH = {"tolerance": 50.0, "objective": "nonzero", "trials": 2, "sampler": "grid", "grid_points": 2,
          "space": {"prune.method": {"choices": ["structured"]}, "prune.sparsity": [0.3, 0.6]}}


def _sweep(tmp_path, floor: dict, **search):
    from prunetune.search.study import sweep

    recipe = Recipe.model_validate({**SWEEP_BASE, "search": {**SEARCH, **search, "robustness_floor": floor}})
    return recipe, sweep(recipe, tmp_path / "s", log=lambda m: None)


def test_a_floor_no_trial_meets_leaves_no_balance_point_and_marks_trials_infeasible(tmp_path):
    import optuna

    from prunetune.search.study import summarise

    # PGD at eps 0.3 (more than the 0.25 class signal) never leaves a model 100% right.
    recipe, doc = _sweep(tmp_path, {"attack": "pgd", "strength": 0.3, "min_accuracy": 100.0}, sampler="tpe")
    done = [r for r in doc["rows"] if r["state"] == "complete"]
    assert len(done) == 2
    assert doc["balance_trial"] is None and doc["front"] == [] and not (tmp_path / "s" / "balance").exists()
    for r in done:
        assert r["meets_floor"] is False and r["robust_accuracy"] < 100.0 and not r["pareto"]
        assert r["note"].startswith("below the robustness floor")
        trial_rep = json.loads((tmp_path / "s" / "trials" / f"trial-{r['trial']:04d}" / "report.json").read_text())
        assert trial_rep["stages"]["finetuned"]["robustness"]["pgd"]["0.3"] == r["robust_accuracy"]  # on validation
    study = optuna.load_study(study_name="rsw", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    for t in study.trials:
        c = t.user_attrs["constraint"][0]
        assert c == pytest.approx(100.0 - t.user_attrs["result"]["robust_accuracy"]) and c > 0
        if hasattr(optuna.trial.Trial, "set_constraint"):  # optuna >= 5: the samplers read trial.constraints
            assert t.constraints == {"robustness_floor": t.user_attrs["constraint"][0]}
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "Robustness floor: validation accuracy under PGD ε=0.3 ≥ 100.0%" in md
    assert "No trial is within the tolerance and above the robustness floor yet." in md
    # Without the floor the same trials would have given a balance point: the floor made the difference.
    assert summarise(study, recipe.search.model_copy(update={"robustness_floor": None}))["balance_trial"] is not None
    assert doc["dense"]["stage"]["robustness"]["pgd"]["0.3"] < 100.0  # the dense reference is measured too


def test_a_floor_every_trial_meets_changes_nothing(tmp_path):
    import optuna

    from prunetune.search.study import summarise

    recipe, doc = _sweep(tmp_path, {"attack": "pgd", "strength": 0.05, "min_accuracy": 0.0})
    study = optuna.load_study(study_name="rsw", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    plain = summarise(study, recipe.search.model_copy(update={"robustness_floor": None}))
    done = [r for r in doc["rows"] if r["state"] == "complete"]
    assert len(done) == 2 and all(r["meets_floor"] for r in done)
    assert doc["balance_trial"] is not None
    assert (doc["balance_trial"], doc["front"]) == (plain["balance_trial"], plain["front"])
    assert (tmp_path / "s" / "balance" / "report.json").exists()


def test_optuna_4_gets_the_floor_through_constraints_func(monkeypatch):
    import optuna

    from prunetune.search.objective import constraints
    from prunetune.search.study import sampler

    spec = Recipe.model_validate({**SWEEP_BASE, "search": {**SEARCH, "sampler": "tpe", "robustness_floor": {
        "attack": "pgd", "strength": 0.05, "min_accuracy": 50}}}).search
    for cls in optuna.trial.Trial.__mro__:  # as in optuna 4: no Trial.set_constraint
        if "set_constraint" in vars(cls):
            monkeypatch.delattr(cls, "set_constraint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna 5 deprecates constraints_func
        made = sampler(spec, [], 0)
    assert made._constraints_func is constraints
    trial = optuna.trial.create_trial(values=[90.0, 1.0], user_attrs={"constraint": [12.5]})
    assert constraints(trial) == (12.5,)
    assert constraints(optuna.trial.create_trial(values=[90.0, 1.0])) == (0.0,)  # stopped early: not judged
