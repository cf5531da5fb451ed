"""hf_expand: grow a trained Hugging Face model's capacity with its outputs preserved.

Python API::

    from hf_expand import AddLayers, WidenFFN, grow_model
    grown, report = grow_model(model, [WidenFFN(factor=1.5), AddLayers(count=2)])
    print(report.max_abs_diff)

Operations (applied in this order whatever order they are given in): ``WidenHidden``, ``AddHeads``,
``WidenFFN``, ``AddLayers``, ``DepthUpscale`` (SOLAR, not function-preserving: its difference is
recorded), ``AddLabels``, ``AddTokens``.
"""

__version__ = "0.1.0"

from .errors import HfExpandError, PreservationError, UnsupportedArchitecture  # noqa: E402

# The rest is imported on first use (PEP 562): torch and transformers take seconds to import, and commands
# that never touch a model (`hf-expand push`, `--help`, refusals of bad flags) should not pay for them.
_LAZY = {
    "AddExperts": "ops.add_experts", "AddHeads": "ops.add_heads", "AddLabels": "ops.add_labels", "AddLayers": "ops.add_layers",
    "AddTokens": "ops.add_tokens", "DepthUpscale": "ops.depth_upscale", "WidenFFN": "ops.widen_ffn",
    "WidenHidden": "ops.widen_hidden", "Upcycle": "ops.upcycle", "GrowthReport": "grow", "grow_checkpoint": "grow", "grow_model": "grow",
    "plan_growth": "grow", "read_record": "grow", "save_grown": "save",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_expand' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AddExperts",
    "AddHeads",
    "AddLabels",
    "AddLayers",
    "AddTokens",
    "DepthUpscale",
    "WidenHidden",
    "GrowthReport",
    "HfExpandError",
    "PreservationError",
    "UnsupportedArchitecture",
    "Upcycle",
    "WidenFFN",
    "grow_checkpoint",
    "grow_model",
    "plan_growth",
    "read_record",
    "save_grown",
]
