"""Loading sources (Hub id or folder), picking the stock head class, writing output folders atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig
from transformers.models.auto import modeling_auto

from .errors import HfExpandError

log = logging.getLogger(__name__)

# Auto classes in the order we try them; the first whose mapping names the config's architecture wins.
_AUTO_CLASSES = [
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForTokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForQuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
    ("AutoModel", "MODEL_MAPPING_NAMES"),
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def auto_class_for(config):
    """The stock ``AutoModel*`` class that loads ``config.architectures[0]`` (bare ``AutoModel`` if none)."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch is not None:
        for auto_name, mapping_name in _AUTO_CLASSES:
            names = getattr(modeling_auto, mapping_name).get(config.model_type)
            names = names if isinstance(names, (list, tuple)) else [names]
            if arch in names:
                return getattr(transformers, auto_name)
    return transformers.AutoModel


def _is_hub_id(src: str) -> bool:
    return bool(_HUB_ID.match(src)) and not src.startswith((".", "/")) and src.count("/") <= 1


def needs_custom_code(src: str, what: str = "model") -> HfExpandError:
    """The one-line refusal for a model that names custom code while --trust-remote-code was not given."""
    return HfExpandError(f"{what} {src} needs custom code from its repository (auto_map in its config), which "
                         f"hf-expand does not run by default; pass --trust-remote-code if you trust that code")


def is_custom_code_refusal(exc: BaseException) -> bool:
    """transformers' own refusal (``trust_remote_code=False`` and no stock class for the model)."""
    return isinstance(exc, ValueError) and "trust_remote_code" in str(exc)


def check_no_custom_code(src: str, what: str = "model"):
    """Refuse ``src`` in one line when its config names custom code (``auto_map``), even when a stock class
    could load it; none of that code is imported. Returns the (stock) config otherwise."""
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=False)
    except ValueError as exc:
        if is_custom_code_refusal(exc):
            raise needs_custom_code(src, what) from None
        raise
    if getattr(config, "auto_map", None):
        raise needs_custom_code(src, what)
    return config


def load_config(src: str, trust_remote_code: bool = False):
    """Config of a local folder or Hub id, with one-line errors for anything that is not a model."""
    path = Path(src)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise HfExpandError(f"{src} is not a model folder (no config.json); pass a save_pretrained folder or a Hub id")
    elif not _is_hub_id(src):
        raise HfExpandError(f"{src} is neither an existing folder nor a valid Hub id (like 'org/name')")
    try:
        return AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        if not trust_remote_code and is_custom_code_refusal(exc):
            raise needs_custom_code(src) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HfExpandError(f"could not load a model config from {src}: {first}") from None


def load_model(src: str, config=None, trust_remote_code: bool = False):
    """Load ``src`` in float32 (growth maths is done in fp32) with the head class its config names."""
    config = config or load_config(src, trust_remote_code)
    cls = auto_class_for(config)
    try:
        model = cls.from_pretrained(src, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise HfExpandError(f"could not load model weights from {src}: {first}") from None
    return model.eval()


def source_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


from .output import atomic_output_dir, check_output_dir  # noqa: F401,E402  (moved to output.py; re-exported)


def copy_tokenizer_and_generation_config(src: str, dest: Path, trust_remote_code: bool = False) -> list[str]:
    """Save the source's tokenizer and generation config next to the grown weights; names what was copied."""
    copied = []
    try:
        tok = transformers.AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        tok.save_pretrained(dest)
        copied.append("tokenizer")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.info("no tokenizer copied from %s (%s)", src, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    try:
        gen = transformers.GenerationConfig.from_pretrained(src)
        gen.save_pretrained(dest)
        copied.append("generation_config")
    except (OSError, ValueError):
        pass
    return copied


def load_probe_tokenizer(src: str, trust_remote_code: bool = False):
    """The tokenizer of ``src`` for --probe-text, or a one-line error when it has none."""
    try:
        return transformers.AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError):
        raise HfExpandError(f"--probe-text needs a tokenizer, and none could be loaded from {src}; drop --probe-text") from None
