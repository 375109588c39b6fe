from pathlib import Path

import pytest

from prunetune.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_validate(path):
    assert load_recipe(path).name


def test_default_example_is_the_builtin_default():
    a = load_recipe(ROOT / "examples" / "recipes" / "default.yaml").model_dump()
    b = load_recipe(None).model_dump()
    a.pop("name"), b.pop("name")
    assert a == b


def test_an_example_recipe_shows_a_search_section_whose_space_is_valid():
    from prunetune.search.space import parse_space

    searched = [p for p in sorted((ROOT / "examples" / "recipes").glob("*.yaml")) if load_recipe(p).search is not None]
    assert searched, "keep one example recipe with a search section (prunetune sweep)"
    for path in searched:
        recipe = load_recipe(path)
        # Every dimension names a recipe field whose extreme values validate (what `prunetune sweep` checks first).
        dims = parse_space(recipe.search.space, recipe.model_dump(mode="json", exclude={"search"}))
        assert [d.name for d in dims] == list(recipe.search.space)


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_example_recipes_prune_with_the_documented_best_settings(path):
    """Each example's importance and scope are the method's best known for its model family
    (Pruner.defaults_for: what `prunetune list` and the README's recipe reference show), unless the line
    says why not with a `# not the default:` comment."""
    from prunetune.models.hf import model_family
    from prunetune.registry import PRUNERS

    r = load_recipe(path)
    best = dict(zip(("importance", "scope"), PRUNERS.get(r.prune.method).defaults_for(model_family(r.model.name))))
    if r.prune.layer_sparsity:
        best.pop("scope")  # per-layer amounts are a per-layer ranking
    lines = path.read_text(encoding="utf-8").splitlines()
    for field, want in best.items():
        line = next((x for x in lines if x.strip().startswith(f"{field}:")), "")
        if "# not the default:" not in line:
            assert getattr(r.prune, field) == want, (path.name, field, line)


def test_the_readme_recipe_reference_states_every_pruners_default_importance():
    from prunetune.registry import PRUNERS

    row = next(x for x in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
               if x.startswith("| `prune.importance` |"))
    for name in PRUNERS.names():
        pruner = PRUNERS.get(name)
        assert f"`{name}` `{pruner.default_importance}`" in row, name
        for family, (imp, _, _) in pruner.family_defaults.items():
            assert f"`{name}` on {family}s" in row and f"`{imp}`" in row, (name, family)


def test_transformer_models_default_to_taylor_for_structured_pruning_only_when_not_given():
    from prunetune.recipe import Recipe

    assert Recipe.model_validate({"model": {"name": "minilm"}}).prune.importance == "taylor"
    assert Recipe.model_validate({"model": {"name": "hf:./my-bert"}}).prune.importance == "taylor"
    assert Recipe.model_validate({}).prune.importance == "l2"  # small_cnn: the CNN default
    given = Recipe.model_validate({"model": {"name": "minilm"}, "prune": {"importance": "l2"}})
    assert given.prune.importance == "l2"
    un = Recipe.model_validate({"model": {"name": "minilm"}, "prune": {"method": "unstructured"}}).prune
    assert (un.importance, un.scope) == ("lamp", "global")
