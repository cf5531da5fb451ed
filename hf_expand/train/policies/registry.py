"""The one registry of training policies: a policy module registers its class once, with
:func:`register_policy`; everything else (``hf-expand train --trainable``, the recipe's ``train.trainable``,
``TrainArgs``, the Trainer helpers) looks policies up here by name."""

from __future__ import annotations

from ...errors import HfExpandError

REGISTRY: dict = {}  # name -> Policy instance, in registration order (= the order help and errors list them)


def register_policy(cls):
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (a name may be registered once)."""
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise ValueError(f"{cls.__name__} has no policy name (set the class attribute name)")
    if name in REGISTRY:
        raise ValueError(f"trainable policy {name!r} is registered already (by {type(REGISTRY[name]).__name__})")
    REGISTRY[name] = cls()
    return cls


def policy_names() -> tuple[str, ...]:
    """The registered policies' names: ``--trainable``'s choices."""
    return tuple(REGISTRY)


def get_policy(name: str):
    """The registered policy called ``name``; an unknown name is one line listing the registered ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise HfExpandError(f"unknown trainable policy {name!r}; use one of {', '.join(REGISTRY)}") from None
