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
    (["prune.importance=magic"], "recipe: prune.importance: unknown importance 'magic'; choose one of: l1, l2, lamp, random, sparsegpt, taylor"),
    (["prune.method=nm", "prune.schedule.kind=gradual"], "not supported by prune.method 'nm'"),
    (["prune.method=structured", "prune.schedule.kind=dynamic"], "not supported by prune.method 'structured'"),
    (["prune.method=unstructured", "prune.schedule.kind=dynamic", "finetune.method=lora"],
     "recipe: prune.schedule.kind dynamic grows pruned weights back from zero, which finetune.method 'lora' "
     "(frozen base weights) cannot train; use full"),
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


# ------------------------------------------------------------------ duplicated keys

@pytest.mark.parametrize("text,needle", [
    ("prune:\n  sparsity: 0.5\nfinetune: {epochs: 1}\nprune:\n  method: nm\n", "key 'prune' appears twice (lines 1 and 4)"),
    ("name: x\nprune:\n  sparsity: 0.5\n  method: nm\n  sparsity: 0.7\n", "key 'sparsity' appears twice (lines 3 and 5)"),
    ("finetune:\n  distill:\n    alpha: 0.5\n    alpha: 0.6\n", "key 'alpha' appears twice (lines 3 and 4)"),
])
def test_a_duplicated_key_is_refused_naming_it_and_its_lines(tmp_path, text, needle):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(PrunetuneError) as e:
        load_recipe(p)
    assert str(e.value) == f"{p}: {needle}; keep one (the recipe would silently use the last)"


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    p = tmp_path / "merge.yaml"
    p.write_text("dense: &d {epochs: 1, lr: 0.01}\nfinetune:\n  <<: *d\n  epochs: 2\n")
    r = load_recipe(p)
    assert (r.finetune.epochs, r.finetune.lr, r.dense.epochs) == (2, 0.01, 1)


# ------------------------------------------------------------------ data options: per source, flat in YAML

# What the recipe of a trec run saved before each source had its own options: every former field.
OLD_TREC_DATA = {
    "source": "trec", "path": "/t", "val_size": None, "limit": None, "test_limit": None, "image_size": None,
    "grayscale": None, "stream": None, "eval_batch_size": 128, "format": "auto", "train_file": None, "val_file": None,
    "test_file": None, "text_column": None, "label_column": None, "prompt_column": None, "completion_column": None,
    "max_length": 128, "tokenizer": None, "trec_labels": "fine", "encoding": None}


def test_an_old_saved_recipe_with_every_former_data_field_loads():
    r = Recipe.model_validate({"data": OLD_TREC_DATA})
    assert type(r.data.options).__name__ == "TrecOptions"
    assert (r.data.options.trec_labels, r.data.options.max_length, r.data.path) == ("fine", 128, "/t")
    # Written back, it lists only what trec reads, still flat under data:.
    assert r.model_dump(mode="json")["data"] == {
        "source": "trec", "path": "/t", "val_size": None, "limit": None, "test_limit": None, "limit_classes": "equal",
        "eval_batch_size": 128, "max_length": 128, "tokenizer": None, "encoding": None, "trec_labels": "fine"}


@pytest.mark.parametrize("overrides,message", [
    (["data.trec_labels=fine"], "recipe: data.trec_labels: not an option of data.source fashion_mnist; it belongs to "
                                "trec: remove it or change data.source"),
    (["data.source=image_folder", "data.max_length=64"], "recipe: data.max_length: not an option of data.source "
                                                         "image_folder; it belongs to lm_text, sst2, text, trec"),
    (["data.source=sst2", "data.image_size=32"], "recipe: data.image_size: not an option of data.source sst2; it "
                                                 "belongs to cifar10, image_folder"),
    (["data.source=sst2", "data.max_lenght=64"], "recipe: data.max_lenght: unknown key; remove it or check its spelling"),
    (["data.source=text", "data.format=txt"], "recipe: data.format: Input should be 'auto', 'tsv', 'csv' or 'jsonl'"),
    (["data.source=lm_text", "task=causal_lm", "model.name=hf:/m", "data.max_length=1"],
     "recipe: data.max_length: Input should be greater than or equal to 2"),
    # (other tests register sources of their own, which the list may name too)
    (["data.source=nope"], "recipe: data.source: unknown data source 'nope'; choose one of: "),
])
def test_data_options_are_checked_by_the_source(overrides, message):
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, overrides)
    assert str(e.value).startswith(message), str(e.value)
    if "unknown data source" in message:
        assert {"fashion_mnist", "image_folder", "lm_text", "sst2"} <= set(str(e.value).split(": ")[-1].split(", "))


def test_an_option_of_another_source_at_its_former_default_is_dropped():
    r = load_recipe(None, ["data.max_length=128", "data.trec_labels=coarse", "data.stream=null", "data.limit=50"])
    assert type(r.data.options).__name__ == "SourceOptions" and r.data.limit == 50
    assert "max_length" not in r.model_dump()["data"]


def test_options_are_typed_per_source_and_keep_their_defaults():
    r = load_recipe(None, ["data.source=image_folder", "data.path=/i", "data.image_size=16", "data.grayscale=true"])
    assert (r.data.options.image_size, r.data.options.grayscale, r.data.options.stream) == (16, True, None)
    lm = load_recipe(None, ["data.source=lm_text", "task=causal_lm", "model.name=hf:/m", "data.format=txt"])
    assert (lm.data.options.format, lm.data.options.max_length, lm.data.options.prompt_column) == ("txt", 128, None)
    changed = lm.data.with_options(tokenizer="/tok")
    assert changed.options.tokenizer == "/tok" and lm.data.options.tokenizer is None and changed.options.format == "txt"
    with pytest.raises(PrunetuneError, match="data.image_size: not an option of data.source lm_text"):
        lm.data.with_options(image_size=3)


@pytest.mark.parametrize("overrides,key", [
    ([], "4a97fba448f6c03d52e8"),
    (["data.source=sst2", "data.path=/d", "data.max_length=64", "model.name=minilm"], "f7d4aea46dd91e08ed0a"),
    (["data.source=image_folder", "data.path=/i", "data.image_size=16", "data.grayscale=true"], "620beb86b3114fd58a2d"),
    (["data.source=lm_text", "task=causal_lm", "model.name=hf:/m", "data.format=txt", "data.prompt_column=q"],
     "ef908b00de7e2680a126"),
])
def test_dense_cache_keys_are_those_of_the_flat_data_spec(overrides, key):
    # Keys computed by the code before per-source options: existing dense caches are still found.
    from prunetune.dense import dense_key

    assert dense_key(load_recipe(None, overrides)) == key
