"""``hf-expand env``: the versions and machine a bug report needs (as ``transformers env`` prints them)."""

from __future__ import annotations

import os
import platform
import sys

# the packages whose versions change what hf-expand does; optional ones say "not installed"
PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "evaluate", "nlpaug", "huggingface_hub",
            "safetensors", "tokenizers", "numpy", "sentence-transformers", "tensorboard", "matplotlib")


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _accelerators() -> str:
    try:
        import torch
    except ImportError:
        return "torch not installed"
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} x {', '.join(names)}"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple MPS"
    return f"CPU only ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def report() -> str:
    """Lines ``- name: value``. Only whether a Hub token is set is said, never the token."""
    from . import __version__

    token = "set (not shown)" if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") else "not set"
    lines = [f"- hf-expand: {__version__}",
             f"- Python: {sys.version.split()[0]} ({sys.executable})",
             f"- Platform: {platform.platform()}",
             f"- Accelerators: {_accelerators()}"]
    lines += [f"- {name}: {_version(name)}" for name in PACKAGES]
    lines += [f"- HF_ENDPOINT: {os.environ.get('HF_ENDPOINT', 'default (https://huggingface.co)')}",
              f"- HF_HUB_OFFLINE: {os.environ.get('HF_HUB_OFFLINE', '0')}",
              f"- HF token in the environment: {token}"]
    return "\n".join(lines)
