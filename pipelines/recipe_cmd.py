"""`lathe recipe`: show the active recipe, validate one, activate one, or print the schema.

    lathe recipe show                        # params.yaml with overrides applied, as resolved YAML
    lathe recipe validate --name llama-3.1-8b-lora
    lathe recipe use --name default          # writes params.yaml (DVC params)
    lathe recipe schema                      # every key with its default and docstring
"""

from __future__ import annotations

from pathlib import Path

from recipes import load_recipe
from recipes.loader import recipe_to_yaml, resolve_recipe_path
from recipes.schema import Recipe

HEADER = ("# The ACTIVE recipe: DVC tracks it as params (`dvc exp run -S sft.max_steps=50`). Written by\n"
          "# `lathe recipe use --name <recipe>`; this copy is {source}.\n")


def schema_lines(model=Recipe, prefix: str = "") -> list[str]:
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if hasattr(annotation, "model_fields"):
            lines.append(f"{key}:  # {field.description}")
            lines += schema_lines(annotation, key + ".")
        else:
            default = field.get_default(call_default_factory=True)
            default = default.model_dump() if hasattr(default, "model_dump") else default
            if isinstance(default, list):
                default = [d.model_dump() if hasattr(d, "model_dump") else d for d in default]
            lines.append(f"{key} = {default!r}  # {field.description}")
    return lines


def main(recipe: Recipe, args) -> int:
    if args.action == "schema":
        print("\n".join(schema_lines()))
    elif args.action == "show":
        print(recipe_to_yaml(recipe), end="")
    elif args.action == "validate":
        name = args.name or args.recipe
        load_recipe(name)
        print(f"recipe {resolve_recipe_path(name)}: valid")
    elif args.action == "use":
        source = resolve_recipe_path(args.name or "default")
        load_recipe(source)  # validate before activating
        Path("params.yaml").write_text(HEADER.format(source=source) + source.read_text())
        print(f"params.yaml ← {source} (run `dvc repro` to apply)")
    return 0
