"""Text augmentation with nlpaug through ``datasets.map``: offline, reproducible, leakage-safe.

    from hf_expand.augment import augment_dataset, split_by_source
    aug = augment_dataset(ds, ["synonym:p=0.3", "keyboard"], "text", copies=2, seed=0, num_proc=2)
    splits = split_by_source(aug, test_size=0.1)
"""

from .pipeline import AugmentSummary, augment_dataset, split_by_source, summarize  # noqa: F401
from .registry import AUGMENTERS, describe, resolve  # noqa: F401
from .specs import AugmenterSpec, parse_spec  # noqa: F401
