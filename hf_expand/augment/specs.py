"""Augmenter specs: ``name:key=value,...`` strings (CLI) or dicts (recipes), parsed and validated against
the parameter table of each augmenter type before any data or model is touched."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from ..errors import HfExpandError


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float, str or bool
    default: Any  # ``REQUIRED`` when the user must give it
    help: str
    check: Callable[[Any], bool] | None = None
    expect: str = ""  # what ``check`` accepts, for the error message


REQUIRED = object()


def share(name: str, default: float, help: str) -> Param:
    """A share of words or characters: 0 < value <= 1."""
    return Param(name, float, default, help, lambda v: 0 < v <= 1, "a share in (0, 1]")


def count(name: str, default: int, help: str, minimum: int = 1) -> Param:
    return Param(name, int, default, help, lambda v: v >= minimum, f"a whole number >= {minimum}")


@dataclasses.dataclass(frozen=True)
class AugmenterType:
    """One augmenter: its parameters and how to build the backend that does the work.

    ``build(params)`` returns an object with ``augment(texts, seeds) -> list[str]``: one output per text,
    where ``seeds[i]`` is the only source of randomness for ``texts[i]`` (that is what makes results
    independent of batching and worker count). Types with ``loads_models`` load Hub/local models and are
    built with ``build(params, trust_remote_code=...)``: whether the models' own code may run is the caller's
    choice (``--trust-remote-code``), never part of the spec.
    """

    name: str
    help: str
    params: tuple[Param, ...]
    build: Callable[..., Any]
    uses_torch: bool = False
    loads_models: bool = False


@dataclasses.dataclass(frozen=True)
class AugmenterSpec:
    name: str
    params: tuple[tuple[str, Any], ...]  # every parameter, defaults filled in, sorted by name

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def __str__(self) -> str:
        """Canonical form; also what the dataset fingerprint is derived from."""
        return f"{self.name}:" + ",".join(f"{k}={v}" for k, v in self.params)


def _convert(augmenter: str, param: Param, value: Any) -> Any:
    where = f"{augmenter}:{param.name}"
    if isinstance(value, str) and param.kind is not str:
        text = value.strip()
        try:
            if param.kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = text.lower() in ("true", "1", "yes")
            elif param.kind is int:
                value = int(text)
            else:
                value = float(text)
        except ValueError:
            raise HfExpandError(f"{where}={value!r} is not a valid {param.kind.__name__}") from None
    elif param.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, param.kind) or (param.kind is int and isinstance(value, bool)):
        raise HfExpandError(f"{where} must be a {param.kind.__name__}, got {value!r}")
    if param.kind is float and not math.isfinite(value):
        raise HfExpandError(f"{where} must be finite, got {value}")
    if param.kind is str and not value.strip():
        raise HfExpandError(f"{where} must not be empty")
    if param.check is not None and not param.check(value):
        raise HfExpandError(f"{where} must be {param.expect}, got {value}")
    return value


def make_spec(registry: dict[str, AugmenterType], name: str, given: dict) -> AugmenterSpec:
    if name not in registry:
        raise HfExpandError(f"unknown augmenter {name!r}; valid: {', '.join(registry)}")
    kind = registry[name]
    table = {p.name: p for p in kind.params}
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise HfExpandError(f"augmenter {name!r} has no parameter {unknown[0]!r}; valid: {', '.join(table) or 'none'}")
    params = {}
    for p in kind.params:
        if p.name in given:
            params[p.name] = _convert(name, p, given[p.name])
        elif p.default is REQUIRED:
            raise HfExpandError(f"augmenter {name!r} needs {p.name}=... ({p.help}), e.g. --augment {name}:{p.name}=VALUE")
        else:
            params[p.name] = p.default
    if "min" in params and "max" in params and params["min"] > params["max"]:
        raise HfExpandError(f"{name}: min={params['min']} is larger than max={params['max']}")
    return AugmenterSpec(name, tuple(sorted(params.items())))


def parse_spec(registry: dict[str, AugmenterType], text: str) -> AugmenterSpec:
    """``"synonym:p=0.3,max=5"`` -> spec. Values may not contain commas."""
    name, _, rest = text.strip().partition(":")
    given = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise HfExpandError(f"bad augmenter spec {text!r}: expected name:key=value,key=value (got {item!r})")
        if key.strip() in given:
            raise HfExpandError(f"bad augmenter spec {text!r}: {key.strip()!r} given twice")
        given[key.strip()] = value.strip()
    return make_spec(registry, name.strip(), given)


def to_spec(registry: dict[str, AugmenterType], item: Any) -> AugmenterSpec:
    """Accept a spec, a ``name:key=value`` string, or a recipe dict ``{"name": ..., key: value}``."""
    if isinstance(item, AugmenterSpec):
        return make_spec(registry, item.name, item.kwargs)
    if isinstance(item, str):
        return parse_spec(registry, item)
    if isinstance(item, dict):
        given = dict(item)
        name = given.pop("name", None)
        if not isinstance(name, str):
            raise HfExpandError(f"augmenter entry {item!r} needs a 'name' (one of {', '.join(registry)})")
        return make_spec(registry, name, given)
    raise HfExpandError(f"augmenter must be a 'name:key=value' string or a dict with 'name', got {item!r}")
