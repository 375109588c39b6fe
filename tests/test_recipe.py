from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from prunetune.errors import PrunetuneError
from prunetune.recipe import Recipe, dump_recipe, load_recipe


def test_defaults_are_the_documented_default_job():
    r = load_recipe(None)
    assert (r.model.name, r.data.source, r.prune.method, r.finetune.method) == ("small_cnn", "fashion_mnist", "structured", "full")
    assert r.prune.schedule.kind == "oneshot" and r.prune.keep_classifier


def test_overrides_parse_yaml_values(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nprune:\n  sparsity: 0.3\n")
    r = load_recipe(p, ["prune.sparsity=0.8", "prune.include=[features.*]", "finetune.grad_clip=1", "prune.schedule.kind=gradual"])
    assert r.prune.sparsity == 0.8 and r.prune.include == ["features.*"] and r.finetune.grad_clip == 1.0
    assert r.prune.schedule.kind == "gradual" and r.name == "x"


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(None, ["prune.method=nm", "prune.n=1", "prune.m=4"])
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r


@pytest.mark.parametrize("overrides,needle", [
    (["prune.sparsityy=0.5"], "prune.sparsityy: unknown key"),
    (["prune.sparsity=lots"], "prune.sparsity"),
    (["prune.sparsity=1.0"], "prune.sparsity"),
    (["prune.sparsity=-0.1"], "prune.sparsity"),
    (["prune.method=nm", "prune.n=4", "prune.m=4"], "n < m"),
    (["prune.importance=magic"], "recipe: prune.importance: unknown importance 'magic'; choose one of: l1, l2, lamp, random, taylor"),
    (["prune.method=nm", "prune.schedule.kind=gradual"], "not supported by prune.method 'nm'"),
    (["dense.source=file"], "dense.path"),
    (["finetune.epochs=-1"], "finetune.epochs"),
    (["name=../escape"], "name"),
    (["nonsense"], "expected section.key=value"),
    (["prune.sparsity.deep=1"], "prune.sparsity: Input should be a valid number"),
])
def test_bad_recipes_give_one_line_naming_the_field(overrides, needle):
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, overrides)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("prune:\n  sparsity: [0.5\n")
    with pytest.raises(PrunetuneError, match=r"bad.yaml: malformed YAML at line \d"):
        load_recipe(p)


def test_non_mapping_recipe(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(PrunetuneError, match="must be a YAML mapping"):
        load_recipe(p)


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
                        ["model", "data", "prune", "finetune", "sparsity", "name", "seed", "schedule", "kind", "x"]), c, max_size=4),
                    max_leaves=10))
def test_any_yaml_either_loads_or_fails_with_our_error(tmp_path_factory, doc):
    p = tmp_path_factory.mktemp("h") / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    try:
        r = load_recipe(p)
    except PrunetuneError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(r, Recipe)
