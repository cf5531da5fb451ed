"""Families without a data file (issue 16): their layout is inferred from transformers and trusted only
because growth is verified. A family whose data file is removed still grows exactly, or is refused with the
missing piece named; a wrong layout is caught by verification."""

from __future__ import annotations

import json
import shutil

import pytest

import hf_expand.architectures as arch
from hf_expand import AddLayers, UnsupportedArchitecture, WidenFFN, grow_checkpoint
from hf_expand.architectures import describe
from tests.conftest import assert_nothing_written
from tests.matrix import tiny_config

# families with a tp plan whose FFN a data file only restates; each is grown with its file removed
INFERABLE = ["llama", "mistral", "qwen3", "phi3", "starcoder2", "olmo2"]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A copy of the architecture data folder the test may edit (the package's stays as it is)."""
    folder = tmp_path / "data"
    shutil.copytree(arch.DATA_DIR, folder)
    monkeypatch.setattr(arch, "DATA_DIR", folder)
    arch.family_data.cache_clear()
    yield folder
    arch.family_data.cache_clear()


def test_inferable_families_are_listed():
    assert INFERABLE


@pytest.mark.parametrize("family", INFERABLE)
def test_family_without_data_file_grows_exactly(family, data_dir, tiny_checkpoints, tmp_path, caplog):
    src = tiny_checkpoints(family)
    (data_dir / f"{family}.json").unlink()
    layout = describe(tiny_config(family))
    assert layout.family.inferred and layout.family.ffn
    out = tmp_path / "grown"
    with caplog.at_level("WARNING"):
        report = grow_checkpoint(str(src), out, [WidenFFN(factor=1.5), AddLayers(count=2)])
    assert report.reloaded_max_abs_diff <= report.tolerance, report.reloaded_max_abs_diff
    assert any("layout is inferred from transformers" in r.getMessage() for r in caplog.records)
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["layout"] == "inferred" and record["model_type"] == family
    assert "inferred from transformers" in (out / "README.md").read_text()


def test_family_with_data_file_says_so(tiny_checkpoints, tmp_path):
    out = tmp_path / "grown"
    grow_checkpoint(str(tiny_checkpoints("llama")), out, [AddLayers(count=1)])
    assert json.loads((out / "hf_expand_growth.json").read_text())["layout"] == "data"


def test_an_incomplete_inference_is_caught_by_verification(data_dir, tiny_checkpoints, tmp_path):
    """qwen2_moe's tp plan does not list the shared expert (its data file does): the inferred layout misses it,
    and the comparison refuses the result (exit 1, nothing written) rather than writing a changed model."""
    from hf_expand.cli import main

    (data_dir / "qwen2_moe.json").unlink()
    code = main(["grow", str(tiny_checkpoints("qwen2_moe")), "--out", str(tmp_path / "out"), "--widen-ffn", "1.5",
                 "--add-layers", "2", "-q"])
    assert code == 1
    assert_nothing_written(tmp_path)


def test_family_that_cannot_be_inferred_is_refused_naming_what_is_missing(data_dir, tiny_checkpoints, tmp_path):
    (data_dir / "bert.json").unlink()  # BERT has no tp plan: nothing says which projections read the stream
    with pytest.raises(UnsupportedArchitecture, match="no base_model_tp_plan"):
        grow_checkpoint(str(tiny_checkpoints("bert")), tmp_path / "out", [WidenFFN(factor=1.5)])
    assert_nothing_written(tmp_path)


def test_unknown_tp_plan_style_raises(data_dir):
    config = tiny_config("llama")
    (data_dir / "llama.json").unlink()
    config.base_model_tp_plan = {**config.base_model_tp_plan, "layers.*.mlp.up_proj": "diagonal_magic"}
    with pytest.raises(UnsupportedArchitecture, match="'diagonal_magic', a style hf-expand does not know"):
        describe(config)


def test_wrong_layout_is_caught_by_verification(data_dir, tiny_checkpoints, tmp_path):
    """A data file claiming llama scales its embeddings by sqrt(hidden) as Gemma does: widening the hidden size
    compensates a factor llama never applies, and the comparison refuses the result: exit 1, nothing written."""
    from hf_expand.cli import main

    data = json.loads((data_dir / "llama.json").read_text())
    (data_dir / "llama.json").write_text(json.dumps({**data, "embed_scale": "sqrt_hidden"}))
    code = main(["grow", str(tiny_checkpoints("llama")), "--out", str(tmp_path / "out"), "--widen-hidden", "2", "-q"])
    assert code == 1
    assert_nothing_written(tmp_path)


def test_longrope_add_heads_names_the_real_cause():
    """phi3 with longrope: the refusal says the factor lists are per head dimension, not transformers' raw text."""
    from hf_expand import AddHeads, plan_growth
    from hf_expand.errors import HfExpandError

    config = tiny_config("phi3")
    half = config.hidden_size // config.num_attention_heads // 2
    config.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * half,
                              "long_factor": [2.0] * half, "original_max_position_embeddings": 32}
    with pytest.raises(HfExpandError, match="longrope's short_factor/long_factor lists are per head dimension"):
        plan_growth(config, [AddHeads(count=2)])


def test_plan_that_does_not_fit_the_grown_model_is_refused_in_one_line(data_dir, tmp_path):
    """Without jamba.json the tp plan names only the experts: the dense FFN would stay narrow while the config
    grows. Planning compares the plan with the model the grown config builds, and refuses (exit 2, nothing
    written) before any weight is read."""
    import torch
    from transformers import AutoModelForCausalLM

    from hf_expand.cli import main
    from tests.matrix import more_tiny_config

    (data_dir / "jamba.json").unlink()
    src = tmp_path / "jamba"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(more_tiny_config("jamba")).save_pretrained(src)
    code = main(["grow", str(src), "--out", str(tmp_path / "out"), "--widen-ffn", "1.5", "-q"])
    assert code == 2
    assert_nothing_written(tmp_path)
