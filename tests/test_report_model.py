"""The typed report (reporting/model.py): report.json and sweep.json load into one model per kind,
dump back unchanged, and files written before reports named their `kind` render the same page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunetune.errors import PrunetuneError
from prunetune.pipeline import run
from prunetune.recipe import Recipe, load_recipe
from prunetune.refine import refine
from prunetune.reporting.markdown import markdown
from prunetune.reporting.model import RefineReport, RunReport, SweepReport, load_report
from prunetune.reporting.plots import figures
from prunetune.reporting.write import render
from prunetune.search.study import sweep

RUN = ["model.name=tiny_cnn", "data.source=synthetic", "data.limit=150", "dense.epochs=2", "dense.lr=0.01",
       "finetune.epochs=1", "finetune.batch_size=16", "prune.method=unstructured", "evaluate.min_run_time=0.02",
       "evaluate.latency_batch=16", "evaluate.memory=false"]
SWEEP = {"name": "rm", "model": {"name": "tiny_cnn"}, "data": {"source": "synthetic", "limit": 150},
         "dense": {"epochs": 2}, "finetune": {"epochs": 1}, "evaluate": {"latency": False, "memory": False},
         "search": {"tolerance": 50.0, "objective": "nonzero", "trials": 1, "sampler": "grid",
                    "space": {"prune.sparsity": {"choices": [0.5]}}}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """kind -> (folder, its report file) of a real run, refine and sweep."""
    root = tmp_path_factory.mktemp("reports")
    run(load_recipe(None, RUN), root / "run", log=lambda m: None)
    refine(root / "run" / "model", ["finetune.epochs=1"], root / "refined", log=lambda m: None, data_path="new")
    sweep(Recipe.model_validate(SWEEP), root / "sweep", log=lambda m: None)
    return {"run": (root / "run", "report.json"), "refine": (root / "refined", "report.json"),
            "sweep": (root / "sweep", "sweep.json")}


KINDS = {"run": (RunReport, "<title>prunetune run: "), "refine": (RefineReport, "<title>prunetune refine: "),
         "sweep": (SweepReport, "<title>prunetune sweep ")}


@pytest.mark.parametrize("kind", KINDS)
def test_the_model_round_trips_what_a_command_wrote(folders, kind):
    folder, name = folders[kind]
    written = json.loads((folder / name).read_text())
    assert next(iter(written)) == "kind" and written["kind"] == kind  # the first key names the kind
    rep = load_report(folder / name)
    assert type(rep) is KINDS[kind][0] and rep.kind == kind
    assert rep.to_dict() == written
    assert load_report(rep.to_dict()).to_dict() == written
    # The typed fields read the file's values (not their defaults).
    if kind == "run":
        assert (rep.metric, rep.stages["finetuned"], rep.plan) == (written["metric"], written["stages"]["finetuned"], written["plan"])
    elif kind == "refine":
        assert (rep.source_model, rep.nonzero_params) == (written["source_model"], written["nonzero_params"]) and rep.sparsity_kept
    else:
        assert (rep.study, rep.key, rep.rows) == ("rm", "val_accuracy", written["rows"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_report_from_before_kind_renders_the_same_page(folders, kind):
    folder, name = folders[kind]
    new = json.loads((folder / name).read_text())
    old = {k: v for k, v in new.items() if k != "kind"}
    assert type(load_report(old)) is KINDS[kind][0]
    images = None if kind == "sweep" else figures(load_report(new))
    page = render(old, folder, images)
    assert KINDS[kind][1] in page and page == render(new, folder, images)
    assert markdown(load_report(old)) == (folder / name.replace(".json", ".md")).read_text()
    if kind == "sweep":  # the page written with the folder is the one an old sweep.json gives
        assert page == (folder / "report.html").read_text(encoding="utf-8")


def test_the_page_follows_the_kind_not_the_keys(folders):
    folder, name = folders["run"]
    rep = json.loads((folder / name).read_text())
    rep["source_model"] = "runs/elsewhere/model"  # a refine report's key, in a run report
    page = render(rep, folder, images={})
    assert "<title>prunetune run: " in page and "Re-fine-tuned" not in page


def test_an_unreadable_report_is_one_error_line(tmp_path):
    with pytest.raises(PrunetuneError, match=r"report: not a readable run report \(recipe: Field required\)"):
        load_report({"kind": "run"})
    with pytest.raises(PrunetuneError, match="not a readable"):
        load_report({"kind": "summary", "recipe": {}})
    bad = tmp_path / "report.json"
    bad.write_text("[1, 2]")
    with pytest.raises(PrunetuneError, match=f"{bad}: not a prunetune report"):
        load_report(bad)


def test_plan_marks_pruned_only_the_layers_actually_pruned():
    """A target the method leaves whole (a transformer's pooler) is a target, not pruned."""
    import copy

    import torch

    from prunetune.measure import plan_rows
    from prunetune.models import build_model
    from prunetune.recipe import ModelSpec
    from prunetune.reporting.format import pruned_text

    dense = build_model(ModelSpec(name="lenet300"), 10, (1, 28, 28))
    after = copy.deepcopy(dense)
    names = [n for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        dict(after.named_modules())[names[0]].weight[:5] = 0  # the first layer pruned; the second a target left whole
    rows = {r["layer"]: r for r in plan_rows(dense, after, names[:2])}
    assert rows[names[0]]["pruned"] is True and rows[names[0]]["sparsity"] > 0
    assert rows[names[1]]["target"] is True and rows[names[1]]["pruned"] is False and rows[names[1]]["sparsity"] == 0
    assert rows[names[2]]["target"] is False and rows[names[2]]["pruned"] is False
    assert [pruned_text(rows[n]) for n in names] == ["yes", "no (target, left whole)", "no"]
    assert pruned_text({"target": False, "pruned": True}) == "inputs only (not a target)"  # the classifier
    assert pruned_text({"target": True}) == "yes"  # a report written before rows carried `pruned`
