"""The contract: (family x case) on tiny odd-sized models, reloaded from disk in stock transformers,
matches the base model's outputs, and every new slice can learn. Cells that cannot apply fail with
the clear error, and exactly the expected cells are unsupported."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import FAMILY_CONFIGS, POST_NORM, assert_new_slices_learn, load_stock
from matrix import CASES, EXPECTED_UNSUPPORTED, IMPLIED_HEAD_SIZE, NEW_LABELS, NEW_TOKENS, unsupported_reason
from hf_expand import UnsupportedArchitecture, grow_checkpoint
from hf_expand.grow import RECORD_FILE
from hf_expand.verify import make_probes, max_abs_diff, outputs

TABLE = [(family, case) for family in FAMILY_CONFIGS for case in CASES]


def test_table_is_complete():
    assert len(FAMILY_CONFIGS) == 18 and len(CASES) == 10
    assert len(TABLE) == 18 * 10


def test_exactly_the_expected_cells_are_unsupported():
    unsupported = {(f, c) for f, c in TABLE if unsupported_reason(f, c)}
    assert unsupported == EXPECTED_UNSUPPORTED


@pytest.mark.parametrize("family,case", TABLE)
def test_growth_preserves_outputs(family, case, tiny_checkpoints, tiny_classifier_checkpoints, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    kind, make = CASES[case]
    base_dir = (tiny_classifier_checkpoints if kind == "classifier" else tiny_checkpoints)(family)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ops = make(AutoConfig.from_pretrained(base_dir), tokenizer)
    out = tmp_path / "grown"

    reason = unsupported_reason(family, case)
    if reason is not None:  # the cell cannot apply: the clear error, and nothing written
        with pytest.raises(UnsupportedArchitecture) as err:
            grow_checkpoint(str(base_dir), out, ops, seed=3)
        assert str(err.value) == reason and "use --widen-hidden" in reason
        assert not out.exists()
        return

    report = grow_checkpoint(str(base_dir), out, ops, seed=3)
    base, grown = load_stock(base_dir), load_stock(out)
    assert type(grown) is type(base)
    probes = make_probes(base.config, seed=11)  # different probes from the ones growth used
    assert (probes.batches[0]["attention_mask"] == 0).any(), "probes must contain padding"
    base_out, grown_out = outputs(base, probes), outputs(grown, probes)
    diff = max_abs_diff(base_out, grown_out, probes)
    tol = 1e-4 if family in POST_NORM else 1e-5
    assert diff <= tol, f"{family}/{case}: max |base - grown| = {diff:.3g} > {tol}"
    assert grown.num_parameters() > base.num_parameters()

    record = json.loads((out / RECORD_FILE).read_text())
    assert record["operations"] and record["new_slices"]
    assert record["verification"]["reloaded_max_abs_diff"] == pytest.approx(report.reloaded_max_abs_diff)
    notes = [n for o in report.operations for n in o.notes]
    _check_case(case, family, base, grown, out, base_out, grown_out, notes)

    grad_probes = make_probes(grown.config, seed=11)
    if "tokens" in case or case == "all_axes":  # new embedding rows learn only from inputs that use them
        new_ids = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(list(NEW_TOKENS))
        grad_probes.batches[0]["input_ids"][0, : len(new_ids)] = torch.tensor(new_ids)
    assert_new_slices_learn(grown, record["new_slices"], grad_probes)


def _check_case(case, family, base, grown, out, base_out, grown_out, notes):
    from transformers import AutoTokenizer

    c0, c1 = base.config, grown.config
    if case in ("layers_interleave", "layers_top", "both", "all_axes"):
        assert c1.num_hidden_layers == c0.num_hidden_layers + 2
        if getattr(c0, "layer_types", None) is not None:
            assert len(c1.layer_types) == c1.num_hidden_layers
            assert set(c1.layer_types) == set(c0.layer_types)
        if family == "qwen2_moe":  # base: layer 1 is dense; it must stay dense wherever it moved
            assert len(c1.mlp_only_layers) >= 1
            assert all(not hasattr(grown.model.layers[i].mlp, "experts") for i in c1.mlp_only_layers)
    if case in ("widen_hidden", "all_axes"):
        assert c1.hidden_size == 2 * c0.hidden_size
        assert c1.num_attention_heads == 2 * c0.num_attention_heads
        tied = any("kept tied" in n for n in notes)
        base_tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
        assert tied == base_tied, notes  # a tied model stays tied (every family here has a norm to fold into)
        if tied:
            assert grown.get_output_embeddings().weight.data_ptr() == grown.get_input_embeddings().weight.data_ptr()
        # Symmetry-breaking noise: the two copies of a read column differ, their sum is the old column.
        from hf_expand.architectures import describe

        layout = describe(c1, type(grown))
        p = next(p for p in layout.params.values()
                 if p.layer == 0 and p.input_axis is not None and p.shape[p.input_axis] == c1.hidden_size)
        w, h = dict(grown.named_parameters())[p.name], c0.hidden_size
        first, second = w.narrow(p.input_axis, 0, h), w.narrow(p.input_axis, h, h)
        assert not torch.equal(first, second), p.name
    if case == "add_heads":
        assert c1.num_attention_heads > c0.num_attention_heads
        group0 = c0.num_attention_heads // (getattr(c0, "num_key_value_heads", None) or c0.num_attention_heads)
        assert c1.num_attention_heads // c1.num_key_value_heads == group0
    if case in ("add_tokens", "all_axes"):
        tok = AutoTokenizer.from_pretrained(out)
        for t in NEW_TOKENS:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and ids[0] >= c0.vocab_size, (t, ids)
        assert c1.vocab_size == c0.vocab_size + len(NEW_TOKENS)
        assert any("probability mass" in n for n in notes)
        old_in = base.get_input_embeddings().weight
        assert torch.equal(grown.get_input_embeddings().weight[: c0.vocab_size, : old_in.shape[1]], old_in) or case == "all_axes"
    if case == "add_labels":
        assert c1.num_labels == c0.num_labels + len(NEW_LABELS)
        assert [c1.id2label[i] for i in range(c1.num_labels)][-2:] == list(NEW_LABELS)
        for (n0, p0), (n1, p1) in zip(base.named_parameters(), grown.named_parameters()):
            assert n0 == n1
            if p0.shape != p1.shape:  # the head: old rows bit-identical
                assert torch.equal(p1[: p0.shape[0]], p0), n0
        for a, b in zip(base_out, grown_out):
            assert torch.equal(a.argmax(-1), b.argmax(-1)), "predictions changed"
            assert (b[..., c0.num_labels:].max(-1).values <= a.max(-1).values).all()

