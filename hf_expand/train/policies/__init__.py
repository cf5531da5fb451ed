"""Training policies, one module each, registered once (the way peft registers its tuners).

A policy says what trains (:meth:`.base.Policy.plan`, :meth:`~.base.Policy.prepare`), how the optimizer is
built (:meth:`~.base.Policy.build_optimizer`) and what happens at save time
(:meth:`~.base.Policy.finalize_for_save`). The built-in ones, in this order: ``new`` (:mod:`.new`), ``all``
(:mod:`.everything`), ``lora`` (:mod:`.lora`). A new policy is one module with a ``@register_policy`` class
imported here (or anywhere before use): ``--trainable``, recipes and ``TrainArgs`` reach it by name.
"""

from .base import Policy  # noqa: F401
from .registry import REGISTRY, get_policy, policy_names, register_policy  # noqa: F401

from . import new, everything, lora  # noqa: E402,F401  (registration order = the order names are listed)
