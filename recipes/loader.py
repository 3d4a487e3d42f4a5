"""Load a recipe: YAML file + `a.b=c` overrides → validated `Recipe`, or a `LatheError` that names
the file, the key, its line and what was expected."""

from __future__ import annotations

import copy
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from recipes.errors import LatheError
from recipes.schema import Recipe

RECIPES_DIR = Path(__file__).resolve().parent


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """`default` → recipes/default.yaml; anything else is a path."""
    path = Path(name_or_path)
    if path.exists():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise LatheError(f"recipe '{name_or_path}' not found: no such file, and no recipes/{name_or_path}.yaml (known: {known})")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LatheError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LatheError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except (RecursionError, ValueError) as exc:  # nested deeper than Python's stack; an int of > 4300 digits
        raise LatheError(f"{path}: not a usable YAML document: {_shorten(exc)}") from None
    if not isinstance(data, dict):
        raise LatheError(f"{path}: a recipe is a mapping of sections (model, data, sft, ...), got {type(data).__name__}")
    try:
        data = apply_overrides(data, overrides or [])
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise LatheError(_explain(exc, path, text, overrides or [])) from None
    except RecursionError:  # e.g. `a: &a [*a]`, a YAML alias inside itself
        raise LatheError(f"{path}: a value is nested too deeply or contains itself (a YAML alias used inside "
                         "its own anchor?)") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `sft.learning_rate=1e-4` style overrides; values are parsed as YAML (`[a, b]`, `true`, `3`)."""
    data = copy.deepcopy(data)  # keeps YAML aliases shared (and self-references finite)
    for item in overrides:
        if "=" not in item:
            raise LatheError(f"override '{item}': expected key.sub=value, e.g. sft.max_steps=20")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise LatheError(f"override '{item}': empty key segment in '{key}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError, ValueError):  # not YAML: validated as the plain string
            value = raw
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LatheError(f"override '{item}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def _explain(exc: ValidationError, path: Path, text: str, overrides: list[str]) -> str:
    lines = [f"{path}: invalid recipe"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        line = _line_of(text, loc)
        where = f"{path}:{line}" if line else str(path)
        from_override = any(o.split("=", 1)[0].strip() == dotted for o in overrides)
        source = "command-line override" if from_override else where
        if err["type"] == "extra_forbidden":
            lines.append(f"  {dotted} ({source}): unknown key; {_known_keys(loc)}")
        else:
            got = err.get("input")
            lines.append(f"  {dotted} ({source}): {err['msg']} (got {_shorten(got)})")
    return "\n".join(lines)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxset, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 4, 100, 100


def _shorten(value: Any, limit: int = 200) -> str:
    """A bounded repr: a value may be megabytes (or a billion laughs of aliases)."""
    text = str(value) if isinstance(value, BaseException) else _REPR.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _known_keys(loc: list[str]) -> str:
    model: Any = Recipe
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return "see recipes/schema.py"
        model = field.annotation
        if hasattr(model, "__args__"):  # list[X] / X | None
            model = next((a for a in model.__args__ if hasattr(a, "model_fields")), model)
    fields = getattr(model, "model_fields", None)
    return f"expected one of: {', '.join(fields)}" if fields else "see recipes/schema.py"


def _line_of(text: str, loc: list[str]) -> int | None:
    """1-based line of the deepest key of `loc` present in the YAML text."""
    try:
        node = yaml.compose(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == part:
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
