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
