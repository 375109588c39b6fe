"""Reading a recipe: a YAML file (duplicated keys refused) plus `--set section.key=value` overrides,
validated once at the edge; validation errors become one line naming the field.

Example:
    >>> r = Recipe.model_validate(apply_overrides({}, ["prune.sparsity=0.75"]))
    >>> r.prune.sparsity
    0.75
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import PrunetuneError
from .schema import Recipe


def set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None or nxt == "auto":  # a section left to its default mode (finetune.distill: auto) is opened
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise PrunetuneError(f"--set {dotted}: {k!r} is not a section; use section.key=value")
        cur = nxt
    cur[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b=c` overrides; the value is parsed as YAML (`0.5`, `true`, `[a, b]`)."""
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise PrunetuneError(f"--set {item!r}: expected section.key=value, e.g. prune.sparsity=0.75")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except Exception:  # noqa: BLE001 - YAMLError, a constructor's ValueError ('2024-13-01'), RecursionError
            value = raw
        set_path(data, key.strip(), value)
    return data


def validation_error(err: ValidationError, source: str = "", *, within: str = "", hint: str = "") -> PrunetuneError:
    """The one-line error for a failed validation: `source: field.path: problem (and N more)hint`.

    Only the first failing field is named, with a hint for an unknown key; `within` is the section
    the validated model sits in (`data` for a DataSpec), prefixed to the field path."""
    e = err.errors()[0]
    loc = ".".join([within] * bool(within) + [str(p) for p in e["loc"]])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling (see README's recipe reference)"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    # Whole-recipe checks name their field in the message already.
    line = f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
    return PrunetuneError(f"{source}: {line}{hint}" if source else f"{line}{hint}")


class DuplicateKey(yaml.YAMLError):
    """A mapping that names the same key twice (PyYAML would silently keep the last value)."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"key {key!r} at line {line} is already set at line {first}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a duplicated key in any mapping (YAML merge keys `<<` still override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it
            if first != key_node.start_mark.line + 1:
                raise DuplicateKey(key, key_node.start_mark.line + 1, first)
        return super().construct_mapping(node, deep)


def _check_tree(data: Any, source: str, max_depth: int = 64, max_values: int = 100_000) -> None:
    """Refuse YAML aliases that contain themselves (`&a [*a]`), absurd nesting and alias bombs: each
    would pass validation inside `model.kwargs` and crash or hang later, when the recipe is written out."""
    stack: list[tuple[Any, int, frozenset[int]]] = [(data, 0, frozenset())]
    seen = 0
    while stack:
        node, depth, above = stack.pop()
        seen += 1
        if seen > max_values:
            raise PrunetuneError(f"{source}: more than {max_values:,} values once YAML aliases are expanded; shorten the recipe")
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in above:
            raise PrunetuneError(f"{source}: a YAML alias contains itself (a recursive value); write the value out in full")
        if depth > max_depth:
            raise PrunetuneError(f"{source}: values nested deeper than {max_depth} levels; flatten the recipe")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1, above | {id(node)}) for c in children)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (or the built-in defaults when `path` is None) and validate it."""
    data: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PrunetuneError(f"{p}: recipe file not found; give the path to a YAML recipe") from None
        except (OSError, UnicodeDecodeError) as e:
            raise PrunetuneError(f"{p}: cannot read recipe ({e.__class__.__name__}); give a UTF-8 YAML file") from None
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)
        except DuplicateKey as e:
            raise PrunetuneError(f"{p}: key {e.key!r} appears twice (lines {e.first} and {e.line}); "
                                 "keep one (the recipe would silently use the last)") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise PrunetuneError(f"{p}: malformed YAML{where}; fix the syntax") from None
        except (ValueError, TypeError, OverflowError, RecursionError) as e:
            # PyYAML's constructors raise these for '2024-13-01', '!!int abc', '0x_', deep '[[[...'.
            detail = (str(e).splitlines() or [e.__class__.__name__])[0][:100]
            raise PrunetuneError(f"{p}: malformed YAML ({detail}); fix the value or quote it") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise PrunetuneError(f"{p}: a recipe must be a YAML mapping of sections (model, data, prune, ...)")
        data = loaded
    data = apply_overrides(data, overrides)
    _check_tree(data, source)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, source) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
