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
from .ops.add_heads import AddHeads  # noqa: E402
from .ops.add_labels import AddLabels  # noqa: E402
from .ops.add_layers import AddLayers  # noqa: E402
from .ops.add_tokens import AddTokens  # noqa: E402
from .ops.depth_upscale import DepthUpscale  # noqa: E402
from .ops.widen_ffn import WidenFFN  # noqa: E402
from .ops.widen_hidden import WidenHidden  # noqa: E402
from .grow import GrowthReport, grow_checkpoint, grow_model, plan_growth, read_record  # noqa: E402

__all__ = [
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
    "WidenFFN",
    "grow_checkpoint",
    "grow_model",
    "plan_growth",
    "read_record",
]
