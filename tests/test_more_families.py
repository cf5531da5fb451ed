"""Families beyond the full matrix (issue 16): every operation of the support table, through the checkpoint path
(streamed, certificate, reload check), then reloaded here in stock transformers and compared with the base on
other probes, and every new slice must learn. A cell that cannot apply is refused with the reason the README's
table quotes, and nothing is written. Most families have no data file: their layout is inferred from
transformers and verification vouches for it."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import _saved_models, assert_new_slices_learn, load_stock
from hf_expand import UnsupportedArchitecture, grow_checkpoint
from hf_expand.architectures import layout_is_inferred
from hf_expand.grow import RECORD_FILE
from hf_expand.verify import make_probes, max_abs_diff, outputs
from matrix import (FAMILY_CONFIGS, MORE_ENCODERS, MORE_FAMILY_CONFIGS, MORE_OPERATIONS, MORE_SEQ2SEQ, NEW_TOKENS,
                    has_classifier, more_operations, more_tiny_model, more_unsupported_reason, no_classifier_reason)

FAMILIES = sorted(MORE_FAMILY_CONFIGS)
CELLS = [(f, op) for f in FAMILIES for op in MORE_OPERATIONS]

# cells refused up front by planning (a data file's refusal, or what inference cannot place): the reason's words
REFUSED = {
    ("bloom", "widen_ffn"): "FFN width is fixed at 4 x hidden_size",
    ("bloom", "widen_hidden"): "FFN is 4 x hidden_size in transformers' code",
    ("mpt", "widen_ffn"): "expansion_ratio x d_model",
    ("mpt", "widen_hidden"): "follows d_model through expansion_ratio",
    ("falcon", "widen_hidden"): "fused query_key_value packs heads",
    ("falcon", "add_heads"): "fused query_key_value packs heads",
    ("gpt_bigcode", "widen_hidden"): "one shared key/value head",
    ("minimax", "add_layers"): "decay by their index over the layer count",
    ("minimax", "depth_upscale"): "decay by their index over the layer count",
    ("minimax", "widen_hidden"): "fuse q, k and v in one qkv_proj",
    ("minimax", "add_heads"): "fuse q, k and v in one qkv_proj",
    ("jamba", "add_layers"): "decides each block's kind from its index",
    ("jamba", "depth_upscale"): "decides each block's kind from its index",
    ("jamba", "widen_hidden"): "Mamba mixers are mamba_expand x hidden_size wide",
    **{(f, "add_heads"): "normalise over all heads together" for f in ("olmoe", "olmo3", "flex_olmo")},
    ("helium", "add_heads"): "o_proj is built hidden_size x hidden_size",
    **{(f, op): "dynamic-mask parameters" for f in ("doge",) for op in ("add_heads", "widen_hidden")},
    ("doge", "add_layers"): "scale the residual stream by learned weights",
    ("codegen", "widen_hidden"): "qkv_proj fuses q, k and v in mp_num interleaved groups",
    **{("qwen3_next", op): "packs each head's query with its output gate" for op in ("add_heads", "widen_hidden")},
    **{(f, "add_layers"): "dense or MoE from its index" for f in ("dots1", "glm4_moe", "ernie4_5_moe", "deepseek_v2",
                                                                   "deepseek_v3")},
    ("ernie4_5_moe", "depth_upscale"): "dense or MoE from its index",
    ("gpt_oss", "widen_ffn"): "interleaves gate and up column by column",
    ("mamba", "widen_ffn"): "Mamba has no FFN",
    ("mamba", "widen_hidden"): "inner width is expand x hidden_size",
    ("mamba", "add_heads"): "Mamba has no attention heads",
    ("falcon_h1", "widen_hidden"): "Mamba-2 mixer's inner width and heads",
    **{("modernbert", op): "from its index" for op in ("add_layers", "depth_upscale")},
    **{(f, op): "MLA attention packs" for f in ("deepseek_v2", "deepseek_v3") for op in ("add_heads", "widen_hidden")},
    **{(f, "add_heads"): "head size is (computed as )?(hidden_size|d_model) / (n_head|n_heads|num_attention_heads)"
       for f in ("bloom", "mpt", "gpt_bigcode", "gptj", "codegen", "stablelm", "electra", "xlm-roberta", "camembert",
                 "data2vec-text", "modernbert", "deberta-v2")},
    ("t5", "add_heads"): "encoder-decoders .* more heads are not built for them yet",
    **{(f, "widen_hidden"): "encoder-decoders .* a wider hidden size is not built for them yet" for f in MORE_SEQ2SEQ},
    ("bart", "add_heads"): "head size is d_model / attention heads",
}


def test_more_families_are_new_and_many():
    assert len(FAMILIES) >= 45 and len(FAMILIES) + len(FAMILY_CONFIGS) >= 63 and not set(FAMILIES) & set(FAMILY_CONFIGS)
    assert len(MORE_OPERATIONS) == 7 and len(CELLS) == len(FAMILIES) * 7


@pytest.mark.xdist_group("matrix-planning")  # with the support-table test: the plannings are cached in matrix.py
def test_refused_cells_are_the_ones_planning_refuses():
    """The README table (planning) and these tests (growing) agree on which cells are refused, and why."""
    refused = {(f, op): more_unsupported_reason(f, op) for f, op in CELLS}
    refused = {cell: why for cell, why in refused.items() if why is not None}
    without_classifier = {(f, "add_labels") for f in FAMILIES if not has_classifier(f)}
    assert set(refused) == set(REFUSED) | without_classifier
    for cell, words in REFUSED.items():
        assert re.search(words, refused[cell]), (cell, refused[cell])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(family, classifier?) -> folder of the tiny model saved with the tiny tokenizer."""
    lms = _saved_models(tmp_path_factory, "more", more_tiny_model)
    classifiers = _saved_models(tmp_path_factory, "more_cls", lambda f: more_tiny_model(f, classifier=True))
    return lambda family, classifier=False: (classifiers if classifier else lms)(family)


@pytest.fixture(scope="module")
def base_outputs(saved):
    """(family, classifier?) -> the saved base model reloaded in stock transformers, and its outputs on the test's
    probes (computed once per family, not once per operation)."""
    cache = {}

    def get(family, classifier=False):
        key = (family, classifier)
        if key not in cache:
            base = load_stock(saved(family, classifier))
            probes = make_probes(base.config, seed=11)  # other probes than the ones growth used
            cache[key] = base, probes, outputs(base, probes)
        return cache[key]
    return get


@pytest.mark.parametrize("family,op", CELLS)
def test_family_grows_exactly_or_is_refused(family, op, saved, base_outputs, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "grown"
    if op == "add_labels" and not has_classifier(family):  # the table's reason, checked against transformers
        with pytest.raises(ValueError, match="Unrecognized configuration class"):
            AutoModelForSequenceClassification.from_config(AutoConfig.for_model(family))
        assert more_unsupported_reason(family, op) == no_classifier_reason(family)
        return
    base_dir = saved(family, classifier=op == "add_labels")
    ops = more_operations(op, AutoConfig.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir))
    if (family, op) in REFUSED:
        with pytest.raises(UnsupportedArchitecture, match=REFUSED[family, op]) as err:
            grow_checkpoint(str(base_dir), out, ops)
        assert str(err.value) == more_unsupported_reason(family, op)
        assert not out.exists()
        return

    report = grow_checkpoint(str(base_dir), out, ops, seed=3)
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["layout"] == ("inferred" if layout_is_inferred(family) else "data")
    assert record["verification"]["certificate"]["blocks"]
    base, probes, base_out = base_outputs(family, classifier=op == "add_labels")
    grown = load_stock(out)
    assert type(grown) is type(base) and grown.num_parameters() > base.num_parameters()
    if op == "depth_upscale":  # changes the outputs by design: recorded, not enforced
        (o,) = report.operations
        assert not o.preserving and o.max_abs_diff > 0
        return
    diff = max_abs_diff(base_out, outputs(grown, probes), probes)
    tol = 1e-4 if family in MORE_ENCODERS else 1e-5
    assert diff <= tol, f"{family}/{op}: max |base - grown| = {diff:.3g} > {tol}"

    grad_probes = make_probes(grown.config, seed=11)
    if op == "add_tokens":  # new embedding rows learn only from inputs that use them
        new_ids = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(list(NEW_TOKENS))
        assert min(new_ids) >= base.config.get_text_config().vocab_size
        grad_probes.batches[0]["input_ids"][0, : len(new_ids)] = torch.tensor(new_ids)
    assert_new_slices_learn(grown, record["new_slices"], grad_probes)


def test_lfm2_derived_ffn_width_is_refused():
    """With ``block_auto_adjust_ff_dim`` (real LFM2 checkpoints) the FFN width is derived from intermediate_size:
    widen_ffn is refused up front with the way out; the other operations still plan."""
    from hf_expand import AddLayers, WidenFFN, plan_growth
    from matrix import more_tiny_config

    config = more_tiny_config("lfm2")
    config.block_auto_adjust_ff_dim = True
    with pytest.raises(UnsupportedArchitecture, match="derived from intermediate_size.*block_auto_adjust_ff_dim to false"):
        plan_growth(config, [WidenFFN(factor=1.5)])
    assert plan_growth(config, [AddLayers(count=2)])


@pytest.mark.parametrize("family", sorted(MORE_SEQ2SEQ))
def test_encoder_decoder_stacks_grow_each_with_its_own_placement(family, saved, base_outputs, tmp_path, capsys):
    """T5 (pre-norm, position bias only in block 0) and BART (post-norm): the CLI grows one stack at a time
    (--stack), the Python API the other with its own placement; the other stack's tensors stay byte-identical,
    the outputs stay the base's, and the stock class loads the result."""
    from safetensors.torch import load_file

    from hf_expand import AddLayers, grow_checkpoint
    from hf_expand.architectures import stack_names
    from hf_expand.cli import main

    assert len(MORE_SEQ2SEQ) == 2
    folder = saved(family)
    base, probes, base_out = base_outputs(family)
    assert stack_names(base.config) == ("encoder", "decoder")
    enc = tmp_path / "enc"
    assert main(["grow", str(folder), "--out", str(enc), "--add-layers", "1", "--placement", "top", "--stack", "encoder",
                 "-q"]) == 0
    assert json.loads((enc / RECORD_FILE).read_text())["operations"][0]["params"]["stacks"] == {"encoder": [3]}
    both = tmp_path / "both"
    # T5: new block 0 takes the position bias table over. BART (post-norm) at 1: a new block at 0 would renormalise
    # the embeddings' LayerNorm output, which is exact only up to its eps (verification refuses it on these weights)
    positions = (0, 3) if family == "t5" else (1, 3)
    grow_checkpoint(str(enc), both, [AddLayers(count=2, placement=positions, stack="decoder")])
    grown = load_stock(both)
    assert type(grown) is type(base)
    counts = {k: v for k, v in grown.config.to_dict().items() if k in ("num_layers", "num_decoder_layers",
                                                                    "encoder_layers", "decoder_layers")}
    assert sorted(counts.values()) == [4, 5], counts
    assert max_abs_diff(base_out, outputs(grown, probes), probes) <= 1e-5
    record = json.loads((both / RECORD_FILE).read_text())
    assert record["operations"][-1]["params"]["stacks"] == {"decoder": list(positions)}
    # the decoder-only growth left every encoder tensor as the first growth wrote it
    first, second = load_file(str(next(enc.glob("*.safetensors")))), load_file(str(next(both.glob("*.safetensors"))))
    encoder = [k for k in first if ".encoder." in f".{k}"]
    assert encoder and all(torch.equal(first[k], second[k]) for k in encoder)
    if family == "t5":  # the relative position bias table lives in block 0 only, still the base's
        tables = sorted(k for k in second if "relative_attention_bias" in k)
        assert tables == ["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
        stock = base.state_dict()
        assert all(torch.equal(second[k], stock[k]) for k in tables)


def test_encoder_decoder_without_stack_data_is_refused(tmp_path, capsys):
    """An encoder-decoder family with no data on its two stacks (Pegasus): one line naming the data file to add,
    exit 2, nothing written; grow_model says the same and leaves the caller's model as it was. ``stack`` on a model
    with one block stack is refused too."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from hf_expand import AddLayers, HfExpandError, WidenFFN, grow_model, plan_growth
    from hf_expand.cli import main
    from matrix import tiny_config

    config = AutoConfig.for_model("pegasus", d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=40,
                                  decoder_ffn_dim=40, encoder_attention_heads=2, decoder_attention_heads=2,
                                  vocab_size=99, max_position_embeddings=64)
    model = AutoModelForSeq2SeqLM.from_config(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedArchitecture, match="encoder-decoder .*data/pegasus.json"):
        grow_model(model, [WidenFFN(factor=1.5)])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.save_pretrained(tmp_path / "pegasus")
    capsys.readouterr()
    code = main(["grow", str(tmp_path / "pegasus"), "--out", str(tmp_path / "out"), "--add-layers", "1", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hf_expand/architectures/data/pegasus.json" in err[0], err
    assert not (tmp_path / "out").exists()
    with pytest.raises(HfExpandError, match="has one block stack"):
        plan_growth(tiny_config("llama"), [AddLayers(count=1, stack="encoder")])

def test_grown_t5_trains_only_its_new_capacity_with_the_trainer_helper(saved, tmp_path, capsys):
    """`hf-expand train` takes causal LMs, masked LMs and classifiers: a grown T5 is refused in one line that
    names the way (Seq2SeqTrainer after prepare_for_trainer). That way trains the new capacity only: a few AdamW
    steps with weight decay leave every old value bit-identical and move every new slice."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSeq2SeqLM

    from hf_expand import AddLayers, WidenFFN
    from hf_expand.cli import main
    from hf_expand.train.split import join
    from hf_expand.train.trainer import prepare_for_trainer
    from test_train import SENTENCES, new_masks

    grown = tmp_path / "grown"
    grow_checkpoint(str(saved("t5")), grown, [WidenFFN(factor=1.5), AddLayers(count=1)])
    capsys.readouterr()
    code = main(["train", str(grown), "--data", str(SENTENCES), "--out", str(tmp_path / "trained"), "--max-steps", "2",
                 "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Seq2SeqTrainer" in err[0] and "prepare_for_trainer" in err[0], err
    assert not (tmp_path / "trained").exists()

    model = AutoModelForSeq2SeqLM.from_pretrained(grown)
    prepare_for_trainer(model, grown, "new")
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and len(trained) < len(list(model.parameters()))
    optimizer = torch.optim.AdamW(trained, lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):  # the new FFN rows learn only once their zero output columns have moved
        ids = torch.randint(3, model.config.vocab_size, (4, 10), generator=g)
        model(input_ids=ids, decoder_input_ids=ids.roll(1, -1), labels=ids.flip(-1)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    join(model)
    before = load_file(str(grown / "model.safetensors"))
    after = {k: v.detach() for k, v in model.state_dict().items()}
    masks = new_masks(grown, before)
    assert any(m.any() for m in masks.values())
    for name, t in before.items():
        m = masks[name]
        assert torch.equal(t[~m], after[name][~m]), f"old values of {name} changed"
        if m.any():
            assert not torch.equal(t[m], after[name][m]), f"new slice of {name} did not train"


def test_encoder_decoder_edge_cases(saved, tmp_path, capsys):
    """T5 depth up-scaling whose first block is not base block 0 keeps the position bias table in block 0; a
    class holding one stack of the pair (T5EncoderModel) is refused in one line; `--task causal-lm` on a grown BART
    is refused too (a causal-LM class would silently drop the encoder); a placement that does not fit names its
    stack."""
    from transformers import AutoConfig, T5EncoderModel

    from hf_expand import AddLayers, DepthUpscale, HfExpandError, grow_model, plan_growth
    from hf_expand.cli import main
    from test_train import SENTENCES

    t5 = more_tiny_model("t5")
    grown, report = grow_model(t5, [DepthUpscale(ranges="1:3,0:3", stack="encoder")])
    names = [n for n, _ in grown.named_parameters() if "relative_attention_bias" in n]
    assert names == ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                     "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    assert torch.equal(grown.get_parameter(names[0]), t5.get_parameter(names[0]))
    assert not report.operations[0].preserving and grown.config.num_layers == 5

    encoder_only = T5EncoderModel(t5.config)
    with pytest.raises(UnsupportedArchitecture, match="T5EncoderModel holds only part of t5's block stacks"):
        grow_model(encoder_only, [AddLayers(count=1)])

    config = AutoConfig.from_pretrained(saved("t5"))
    config.num_decoder_layers = 2
    with pytest.raises(HfExpandError, match="^decoder stack: --placement position"):
        plan_growth(config, [AddLayers(placement=(3,))])

    capsys.readouterr()
    out = tmp_path / "trained"
    code = main(["train", str(saved("bart")), "--data", str(SENTENCES), "--out", str(out), "--task", "causal-lm",
                 "--max-steps", "2", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "encoder-decoder" in err[0] and "Seq2SeqTrainer" in err[0], err
    assert not out.exists()
