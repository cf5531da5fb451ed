"""Plan growth of whole spaces (hidden units, query heads, kv heads) by comparing two layouts.

An operation that changes the config's hidden size or head counts does not list tensors: it builds the
grown config, describes it (a meta-device model: names and shapes only), and for every axis whose size
changed finds which space it spans (by size, or by the family's ``qkv_sections`` data for fused
projections). That axis is then rebuilt from the space's :class:`~hf_expand.plan.SpaceMap`. Whether it
is a *read* axis (the input side of a linear map) decides how copies are treated: see
:class:`~hf_expand.plan.Remap`.
"""

from __future__ import annotations

from typing import Mapping

from ..architectures import ModelLayout, _match
from ..errors import HfExpandError, UnsupportedArchitecture
from ..plan import WHOLE, Remap, SpaceMap, TensorStep, element_index, mask_ranges

Spaces = Mapping[str, tuple[SpaceMap, int]]  # name -> (map over units, entries per unit)


def attention_dims(config) -> tuple[int, int, int]:
    """(query heads, kv heads, head size) of a config; kv heads = query heads without GQA."""
    n = int(config.num_attention_heads)
    kv = getattr(config, "num_key_value_heads", None) or n
    hd = getattr(config, "head_dim", None) or int(config.hidden_size) // n
    return n, int(kv), int(hd)


def validated(config, what: str):
    """Run transformers' own config validation now, so a config that could not be saved is refused up front."""
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except Exception as exc:  # strict-dataclass errors wrap the reason in several lines
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            reason = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("ValueError:")), lines[-1] if lines else type(exc).__name__)
            raise HfExpandError(f"{what}: transformers would refuse to save the grown config ({reason})") from None
    return config


def _segments(layout: ModelLayout, p, axis: int, old: int, new: int, spaces: Spaces):
    module = p.rel.rsplit(".", 1)[0]
    key = _match(module, layout.family.qkv_sections) if p.layer is not None and axis != p.input_axis else None
    if key is not None:
        segments = []
        for name in layout.family.qkv_sections[key]:
            space_name, _, mult = name.partition("*")
            space, unit = spaces[space_name]
            segments.append((space, unit * int(mult or 1)))
        candidates = [tuple(segments)]
    else:
        candidates = [((space, unit),) for space, unit in spaces.values() if space.old * unit == old and space.new * unit == new]
    fitting = [c for c in candidates if sum(s.old * u for s, u in c) == old and sum(s.new * u for s, u in c) == new]
    if not fitting:
        raise UnsupportedArchitecture(
            f"{p.name}: axis {axis} changes from {old} to {new}, which matches no growing space "
            f"({', '.join(f'{n} {s.old * u}->{s.new * u}' for n, (s, u) in spaces.items())}); "
            f"if it is a fused projection, describe it in qkv_sections of hf_expand/architectures/data/{layout.model_type}.json"
        )
    if len({tuple(element_index(c)) for c in fitting}) > 1:
        raise UnsupportedArchitecture(f"{p.name}: axis {axis} ({old}) could belong to several spaces; describe it in qkv_sections")
    return fitting[0]


def remap_steps(layout: ModelLayout, new_layout: ModelLayout, spaces: Spaces, noise: float = 0.0):
    """Steps, new slices and modified tensors that take every parameter of ``layout`` to its shape in
    ``new_layout``. A new slice is a new entry or a second (third…) copy of an old one; a tensor whose
    read axis split copies (values divided) is modified as a whole."""
    steps: dict[str, TensorStep] = {}
    new_slices: dict[str, list[dict]] = {}
    modified: dict[str, list[dict]] = {}
    missing = [n for n in layout.params if n not in new_layout.params]
    if missing:
        raise UnsupportedArchitecture(f"the grown config has no parameter {missing[0]}; this growth changes the model's structure")
    for name, p in layout.params.items():
        old_shape, new_shape = p.shape, new_layout.params[name].shape
        if len(old_shape) != len(new_shape):
            raise UnsupportedArchitecture(f"{name}: rank changes from {old_shape} to {new_shape}")
        actions = []
        for axis, (a, b) in enumerate(zip(old_shape, new_shape)):
            if a == b:
                continue
            segments = _segments(layout, p, axis, a, b, spaces)
            reads = p.input_axis is not None and axis == p.input_axis % len(old_shape)
            actions.append(Remap(axis, segments, reads, noise if reads else 0.0))
            index = element_index(segments)
            seen: set[int] = set()
            fresh = []
            for i in index:
                fresh.append(i < 0 or i in seen)
                seen.add(i)
            new_slices.setdefault(name, []).extend({"axis": axis, "start": s, "stop": e} for s, e in mask_ranges(fresh))
            if reads and len(seen - {-1}) < sum(1 for i in index if i >= 0):
                modified[name] = [dict(WHOLE)]
        steps[name] = TensorStep(name, name, old_shape, new_shape, tuple(actions))
    return steps, new_slices, modified
