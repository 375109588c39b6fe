from __future__ import annotations

import sys

import pytest
import torch
from torch.nn import functional as F

from safetensors.torch import load_file

from prunetune.cli import main
from prunetune.dense import dense_key
from prunetune.session import open_session
from prunetune.data.augment import augment
from prunetune.finetune.distill import Distiller, load_teacher
from prunetune.errors import PrunetuneError
from prunetune.models import build_model
from prunetune.pipeline import run
from prunetune.recipe import AugmentSpec, DistillSpec, ModelSpec, Recipe, load_recipe
from prunetune.tasks.classification import Classification

from conftest import make_bundle
from sequence_fixtures import write_ratings


def _teacher(bundle):
    torch.manual_seed(0)
    return build_model(ModelSpec(name="tiny_mlp"), bundle.num_classes, bundle.input_shape).eval()


def test_loss_is_the_hinton_formula():
    bundle = make_bundle()
    teacher = _teacher(bundle)
    d = Distiller(DistillSpec(alpha=0.3, temperature=2.0), Classification(), teacher, bundle, torch.device("cpu"), 0.0, False)
    idx = torch.arange(8)
    x, y = bundle.train.x[idx], bundle.train.y[idx]
    student = torch.randn(8, 3)
    t = teacher(x).detach()
    p_t = F.softmax(t / 2, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(student / 2, -1))).sum(-1).mean()
    want = 0.7 * F.cross_entropy(student, y) + 0.3 * 4 * kl
    assert d.loss(student, y, x, idx).item() == pytest.approx(want.item(), rel=1e-5)
    # A student that matches the teacher pays only the task term.
    assert d.loss(t, y, x, idx).item() == pytest.approx(0.7 * F.cross_entropy(t, y).item(), rel=1e-5)


def test_cached_logits_equal_per_batch_logits():
    bundle = make_bundle()
    teacher = _teacher(bundle)
    cached = Distiller(DistillSpec(), Classification(), teacher, bundle, torch.device("cpu"), 0.0, False)
    live = Distiller(DistillSpec(cache_logits=False), Classification(), teacher, bundle, torch.device("cpu"), 0.0, False)
    assert cached.caches and cached.cached is None and not live.caches  # filled at the first batch, not before
    idx = torch.tensor([5, 1, 17])
    assert torch.allclose(cached.teacher_logits(bundle.train.x[idx], idx), live.teacher_logits(bundle.train.x[idx], idx), atol=1e-6)
    assert cached.cached.shape == (len(bundle.train.y), 3) and live.cached is None
    # With augmentation the inputs differ every epoch: no cache.
    aug = Distiller(DistillSpec(), Classification(), teacher, bundle, torch.device("cpu"), 0.0, True)
    assert not aug.caches


def test_teacher_with_other_classes_is_refused(tmp_path):
    from prunetune.artifacts import save_model

    other = make_bundle(classes=4)
    m = build_model(ModelSpec(name="tiny_mlp"), 4, other.input_shape)
    folder = save_model(m, tmp_path / "t", {"task": "classification", "model": {"name": "tiny_mlp"}, "num_classes": 4,
                                             "class_names": other.class_names, "input_shape": list(other.input_shape),
                                             "preprocess": {}})
    with pytest.raises(PrunetuneError, match="finetune.distill.teacher: .* predicts classes"):
        load_teacher(DistillSpec(teacher=str(folder)), None, make_bundle(classes=3), False)
    with pytest.raises(PrunetuneError, match="not a model folder"):
        load_teacher(DistillSpec(teacher=str(tmp_path / "none")), None, make_bundle(), False)


@pytest.mark.parametrize("overrides,needle", [
    (["finetune.distill.alpha=1.5"], "finetune.distill.alpha"),
    (["finetune.distill.temperature=0"], "finetune.distill.temperature"),
    (["finetune.distill.teacherr=dense"], "finetune.distill.teacherr: unknown key"),
])
def test_bad_distill_settings(overrides, needle):
    with pytest.raises(PrunetuneError, match=needle):
        load_recipe(None, overrides)


@pytest.mark.parametrize("method,schedule", [("structured", "oneshot"), ("structured", "gradual"), ("unstructured", "iterative"),
                                             ("unstructured", "gradual"), ("nm", "oneshot")])
def test_distillation_runs_with_every_pruner_and_schedule(tmp_path, method, schedule):
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=synthetic", "dense.epochs=2", "dense.lr=0.01", "finetune.epochs=2",
        f"prune.method={method}", f"prune.schedule.kind={schedule}", "prune.schedule.steps=2",
        "finetune.distill.alpha=0.5", "evaluate.latency=false", "evaluate.memory=false", "finetune.batch_size=16",
    ])
    report = run(recipe, tmp_path / "r", log=lambda m: None)
    d = report["distill"]
    assert d["teacher"] == "dense" and d["alpha"] == 0.5 and d["cached_logits"] is True and d["auto"] is False
    assert d["teacher_test_accuracy"] == report["stages"]["dense"]["accuracy"] > 50  # learnt beyond chance (33%)
    assert report["stages"]["finetuned"]["prunable_sparsity"] > 0.45
    assert "Distilled from `dense`" in (tmp_path / "r" / "report.md").read_text()


def test_augment_crops_and_flips_reproducibly():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    spec = AugmentSpec(crop_padding=2, hflip=True)
    a = augment(x, spec, torch.Generator().manual_seed(3))
    b = augment(x, spec, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    # Every output pixel is either padding (0) or a pixel of the same image.
    for i in range(2):
        assert set(a[i].unique().tolist()) <= set(x[i].unique().tolist()) | {0.0}
    assert augment(x, AugmentSpec(), torch.Generator()) is x
    with pytest.raises(PrunetuneError, match="image batches only"):
        augment(torch.ones(4, 10), spec, torch.Generator())


def test_distillation_is_refused_for_a_task_that_cannot_distil(tmp_path, monkeypatch, capsys):
    """Regression predicts one number, no class probabilities: refused in one line, before any work."""
    data = write_ratings(tmp_path / "ratings", users=10, items=8, n=60)
    sets = ["task=regression", "model.name=recommender", "data.source=ratings", f"data.path={data}",
            "finetune.distill.alpha=0.5"]
    with pytest.raises(PrunetuneError, match="finetune.distill: task regression cannot be distilled"):
        load_recipe(None, sets)
    monkeypatch.setattr(sys, "argv", ["prunetune", "run", "--out", str(tmp_path / "run"),
                                      *(x for s in sets for x in ("--set", s))])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "finetune.distill" in err, err
    assert not (tmp_path / "run").exists()
    load_recipe(None, sets[:-1])  # the same recipe without distillation is fine


def test_the_teacher_is_scored_in_the_task_metric(tmp_path):
    recipe = load_recipe(None, [
        "model.name=tiny_mlp", "data.source=synthetic", "dense.epochs=2", "dense.lr=0.01", "finetune.epochs=1",
        "prune.method=unstructured", "finetune.distill.alpha=0.5", "evaluate.metric=macro_f1",
        "evaluate.latency=false", "evaluate.memory=false", "finetune.batch_size=16",
    ])
    report = run(recipe, tmp_path / "r", log=lambda m: None)
    d = report["distill"]
    assert d["teacher_test_macro_f1"] == report["stages"]["dense"]["macro_f1"] and "teacher_test_accuracy" not in d
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"(test macro_f1 {d['teacher_test_macro_f1']:.2f})" in md


def _ft(*sets):
    return load_recipe(None, list(sets)).finetune


def test_auto_distils_only_channel_pruning_of_a_fully_fine_tuned_image_classifier_without_augmentation():
    """The default `finetune.distill: auto` turns the teacher on exactly where ft_seeds.md measured a gain."""
    from dataclasses import replace

    from prunetune.tasks.regression import Regression

    images, task = make_bundle(), Classification()
    assert _ft().distill == "auto"
    on = _ft().distillation(task, images, "structured")
    assert isinstance(on, DistillSpec) and (on.teacher, on.alpha, on.temperature, on.cache_logits) == ("dense", 0.7, 4.0, True)
    assert _ft("finetune.distill=null").distillation(task, images, "structured") is None  # off when asked
    for method in ("unstructured", "nm", "depth"):  # level on validation (unstructured) or not measured
        assert _ft().distillation(task, images, method) is None
    assert _ft("finetune.method=lora").distillation(task, images, "structured") is None  # PEFT: not measured
    assert _ft("finetune.augment.hflip=true").distillation(task, images, "structured") is None  # teacher every batch
    assert _ft().distillation(Regression(), images, "structured") is None  # no class probabilities
    text = replace(images, preprocess={"kind": "text", "max_length": 8, "tokenizer": "x"})
    assert _ft().distillation(task, text, "structured") is None  # text classifiers: no validation evidence yet
    # An explicit section is used as written, wherever it is allowed.
    assert _ft("finetune.distill.alpha=0.5").distillation(task, text, "unstructured").alpha == 0.5
    assert _ft("finetune.method=lora", "finetune.distill.alpha=0.5").distillation(task, images, "nm").alpha == 0.5


def test_distill_settings_other_than_auto_null_or_a_section_are_refused_in_one_line():
    with pytest.raises(PrunetuneError, match=r"^recipe: finetune.distill: 'always' is not a setting; use auto, null"):
        load_recipe(None, ["finetune.distill=always"])
    assert load_recipe(None, ["finetune.distill=auto"]).finetune.distill == "auto"
    assert load_recipe(None, ["finetune.distill={}"]).finetune.distill == DistillSpec()


@pytest.mark.parametrize("sets,auto", [([], True), (["finetune.distill=null"], None)])
def test_a_default_channel_pruning_run_of_an_image_classifier_distils_and_says_so(tmp_path, sets, auto):
    recipe = load_recipe(None, [
        "model.name=tiny_cnn", "data.source=synthetic", "dense.epochs=2", "dense.lr=0.01", "finetune.epochs=1",
        "prune.method=structured",
        "evaluate.latency=false", "evaluate.memory=false", "finetune.batch_size=16", *sets])
    report = run(recipe, tmp_path / "r", log=lambda m: None)
    if auto is None:
        assert report["distill"] is None and "Distilled from" not in (tmp_path / "r" / "report.md").read_text()
        return
    d = report["distill"]
    assert d["auto"] is True and d["teacher"] == "dense" and (d["alpha"], d["temperature"]) == (0.7, 4.0)
    assert d["cached_logits"] is True and report["recipe"]["finetune"]["distill"] == "auto"
    # The teacher's pass is fine-tuning time, inside the first epoch (a sweep's compute sums the epochs).
    assert 0 < d["teacher_s"] <= report["finetune"]["history"][0]["epoch_s"]
    md, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "report.html").read_text()
    assert "Distilled from `dense`" in md and "(finetune.distill: auto); set finetune.distill" in md
    assert 'id="distill"' in page and "set finetune.distill to null" in page


def test_a_sweep_can_search_the_teachers_settings_over_the_auto_default():
    """A sweep's base recipe is the dumped recipe, where finetune.distill is the word auto: a searched
    finetune.distill.alpha opens it into a section instead of failing as 'not a section'."""
    from prunetune.search.space import with_params

    base = load_recipe(None, []).model_dump(mode="json")
    assert base["finetune"]["distill"] == "auto"
    data = with_params(base, {"finetune.distill.alpha": 0.9})
    assert data["finetune"]["distill"] == {"alpha": 0.9} and base["finetune"]["distill"] == "auto"
    assert Recipe.model_validate(data).finetune.distill == DistillSpec(alpha=0.9)


def test_the_dense_teachers_logits_are_cached_beside_the_dense_model_and_reused(tmp_path, monkeypatch):
    """The second run that distils from the same cached dense model reads the teacher's logits from disk and
    fine-tunes exactly as the first; a damaged file is recomputed and written again; an uncached dense model
    leaves no logits behind."""
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache"))
    sets = ["model.name=tiny_cnn", "data.source=synthetic", "dense.epochs=1", "dense.lr=0.01", "finetune.epochs=1",
            "prune.method=structured", "evaluate.latency=false", "evaluate.memory=false", "finetune.batch_size=16"]
    first = run(load_recipe(None, sets), tmp_path / "a", log=lambda m: None)
    files = list((tmp_path / "cache" / "teacher").glob("*.safetensors"))
    assert first["distill"]["logits_from_cache"] is None and len(files) == 1
    assert files[0].name.startswith(dense_key(load_recipe(None, sets)) + "-")
    logits = load_file(str(files[0]))["logits"].clone()
    recipe = load_recipe(None, sets)
    bundle = open_session(recipe, lambda m: None).load_data(recipe.data, recipe.model)
    assert logits.shape == (len(bundle.train), 3)  # one row per training example
    second = run(load_recipe(None, sets), tmp_path / "b", log=lambda m: None)
    assert second["distill"]["logits_from_cache"] == str(files[0])
    assert [h["val_accuracy"] for h in second["finetune"]["history"]] == [h["val_accuracy"] for h in first["finetune"]["history"]]
    assert second["stages"]["finetuned"]["accuracy"] == first["stages"]["finetuned"]["accuracy"]
    files[0].write_bytes(b"not a safetensors file")
    third = run(load_recipe(None, sets), tmp_path / "c", log=lambda m: None)
    assert third["distill"]["logits_from_cache"] is None
    assert third["stages"]["finetuned"]["accuracy"] == first["stages"]["finetuned"]["accuracy"]
    assert torch.equal(load_file(str(files[0]))["logits"], logits)
    monkeypatch.setenv("PRUNETUNE_CACHE", str(tmp_path / "cache2"))
    off = run(load_recipe(None, [*sets, "dense.cache=false"]), tmp_path / "d", log=lambda m: None)
    assert off["distill"]["logits_from_cache"] is None and not (tmp_path / "cache2" / "teacher").exists()
