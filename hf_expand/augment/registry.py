"""Every augmenter, registered in one place (name -> parameters and backend builder)."""

from __future__ import annotations

from . import back_translation, contextual, nlpaug_augmenters
from .specs import AugmenterSpec, AugmenterType, to_spec

AUGMENTERS: dict[str, AugmenterType] = {t.name: t for t in [*nlpaug_augmenters.TYPES, contextual.TYPE, back_translation.TYPE]}


def resolve(items) -> list[AugmenterSpec]:
    """Specs from strings (``"synonym:p=0.3"``), dicts (``{"name": "synonym", "p": 0.3}``) or specs."""
    if isinstance(items, (str, dict, AugmenterSpec)):
        items = [items]
    return [to_spec(AUGMENTERS, item) for item in items]


def describe() -> str:
    """One line per augmenter with its parameters and defaults (for --help and the docs)."""
    from .specs import REQUIRED

    lines = []
    for t in AUGMENTERS.values():
        params = ", ".join(f"{p.name}" + ("" if p.default is REQUIRED else f"={p.default}") for p in t.params)
        lines.append(f"  {t.name:18s} {t.help} [{params}]")
    return "\n".join(lines)
