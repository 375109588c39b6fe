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
