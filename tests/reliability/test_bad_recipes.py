"""Malformed recipes: whatever YAML text and `key=value` overrides arrive, `load_recipe` returns a
valid `Recipe` or raises `LatheError` with a message that says where (file or override) — never a
traceback from yaml, pydantic or our own code."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes import LatheError, Recipe, load_recipe
from recipes.loader import RECIPES_DIR

REAL_RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
# Read once: a strategy must not depend on files that may change while it runs.
REAL_TEXTS = {path.name: path.read_text() for path in REAL_RECIPES}


def _field_paths(model: Any, prefix: str = "", depth: int = 0) -> list[str]:
    """Every dotted key of the schema (`sft.lora.r`, ...), so generated recipes hit real fields."""
    paths = []
    for name, field in getattr(model, "model_fields", {}).items():
        dotted = f"{prefix}{name}"
        paths.append(dotted)
        annotation = field.annotation
        members = getattr(annotation, "__args__", (annotation,))
        for member in members:
            if hasattr(member, "model_fields") and depth < 3:
                paths += _field_paths(member, dotted + ".", depth + 1)
    return paths


FIELD_PATHS = _field_paths(Recipe)
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.floats(allow_nan=True)
           | st.text(max_size=30) | st.sampled_from(["lora", "full", "skip", "error", "all-linear", "mmlu",
                                                      "embedded:smollm2-135m-instruct", "-1", "1e-4", "~", "[]"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["name", "limit", "r", "x", "enabled"]) | st.text(max_size=8),
                                        inner, max_size=3), max_leaves=8)
keys = st.sampled_from(FIELD_PATHS) | st.text(alphabet=string.ascii_letters + "._-", min_size=1, max_size=20)


def _nest(pairs: list[tuple[str, Any]]) -> dict:
    """[("sft.lora.r", 8)] -> {"sft": {"lora": {"r": 8}}}, later pairs overwrite earlier ones."""
    out: dict = {}
    for dotted, value in pairs:
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


structured_yaml = st.lists(st.tuples(keys, values), max_size=6).map(
    lambda pairs: yaml.safe_dump(_nest(pairs), allow_unicode=True))
raw_text = st.text(max_size=200)
yaml_ish = st.lists(st.sampled_from(["model:", "  id: x", "sft:", "  lora: {r: 0}", "- a", "  - {name: mmlu}",
                                     "data: [", "key: 'unterminated", "&a [*a]", "!!python/object:os.system x",
                                     "\t", "eval:\n  suites: [{name: bogus}]", "? [a, b]\n: c", "name: 3",
                                     "{{{{", "]]", "---", "...", "%YAML 9.9"]), max_size=8).map("\n".join)


@st.composite
def mutated_real_recipe(draw) -> str:
    """A real recipe with a few characters deleted, duplicated or replaced."""
    text = draw(st.sampled_from(sorted(REAL_TEXTS.values())))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        op = draw(st.sampled_from(["delete", "insert", "replace"]))
        junk = draw(st.text(alphabet=":-[]{}#&*!|>'\" \t\n0aZ", min_size=1, max_size=3))
        text = {"delete": text[:i] + text[i + 1:], "insert": text[:i] + junk + text[i:],
                "replace": text[:i] + junk + text[i + 1:]}[op]
    return text


overrides = st.lists(
    st.builds(lambda k, sep, v: f"{k}{sep}{v}", keys | st.text(max_size=10), st.sampled_from(["=", "", "==", "=="]),
              st.text(max_size=15) | values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip())),
    max_size=4)


def _load_checked(path: Path, text: str, extra: list[str], tally) -> None:
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    tally.bad_input()
    try:
        recipe = load_recipe(path, extra)
    except LatheError as exc:
        message = str(exc)
        assert message.strip()
        # Says where: the file (with line when known) or the override at fault.
        assert str(path) in message or "override" in message, message
    else:
        assert isinstance(recipe, Recipe)


LONG = os.environ.get("LATHE_RELIABILITY") == "long"
SETTINGS = settings(max_examples=1500 if LONG else 60, deadline=None, database=None, derandomize=not LONG,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(text=structured_yaml | raw_text | yaml_ish | mutated_real_recipe(), extra=overrides)
def test_any_recipe_text_and_overrides_give_a_recipe_or_a_lathe_error(tmp_path, tally, text, extra):
    _load_checked(tmp_path / "fuzzed.yaml", text, extra, tally)


@SETTINGS
@given(extra=overrides)
def test_overrides_on_each_real_recipe_give_a_recipe_or_a_lathe_error(tmp_path, tally, extra):
    for name, text in REAL_TEXTS.items():
        _load_checked(tmp_path / name, text, extra, tally)


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg")) + "model: {id: *g}\n"


@pytest.mark.parametrize("content", [
    "model: " + "[" * 3000 + "]" * 3000,                       # deeper than Python's stack
    "model: " + "{a: " * 3000 + "1" + "}" * 3000,
    "a: &a [*a]\n",                                            # an alias inside its own anchor
    "model: &m {id: *m}\n",
    LAUGHS,                                                     # 9^7 strings through shared aliases
    "sft: {max_steps: " + "9" * 5000 + "}\n",                   # int() refuses > 4300 digits
    "model: !!python/object/apply:os.system ['echo pwned']\n",  # safe_load: no constructor
    "name: a\x00b\n", "1: 2\n", "~: 2\n", "sft: {true: 1}\n", "- a\n", "name: !!set {a, b}\n",
    b"name: \xff\xfe\n",                                        # not UTF-8
], ids=lambda c: repr(c[:24]))
def test_hostile_recipe_files_are_lathe_errors(tmp_path, tally, content):
    path = tmp_path / "hostile.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    tally.bad_input()
    with pytest.raises(LatheError) as err:
        load_recipe(path, [])
    message = str(err.value)
    assert str(path) in message and all(len(line) < 600 for line in message.splitlines())  # bounded lines


@pytest.mark.parametrize("override", ["sft=" + "[" * 5000, "sft.max_steps=" + "9" * 5000, "sft.lora=1",
                                      "=1", "model.id", "sft..r=1", "eval.suites.0.name=x"])
def test_hostile_overrides_are_lathe_errors(tally, override):
    tally.bad_input()
    with pytest.raises(LatheError) as err:
        load_recipe("default", [override])
    assert all(len(line) < 600 for line in str(err.value).splitlines())


def test_every_shipped_recipe_loads():
    assert REAL_RECIPES and all(isinstance(load_recipe(path), Recipe) for path in REAL_RECIPES)
