"""The `prunetune` command line: each command only parses, builds the recipe and calls the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import PrunetuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Prune a trained model, fine-tune it back, measure what was gained.")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _guard(fn):
    """Turn our errors into one line on stderr and an exit code (2 bad input, 3 runtime fault)."""
    try:
        return fn()
    except PrunetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted: nothing was left half-written", file=sys.stderr)
        raise typer.Exit(130) from None
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}; check the path, free space and permissions", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(None, help="YAML recipe; the built-in default when omitted"),
    set_: List[str] = typer.Option([], "--set", help="override a field: section.key=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/NAME-TIMESTAMP); must not exist"),
) -> None:
    """Prune, fine-tune and measure as the recipe says; write a run folder."""

    def go():
        from .pipeline import run as run_recipe
        from .recipe import load_recipe
        from .report import speedups

        r = load_recipe(recipe, set_)
        report = run_recipe(r, out, log=_log)
        s = report["stages"]
        sp = speedups(s)["finetuned"]
        lat = f", measured speedup {sp['speedup_batch_1']:.2f}x (b1) / {sp['speedup_batch_N']:.2f}x (b{r.evaluate.latency_batch})" if "speedup_batch_1" in sp else ""
        print(f"dense {s['dense']['accuracy']:.2f}% -> pruned {s['pruned']['accuracy']:.2f}% -> fine-tuned "
              f"{s['finetuned']['accuracy']:.2f}%; MACs ÷{sp['macs_ratio']:.2f}{lat}")

    _guard(go)


@app.command("eval")
def eval_(
    model_dir: Path = typer.Argument(..., help="a run's model/ folder"),
    set_: List[str] = typer.Option([], "--set", help="data override, e.g. data.path=/my/data"),
    trust_code: bool = typer.Option(False, "--trust-code", help="allow the model's own code (import-path models)"),
) -> None:
    """Score a saved model on its test set and print the result as JSON."""

    def go():
        from .evaluation import evaluate_model

        print(json.dumps(evaluate_model(model_dir, set_, trust_code), indent=2))

    _guard(go)


@app.command("list")
def list_() -> None:
    """Print every registered data source, model, task, importance, pruner, schedule and method."""
    from . import registry as R

    R.load_builtins()
    for title, reg in R.ALL.items():
        print(f"{title}:")
        for name, doc in reg.describe().items():
            print(f"  {name:<16} {doc}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
