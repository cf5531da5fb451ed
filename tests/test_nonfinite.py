"""Non-finite outputs (issue 14, finding 2): NaN or inf in either model's outputs is a failure that names
where it appeared (the base, the grown model, or both), whatever the tolerance or --accept-difference;
and one NaN never hides the other differences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import assert_nothing_written, tiny_tokenizer
from hf_expand.cli import main
from hf_expand.errors import PreservationError

NAN, INF = float("nan"), float("inf")


def run_cli(capsys, *args):
    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line; no traceback, no second error line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("hf-expand: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def variant(llama_dir, tmp_path):
    """variant(name, edit) -> folder of the tiny llama with ``edit(model)`` applied to its weights."""
    from transformers import AutoModelForCausalLM

    def make(name: str, edit) -> Path:
        model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
        with torch.no_grad():
            edit(model)
        path = tmp_path / "models" / name
        model.save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
        return path

    return make


def all_nan(model):
    for p in model.parameters():
        p.fill_(NAN)


def perturb_head(model):
    """Large, finite differences on every output."""
    g = torch.Generator().manual_seed(0)
    model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=g))


# --- hf-expand verify ---------------------------------------------------------------------------------

def test_verify_all_nan_grown_names_the_grown_model(capsys, llama_dir, variant):
    grown = variant("nan", all_nan)
    code, out, err = run_cli(capsys, "verify", llama_dir, grown, "-q")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "within tolerance" not in out
    assert "the grown model's outputs contain NaN" in line and "the base model is finite" in line, line
    assert "24 of 24 positions" in line, line  # every non-padded probe position (12 + 8 + 4)


def test_verify_one_nan_does_not_hide_the_other_differences(capsys, llama_dir, variant, monkeypatch):
    """A single NaN entry at one non-padded position of a grown model that also differs a lot elsewhere."""
    import hf_expand.certificate as C

    grown = variant("perturbed", perturb_head)
    real = C.StreamedModel.run

    def one_nan(self, probes, progress=False, **kw):  # verify runs each model block by block (certificate.StreamedModel)
        run = real(self, probes, progress, **kw)
        if self.what == "grown":
            run.outputs[0][1, 3, 5] = NAN  # row 1 is padded from position 8 on: position 3 is compared
        return run

    monkeypatch.setattr(C.StreamedModel, "run", one_nan)
    code, out, err = run_cli(capsys, "verify", llama_dir, grown, "-q")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "the grown model's outputs contain NaN" in line and "(1 of 24 positions)" in line, line
    # the finite differences are still measured and shown
    shown = float(line.split("elsewhere the outputs differ by up to ")[1].split()[0].rstrip(");,"))
    assert shown > 0.1, line


def test_verify_nan_in_one_row_among_differences(capsys, llama_dir, variant):
    """Real weights: one token's embedding is NaN (the token only occurs in probe row 0; causal attention
    spreads it over that row), and the head differs everywhere."""
    def edit(model):
        perturb_head(model)
        model.model.embed_tokens.weight[92].fill_(NAN)  # probe row 0's last token (seed 0), nowhere else

    grown = variant("row_nan", edit)
    code, out, err = run_cli(capsys, "verify", llama_dir, grown, "-q")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "the grown model's outputs contain NaN" in line and "(12 of 24 positions)" in line, line


def test_verify_inf_in_base_names_the_base(capsys, llama_dir, variant):
    def edit(model):
        model.lm_head.weight[7, 0] = INF  # logit 7 becomes +-inf at every position

    base = variant("inf_base", edit)
    code, out, err = run_cli(capsys, "verify", base, llama_dir, "-q")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "the base model's outputs contain inf" in line and "the grown model is finite" in line, line
    assert "NaN" not in line, line


def test_verify_both_non_finite(capsys, variant):
    base, grown = variant("nan_a", all_nan), variant("nan_b", all_nan)
    code, out, err = run_cli(capsys, "verify", base, grown, "-q")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "both models' outputs contain NaN" in line, line


def test_verify_finite_models_still_pass(capsys, llama_dir):
    code, out, err = run_cli(capsys, "verify", llama_dir, llama_dir, "-q")
    assert code == 0 and "max |base - grown| = 0 (within tolerance" in out, (out, err)


# --- hf-expand grow -----------------------------------------------------------------------------------

def test_grow_refuses_nan_grown_model_even_with_accept_difference(capsys, llama_dir, tmp_path, monkeypatch):
    """An operation whose result computes NaN: refused, with or without --accept-difference; nothing written."""
    import hf_expand.compose as C
    import hf_expand.execute as E

    real_step = E.run_step

    def nan_step(step, tensor, seed):  # the operation writes NaN into the last block's FFN output projection
        out = real_step(step, tensor, seed)
        return out.fill_(NAN) if step.target == "model.layers.3.mlp.down_proj.weight" else out

    monkeypatch.setattr(E, "run_step", nan_step)  # the in-memory path (grow_model)
    monkeypatch.setattr(C, "run_step", nan_step)  # the streamed path (composed chains)
    for extra in ([], ["--accept-difference"]):
        code, out, err = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", "--add-layers", "1", "-q", *extra)
        assert code == 1, (extra, out, err)
        line = error_line(err)
        assert "add_layers" in line and "outputs contain NaN" in line and "nothing was written" in line, line
        assert_nothing_written(tmp_path)


def test_grow_refuses_non_finite_saved_model(capsys, llama_dir, tmp_path, monkeypatch):
    """The in-memory model is fine, but the folder as written computes NaN: the reload check refuses."""
    import hf_expand.grow as G
    from safetensors.torch import load_file, save_file

    real_copy = G.copy_tokenizer_and_generation_config

    def corrupt_then_copy(src, dest, *a, **kw):  # runs after save_pretrained, before the reload
        for f in Path(dest).glob("*.safetensors"):
            tensors = {k: torch.full_like(v, NAN) for k, v in load_file(f).items()}
            save_file(tensors, f, metadata={"format": "pt"})
        return real_copy(src, dest, *a, **kw)

    monkeypatch.setattr(G, "copy_tokenizer_and_generation_config", corrupt_then_copy)
    code, out, err = run_cli(capsys, "grow", llama_dir, "--out", tmp_path / "out", "--add-layers", "1", "-q",
                             "--accept-difference")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "the saved model's outputs contain NaN" in line and "nothing was written" in line, line
    assert_nothing_written(tmp_path)


def test_grow_refuses_non_finite_base(capsys, tmp_path, variant):
    base = variant("nan_base", all_nan)
    code, out, err = run_cli(capsys, "grow", base, "--out", tmp_path / "out", "--add-layers", "1", "-q",
                             "--accept-difference")
    assert code == 1, (out, err)
    line = error_line(err)
    assert "the base model produces non-finite outputs" in line and "NaN" in line, line
    assert_nothing_written(tmp_path)


def test_grow_model_api_raises_for_nan(tiny_checkpoints, monkeypatch):
    """The Python API: grow_model raises a PreservationError naming the grown model, accept_difference or not."""
    import hf_expand.grow as G
    from hf_expand import AddLayers
    from transformers import AutoModelForCausalLM

    real_build = G._build

    def nan_build(cls, config, state_dict, buffers=None):
        model = real_build(cls, config, state_dict, buffers)
        with torch.no_grad():
            model.lm_head.weight[3, 0] = NAN
        return model

    monkeypatch.setattr(G, "_build", nan_build)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints("llama"), dtype=torch.float32)
    with pytest.raises(PreservationError) as info:
        G.grow_model(model, [AddLayers(count=1)], accept_difference=True)
    assert getattr(info.value, "where", None) == "grown" and "NaN" in str(info.value)


# --- the measures themselves --------------------------------------------------------------------------

def _probes():
    from hf_expand.verify import Probes

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return Probes([{"input_ids": torch.zeros_like(mask), "attention_mask": mask}])


def test_max_abs_diff_sees_nan_and_inf():
    from hf_expand.errors import NonFiniteOutputs
    from hf_expand.verify import max_abs_diff

    probes = _probes()
    base = [torch.zeros(2, 4, 5)]
    grown = [torch.full((2, 4, 5), 3.0)]
    assert max_abs_diff(base, grown, probes) == 3.0

    one_nan = [grown[0].clone()]
    one_nan[0][0, 1, 2] = NAN
    with pytest.raises(NonFiniteOutputs) as info:
        max_abs_diff(base, one_nan, probes)
    assert info.value.where == "grown"
    msg = str(info.value)
    assert "the grown model's outputs contain NaN" in msg and "1 of 6 positions" in msg and "3" in msg, msg
    assert isinstance(info.value, PreservationError)

    # NaN at a padded position is not compared
    padded = [grown[0].clone()]
    padded[0][1, 3, 0] = NAN
    assert max_abs_diff(base, padded, probes) == 3.0

    # inf in the base; the difference would be inf too, but the base is what is named
    inf_base = [base[0].clone()]
    inf_base[0][1, 0, 4] = -INF
    with pytest.raises(NonFiniteOutputs) as info:
        max_abs_diff(inf_base, grown, probes)
    assert info.value.where == "base" and "the base model's outputs contain inf" in str(info.value)

    with pytest.raises(NonFiniteOutputs) as info:
        max_abs_diff(inf_base, one_nan, probes)
    assert info.value.where == "both"

    # NaN in a new output column (beyond the compared old part) is a broken model too
    wider = [torch.cat([grown[0], torch.full((2, 4, 1), NAN)], -1)]
    with pytest.raises(NonFiniteOutputs) as info:
        max_abs_diff(base, wider, probes)
    assert info.value.where == "grown"

    # Differences of finite fp32 values never overflow to inf
    big = [torch.full((2, 4, 5), 3e38)]
    assert max_abs_diff(big, [-b for b in big], probes) == pytest.approx(6e38)

    # custom names (grow uses them)
    with pytest.raises(NonFiniteOutputs) as info:
        max_abs_diff(base, one_nan, probes, names=("the base model", "the model after add_layers"))
    assert "the model after add_layers" in str(info.value)


def test_python_max_does_not_hide_nan_across_batches():
    """The original bug: ``max(0.0, nan) == 0``; with NaN in the second batch only, too."""
    from hf_expand.verify import Probes, max_abs_diff

    mask = torch.ones(1, 3, dtype=torch.long)
    probes = Probes([{"input_ids": torch.zeros_like(mask), "attention_mask": mask}] * 2)
    base = [torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)]
    grown = [torch.full((1, 3, 4), 2.0), torch.full((1, 3, 4), NAN)]
    with pytest.raises(PreservationError, match="NaN"):
        max_abs_diff(base, grown, probes)


def test_new_output_measures_refuse_nan():
    from hf_expand.verify import new_output_measures

    probes = _probes()
    base = [torch.zeros(2, 4, 5)]
    grown = [torch.zeros(2, 4, 7)]
    grown[0][0, 0, 6] = NAN
    with pytest.raises(PreservationError, match="NaN"):
        new_output_measures(base, grown, probes, (5, 7))
