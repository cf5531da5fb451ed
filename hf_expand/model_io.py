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
    ("AutoModelForImageTextToText", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"),  # multimodal wrappers
    ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),  # encoder-decoders (refused to grow)
    ("AutoModel", "MODEL_MAPPING_NAMES"),
]



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
    from .lineage import hub_id_syntax

    return hub_id_syntax(src)


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


def _config_errors() -> tuple[type[BaseException], ...]:
    """What ``AutoConfig.from_pretrained`` raises for a config that is not a model's (bad JSON, wrong types,
    sizes its class validates: ``hidden_size % heads`` with 0 heads is a ZeroDivisionError)."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, TypeError, ArithmeticError)
    try:
        from huggingface_hub.errors import StrictDataclassError

        errors += (StrictDataclassError,)
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    return errors


from .record import RECORD_FILE as RECORD_NAME  # noqa: E402,F401  (the old name, kept for importers)


def _check_record(folder: Path) -> None:
    """A growth record beside the weights must be a JSON object this hf-expand can read (``record.read_record``:
    one line when it is damaged or newer): growing or training a grown folder reads it."""
    from .record import read_record

    read_record(folder)


def load_config(src: str, trust_remote_code: bool = False):
    """Config of a local folder or Hub id, with one-line errors for anything that is not a model: a damaged
    config.json or growth record, sizes beyond ``architectures.size_problem``'s limits (checked before any
    model, even a meta one, is built)."""
    from .architectures import size_problem

    path = Path(src)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise HfExpandError(f"{src} is not a model folder (no config.json); pass a save_pretrained folder or a Hub id")
        _check_record(path)
    elif not _is_hub_id(src):
        raise HfExpandError(f"{src} is neither an existing folder nor a valid Hub id (like 'org/name')")
    where = f"{path / 'config.json'}" if path.exists() else f"the config.json of {src}"
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    except _config_errors() as exc:
        if not trust_remote_code and is_custom_code_refusal(exc):
            raise needs_custom_code(src) from None
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        first = lines[0]
        if type(exc).__name__.startswith("StrictDataclass"):  # the config class's own reason is the last line
            first = re.sub(r"^\w+Error: ", "", lines[-1])
        elif isinstance(exc, ArithmeticError):
            first = f"{first} (a size or count in it is 0 or out of range)"
        hint = f"; fix {where}" if path.exists() else ""
        raise HfExpandError(f"could not load a model config from {src}: {first}{hint}") from None
    problem = size_problem(config)
    if problem:
        raise HfExpandError(f"{where}: {problem}; is the config damaged? fix it (or use the model's original config)")
    return config


def _weight_files(src: str) -> list[Path]:
    path = Path(src)
    if not path.is_dir():
        return []
    return sorted(p for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in path.glob(pattern))


def _damaged_weights(src: str, exc: BaseException) -> HfExpandError | None:
    """The one-line error for a checkpoint whose weight files cannot be read (a truncated or corrupt
    .safetensors, a pickled .bin with objects that are not tensors), naming the file; None for other errors."""
    import pickle

    kind = type(exc).__name__
    if kind == "SafetensorError" or "deserializing header" in str(exc):
        bad = None
        for f in (f for f in _weight_files(src) if f.suffix == ".safetensors"):
            try:
                from safetensors import safe_open

                with safe_open(str(f), framework="pt"):
                    pass
            except Exception:  # noqa: BLE001 - whatever it is, this is the file that fails
                bad = f
                break
        first = (str(exc).strip().splitlines() or [kind])[0]
        return HfExpandError(f"{bad or src + ' (a .safetensors file)'} is truncated or corrupt ({first}); "
                             f"re-download or re-save the model")
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc):
        bins = [f for f in _weight_files(src) if f.suffix != ".safetensors"]
        name = ", ".join(str(f) for f in bins) or f"{src} (a pickled .bin checkpoint)"
        return HfExpandError(f"{name} holds pickled objects that are not tensors; hf-expand does not unpickle them "
                             f"(unpickling can run code); convert the checkpoint to safetensors where you trust it")
    return None


class _HoldLoadReport:
    """Holds transformers' load report back while loading: re-emitted when the load is used, dropped when a
    mismatch is refused in our own one line instead."""

    def __init__(self):
        self.records: list = []
        self.logger = logging.getLogger("transformers.modeling_utils")

    def filter(self, record) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True

    def __enter__(self):
        self.logger.addFilter(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeFilter(self)
        return False

    def release(self) -> None:
        for record in self.records:
            self.logger.handle(record)


def load_model(src: str, config=None, trust_remote_code: bool = False):
    """Load ``src`` in float32 (growth maths is done in fp32) with the head class its config names.

    Damaged weights (truncated/corrupt safetensors, a pickled .bin with objects) and weights whose shapes do
    not match config.json are refused in one line naming the file."""
    config = config or load_config(src, trust_remote_code)
    cls = auto_class_for(config)
    try:
        with _HoldLoadReport() as report:
            model, info = cls.from_pretrained(src, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                              output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        damaged = _damaged_weights(src, exc)
        if damaged is not None:
            raise damaged from None
        first = str(exc).strip().splitlines()[0]
        raise HfExpandError(f"could not load model weights from {src}: {first}") from None
    except Exception as exc:  # noqa: BLE001 - only unreadable weight files become a line; anything else raises
        damaged = _damaged_weights(src, exc)
        if damaged is None:
            raise
        raise damaged from None
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        name, stored, expected = mismatched[0]
        where = f"{Path(src) / 'config.json'}" if Path(src).is_dir() else f"the config.json of {src}"
        raise HfExpandError(f"{where} does not match the weights: {name} is {list(stored)} in the checkpoint but "
                            f"{list(expected)} by the config ({len(mismatched)} tensors differ); use the config "
                            f"saved with these weights")
    report.release()
    return model.eval()


def source_dtype(config) -> torch.dtype:
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


from .output import atomic_output_dir, check_output_dir  # noqa: F401,E402  (moved to output.py; re-exported)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "special_tokens_map.json")


def copy_tokenizer_and_generation_config(src: str, dest: Path, trust_remote_code: bool = False) -> list[str]:
    """Save the source's tokenizer and generation config next to the grown weights; names what was copied.

    A source without tokenizer files is fine (nothing is copied, said at INFO level). A local source whose
    tokenizer files exist but do not load (a garbage tokenizer.json) is refused in one line: the grown folder
    would silently have no tokenizer (issue 14)."""
    copied = []
    try:
        tok = transformers.AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
        tok.save_pretrained(dest)
        copied.append("tokenizer")
    except Exception as exc:  # noqa: BLE001 - the tokenizers backend raises plain Exceptions for bad files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        present = [name for name in TOKENIZER_FILES if (Path(src) / name).is_file()] if Path(src).is_dir() else []
        if present:
            raise HfExpandError(f"the tokenizer files of {src} ({', '.join(present)}) do not load ({first}); the grown "
                                f"folder would have no tokenizer; fix or remove them, then grow again") from None
        if not isinstance(exc, (OSError, ValueError, KeyError, TypeError)):
            raise
        log.info("no tokenizer copied from %s (%s)", src, first)
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
