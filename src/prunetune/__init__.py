"""prunetune: prune a trained model, fine-tune it back, measure what was gained.

Heavy dependencies are imported where used, so `import prunetune` stays fast.

Example:
    >>> from prunetune.recipe import load_recipe      # doctest: +SKIP
    >>> from prunetune.pipeline import run            # doctest: +SKIP
    >>> result = run(load_recipe("examples/recipes/default.yaml"), out="runs/demo")  # doctest: +SKIP
"""

__version__ = "0.1.0"
