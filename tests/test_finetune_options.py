"""Each fine-tuning method's options (`finetune.peft`): validated by the registered method's options
model, old recipes (which dumped every method's options) still load, wrong-method options are caught,
and the recipe's method checks follow the registered pieces' attributes."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from prunetune.errors import PrunetuneError
from prunetune.finetune.lora import LoraOptions
from prunetune.finetune.options import DROP_FOREIGN, Options
from prunetune.recipe import Recipe, dump_recipe, load_recipe
from prunetune.registry import FINETUNE_METHODS, SCHEDULES
from prunetune.search.space import parse_space

METHODS = FINETUNE_METHODS.names()
# What every recipe dumped before methods had their own options holds under finetune.peft.
OLD_PEFT = {"include": None, "exclude": [], "r": 8, "alpha": 16.0, "dropout": 0.0, "virtual_tokens": 20, "adapter_size": 64}
# prompt_tuning needs a transformers model; the name is only checked, nothing is loaded.
MODEL = {"prompt_tuning": "minilm"}


def _sets(method: str, *more: str) -> list[str]:
    return [f"finetune.method={method}", f"model.name={MODEL.get(method, 'small_cnn')}", *more]


def test_every_method_declares_an_options_model():
    assert METHODS == ["adapter", "bitfit", "full", "ia3", "lora", "prompt_tuning"]
    fields = {m: sorted(FINETUNE_METHODS.get(m).options.model_fields) for m in METHODS}
    assert fields == {"adapter": ["adapter_size", "exclude", "include"], "bitfit": [], "full": [],
                      "ia3": ["exclude", "include"], "lora": ["alpha", "dropout", "exclude", "include", "r"],
                      "prompt_tuning": ["virtual_tokens"]}


@pytest.mark.parametrize("method", METHODS)
def test_options_validate_their_defaults_and_refuse_an_unknown_key(method):
    options = FINETUNE_METHODS.get(method).options
    assert issubclass(options, Options) and options.model_config["extra"] == "forbid"
    assert all(f.description for f in options.model_fields.values()), "every option is documented"
    defaults = options.model_validate({})
    assert defaults.model_dump() == {k: v for k, v in OLD_PEFT.items() if k in options.model_fields}
    with pytest.raises(ValidationError):
        options.model_validate({"bogus": 1})
    # Through the recipe: the method's options instance, and one line naming the unknown field.
    r = load_recipe(None, _sets(method))
    assert type(r.finetune.peft) is options and r.finetune.peft == defaults
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, _sets(method, "finetune.peft.bogus=1"))
    assert str(e.value) == "recipe: finetune.peft.bogus: unknown key; remove it or check its spelling (see README's recipe reference)"


@pytest.mark.parametrize("method", METHODS)
def test_an_old_dumped_recipe_validates_for_every_method(method):
    old = load_recipe(None, _sets(method)).model_dump(mode="json")
    old["finetune"]["peft"] = dict(OLD_PEFT)
    r = Recipe.model_validate(old)
    options = FINETUNE_METHODS.get(method).options
    assert type(r.finetune.peft) is options
    # Dumped again, the recipe keeps the method's own options only, and loads back equal.
    assert r.model_dump(mode="json")["finetune"]["peft"] == {k: v for k, v in OLD_PEFT.items() if k in options.model_fields}
    assert Recipe.model_validate(yaml.safe_load(dump_recipe(r))) == r


def test_the_method_reads_its_typed_options():
    r = load_recipe(None, ["finetune.method=lora", "finetune.peft.r=4", "finetune.peft.alpha=8"])
    lora = FINETUNE_METHODS.get("lora")(r.finetune, "classifier")
    assert isinstance(lora.peft, LoraOptions) and (lora.peft.r, lora.peft.alpha, lora.peft.dropout) == (4, 8.0, 0.0)
    # A dense model's TrainSpec has no fine-tuning options: the method gets its defaults.
    assert FINETUNE_METHODS.get("full")(r.dense).peft == Options()


@pytest.mark.parametrize("sets,needle", [
    (["finetune.method=bitfit", "finetune.peft.r=4"],
     "recipe: finetune.peft.r: not an option of finetune.method bitfit; remove it (an option of lora)"),
    (["finetune.method=lora", "finetune.peft.adapter_size=32"],
     "recipe: finetune.peft.adapter_size: not an option of finetune.method lora; remove it (an option of adapter)"),
    (["finetune.method=full", "finetune.peft.include=[encoder.*]"],
     "recipe: finetune.peft.include: not an option of finetune.method full; remove it (an option of adapter, ia3, lora)"),
    (["finetune.method=ia3", "finetune.peft.dropout=0.1", "finetune.peft.r=2"],
     "recipe: finetune.peft.dropout: not an option of finetune.method ia3; remove it (an option of lora) (and 1 more)"),
    # The method's own options keep their checks and messages.
    (["finetune.method=lora", "finetune.peft.r=0"], "recipe: finetune.peft.r: Input should be greater than or equal to 1"),
])
def test_a_non_default_option_of_another_method_is_refused(sets, needle):
    with pytest.raises(PrunetuneError) as e:
        load_recipe(None, sets)
    assert str(e.value) == needle


def test_a_foreign_option_at_its_default_is_dropped_and_records_drop_any():
    r = load_recipe(None, ["finetune.method=bitfit", "finetune.peft.r=8", "finetune.peft.exclude=[]"])
    assert r.finetune.peft == Options()
    # Recipes read back from a run's records (and sweep trials) drop other methods' options whatever their value.
    saved = load_recipe(None, ["finetune.method=lora"]).model_dump(mode="json")
    saved["finetune"].update(method="full", peft={**OLD_PEFT, "r": 16, "include": ["*query"]})
    with pytest.raises(ValidationError, match="not an option of finetune.method full"):
        Recipe.model_validate(saved)
    assert Recipe.model_validate(saved, context={DROP_FOREIGN: True}).finetune.peft == Options()
    # ... but a key no method knows is refused even then.
    saved["finetune"]["peft"]["rank"] = 4
    with pytest.raises(ValidationError, match="rank"):
        Recipe.model_validate(saved, context={DROP_FOREIGN: True})


@pytest.mark.parametrize("method", METHODS)
def test_method_checks_follow_the_registered_pieces(method):
    cls = FINETUNE_METHODS.get(method)
    assert SCHEDULES.get("adaptive").rolls_back and not getattr(SCHEDULES.get("iterative"), "rolls_back", False)
    adaptive = _sets(method, "prune.method=unstructured", "prune.schedule.kind=adaptive")
    structured_iterative = _sets(method, "prune.method=structured", "prune.schedule.kind=iterative")
    oneshot = _sets(method, "prune.method=structured", "prune.schedule.kind=oneshot")
    load_recipe(None, oneshot)
    if cls.follows_rollback:
        load_recipe(None, adaptive)
    else:
        with pytest.raises(PrunetuneError) as e:
            load_recipe(None, adaptive)
        assert str(e.value) == (f"recipe: prune.schedule.kind adaptive rolls the model back, which finetune.method "
                                f"{method!r} cannot follow; use bitfit or full")
    if cls.resizable:
        load_recipe(None, structured_iterative)
    else:
        with pytest.raises(PrunetuneError) as e:
            load_recipe(None, structured_iterative)
        assert str(e.value) == (f"recipe: finetune.method {method!r} adds modules that structured pruning during "
                                "fine-tuning cannot resize; use prune.schedule.kind oneshot or finetune.method full")
    assert (cls.follows_rollback, cls.resizable) == ((True, True) if method in ("full", "bitfit") else (False, False))


def test_a_sweep_may_switch_finetune_method_away_from_the_base_recipes_options():
    base = load_recipe(None, ["model.name=minilm", "finetune.method=lora", "finetune.peft.r=16"]).model_dump(mode="json")
    dims = parse_space({"finetune.method": {"choices": ["lora", "bitfit", "full"]}, "finetune.peft.r": [4, 32]}, base)
    assert [d.name for d in dims] == ["finetune.method", "finetune.peft.r"]
