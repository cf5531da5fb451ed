"""The four width/output axes beyond FFN and depth: bad inputs of each (one line, exit 2, nothing
written), the acceptance checks on the real all-MiniLM-L6-v2 checkpoint, and variants the family matrix
does not cover (fixed kv heads, MQA, deep stacks, factor 3, untied heads, quiet new tokens)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import minilm_path, tiny_model
from matrix import NEW_TOKENS, tiny_config, tiny_tokenizer
from hf_expand import AddHeads, AddLabels, AddTokens, HfExpandError, WidenHidden, grow_model
from hf_expand.architectures import describe
from hf_expand.grow import _build
from hf_expand.execute import execute
from hf_expand.verify import make_probes, max_abs_diff, outputs
from test_cli import assert_nothing_written, run_cli

# (source fixture, args, message): every bad input of every new operation.
BAD_INPUTS = {
    "hidden_factor_one": ("llama", ["--widen-hidden", "1"], "must be 2 or more"),
    "hidden_factor_below_one": ("llama", ["--widen-hidden", "0.5"], "must be 2 or more"),
    "hidden_factor_fraction": ("llama", ["--widen-hidden", "1.5"], "whole number"),
    "hidden_factor_nan": ("llama", ["--widen-hidden", "nan"], "whole number factor"),
    "hidden_factor_huge": ("llama", ["--widen-hidden", "1e9"], "is above"),
    "hidden_noise_alone": ("llama", ["--add-layers", "1", "--no-hidden-noise"], "--no-hidden-noise applies"),
    "heads_zero": ("llama", ["--add-heads", "0"], ">= 1"),
    "heads_fraction": ("llama", ["--add-heads", "1.5"], ">= 1"),
    "heads_count_not_allowed": ("llama", ["--add-heads", "1"], "valid counts here: 4, 12"),
    "heads_not_saveable": ("llama", ["--add-heads", "2"], "valid counts here: 4, 12"),
    "heads_fixed_not_dividing": ("mistral", ["--add-heads", "1", "--kv-heads", "fixed"], "cannot be split evenly"),
    "heads_implied_head_size": ("gpt2", ["--add-heads", "2"], "use --widen-hidden"),
    "heads_qk_norm_over_heads": ("olmo2", ["--add-heads", "2"], "use --widen-hidden"),
    "kv_mode_alone": ("llama", ["--add-layers", "1", "--kv-heads", "fixed"], "--kv-heads applies"),
    "labels_empty": ("bert_cls", ["--add-labels", ""], "comma-separated list"),
    "labels_empty_item": ("bert_cls", ["--add-labels", "a,,b"], "comma-separated list"),
    "labels_duplicate_existing": ("bert_cls", ["--add-labels", "LABEL_1,new"], "already exist"),
    "labels_repeated": ("bert_cls", ["--add-labels", "x,x"], "more than once"),
    "labels_without_classifier": ("llama", ["--add-labels", "x"], "needs a classification head"),
    "tokens_empty": ("llama", ["--add-tokens", ""], "comma-separated list"),
    "tokens_only_commas": ("llama", ["--add-tokens", ",,"], "comma-separated list"),
    "tokens_all_present": ("llama", ["--add-tokens", "the,cat"], "already in the vocabulary"),
    "tokens_file_missing": ("llama", ["--add-tokens-file", "/no/such/tokens.txt"], "No such file"),
    "tokens_file_empty": ("llama", ["--add-tokens-file", "EMPTY"], "lists no tokens"),
    "tokens_no_tokenizer": ("llama_no_tok", ["--add-tokens", "zq"], "needs the model's tokenizer"),
    "token_output_alone": ("llama", ["--add-layers", "1", "--new-token-output", "mean"], "--new-token-output applies"),
}


def test_bad_input_table_nonempty():
    assert len(BAD_INPUTS) >= 20


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from matrix import tiny_classifier

    root = tmp_path_factory.mktemp("axes_src")
    paths = {}
    for name, model, tok in [("llama", tiny_model("llama"), True), ("mistral", tiny_model("mistral"), True),
                             ("gpt2", tiny_model("gpt2"), True), ("olmo2", tiny_model("olmo2"), True),
                             ("bert_cls", tiny_classifier("bert"), True), ("llama_no_tok", tiny_model("llama"), False)]:
        model.save_pretrained(root / name)
        if tok:
            tiny_tokenizer().save_pretrained(root / name)
        paths[name] = root / name
    (root / "empty.txt").write_text("\n  \n")
    paths["EMPTY"] = root / "empty.txt"
    return paths


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs(case, capsys, sources, tmp_path):
    src, args, message = BAD_INPUTS[case]
    args = [str(sources[a]) if a in sources else a for a in args]
    code, out, err = run_cli(capsys, "grow", sources[src], "--out", tmp_path / "out", *args)
    assert code == 2, err
    assert message in err, err
    assert err.startswith("hf-expand: error: ") and err.count("\n") == 1, err
    assert_nothing_written(tmp_path)


def test_minilm_add_tokens(capsys, tmp_path):
    """all-MiniLM-L6-v2: new tokens encode to single ids >= 30522, hidden states on old-token inputs within 1e-5."""
    from transformers import AutoModel, AutoTokenizer

    src, out = minilm_path(), tmp_path / "minilm-tokens"
    code, stdout, err = run_cli(capsys, "grow", src, "--out", out, "--add-tokens", "hfexpandium,growthformer,the",
                                "--probe-text", "A man is playing a guitar.", "-q")
    assert code == 0, err
    assert "already in the vocabulary, not added: ['the']" in stdout
    old_tok, tok = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    for t in ("hfexpandium", "growthformer"):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] >= old_tok.vocab_size == 30522
    base, grown = AutoModel.from_pretrained(src).eval(), AutoModel.from_pretrained(out).eval()
    assert grown.config.vocab_size == 30524
    texts = ["The weather is lovely today.", "He drove to the stadium.", "A cat sleeps on the warm mat"]
    enc = old_tok(texts, return_tensors="pt", padding=True)
    assert torch.equal(enc["input_ids"], tok(texts, return_tensors="pt", padding=True)["input_ids"])
    with torch.no_grad():
        a, b = base(**enc).last_hidden_state, grown(**enc).last_hidden_state
    mask = enc["attention_mask"].bool()
    assert (a - b).abs()[mask].max() <= 1e-5
    # A new token's row starts at the mean of its old pieces.
    pieces = old_tok("hfexpandium", add_special_tokens=False)["input_ids"]
    emb = grown.get_input_embeddings().weight
    assert torch.allclose(emb[tok.convert_tokens_to_ids("hfexpandium")], emb[pieces].mean(0), atol=1e-6)


def _grow(model, op, **kw):
    grown, report = grow_model(model, [op], **kw)
    probes = make_probes(model.config, seed=5)
    return grown, report, max_abs_diff(outputs(model, probes), outputs(grown, probes), probes)


def test_add_heads_fixed_kv_regroups_old_heads():
    model = tiny_model("mistral")  # 4 query heads over 2 kv heads
    grown, report, diff = _grow(model, AddHeads(2, kv="fixed"))
    assert diff <= 1e-5
    assert (grown.config.num_attention_heads, grown.config.num_key_value_heads) == (6, 2)
    q0 = model.model.layers[0].self_attn.q_proj.weight.view(4, 16, -1)
    q1 = grown.model.layers[0].self_attn.q_proj.weight.view(6, 16, -1)
    # Group 0 was heads 0,1 and is now 0,1,(new 2); group 1 was 2,3 and is now 3,4,(new 5).
    assert torch.equal(q1[[0, 1, 3, 4]], q0) and not torch.equal(q1[2], q0[0])


def test_add_heads_mqa():
    config = tiny_config("llama")
    config.num_key_value_heads = 1
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert AddHeads(1).valid_counts(config)[:2] == [4, 12]  # group size 4, hidden 64 must stay divisible
    grown, _, diff = _grow(model, AddHeads(4))
    assert diff <= 1e-5 and grown.config.num_key_value_heads == 2


def test_widen_hidden_deep_stack_and_factor_three():
    """Deep stacks accumulate rounding: 12 layers x3 within 1e-4 (the stated tolerance for deep stacks)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_hidden_layers, config.tie_word_embeddings = 12, True
    config.layer_types = None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    grown, report, diff = _grow(model, WidenHidden(3))
    assert diff <= 1e-4, diff
    assert grown.config.hidden_size == 192 and grown.config.tie_word_embeddings
    assert grown.lm_head.weight.data_ptr() == grown.model.embed_tokens.weight.data_ptr()
    assert any("kept tied" in n for n in report.operations[0].notes)


def test_widen_hidden_gemma_factor_three():
    grown, _, diff = _grow(tiny_model("gemma2"), WidenHidden(3))
    assert diff <= 1e-5, diff


def test_widen_hidden_unties_when_no_norm_precedes_the_head():
    model = tiny_model("gpt2")
    layout = describe(model.config, type(model))
    layout = dataclasses.replace(layout, family=dataclasses.replace(layout.family, head_norms=()))
    plan = WidenHidden(2).plan(model.config, layout)
    assert plan.new_config.tie_word_embeddings is False and any("untied" in n for n in plan.notes)
    grown = _build(type(model), plan.new_config, dict(execute(plan, model.state_dict().__getitem__, 0)))
    probes = make_probes(model.config, seed=5)
    assert max_abs_diff(outputs(model, probes), outputs(grown, probes), probes) <= 1e-5
    assert grown.lm_head.weight.data_ptr() != grown.transformer.wte.weight.data_ptr()


def test_widen_hidden_without_noise_gives_exact_replicas():
    model = tiny_model("llama")
    grown, _, diff = _grow(model, WidenHidden(2, noise=False))
    w = grown.model.layers[0].self_attn.q_proj.weight
    assert diff <= 1e-5 and torch.equal(w[:, :64], w[:, 64:])


@pytest.mark.parametrize("mode", ["pieces", "mean"])
def test_new_token_probability_mass(mode):
    """``mean`` output rows bound each new token's probability by 1/V of the old mass (Jensen)."""
    model = tiny_model("llama")
    grown, report, diff = _grow(model, AddTokens(NEW_TOKENS, tokenizer=tiny_tokenizer(), output_init=mode))
    assert diff <= 1e-5
    mass = report.operations[0].measures["new_probability_mass"]
    assert 0 < mass < 1
    if mode == "mean":
        assert mass <= len(NEW_TOKENS) / model.config.vocab_size


def test_add_tokens_reports_duplicates_and_dedupes():
    op = AddTokens(("zq", "the", "zq"), tokenizer=tiny_tokenizer())
    assert op.tokens == ("zq", "the")
    plan = op.plan(tiny_config("llama"), describe(tiny_config("llama")))
    assert plan.params["tokens"] == ["zq"] and plan.params["already_present"] == ["the"]
    assert plan.new_config.vocab_size == 100


def test_add_labels_regression_head_refused():
    from matrix import tiny_classifier

    model = tiny_classifier("bert", num_labels=1)
    model.config.problem_type = "regression"
    with pytest.raises(HfExpandError, match="regression"):
        grow_model(model, [AddLabels(("x",))])


def test_add_labels_token_classification():
    from transformers import AutoModelForTokenClassification

    config = tiny_config("roberta")
    config.num_labels = 3
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(config).eval()
    grown, report, diff = _grow(model, AddLabels(("B-NEW", "I-NEW")))
    assert diff <= 1e-5 and grown.config.num_labels == 5
    assert report.operations[0].measures["predictions_changed"] == 0


# Found by review: padded vocabularies, label counts equal to the probe length, records through
# regrouped heads, string label keys, multi-label heads, uncased tokenizers, OPT's projected head.

def test_add_tokens_on_a_padded_vocabulary():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]"] + [f"w{i}" for i in range(86)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    assert len(tok) == 90  # the model has 99 rows: 9 unused
    model = tiny_model("llama")
    grown, report = grow_model(model, [AddTokens(("newword", "other"), tokenizer=tok)])
    assert grown.config.vocab_size == 99 and report.excluded_outputs == [(90, 92)]
    assert report.max_abs_diff <= 1e-5
    assert any("padded" in n for n in report.operations[0].notes)
    probes = make_probes(model.config, seed=5, vocab_limit=90)
    assert max_abs_diff(outputs(model, probes), outputs(grown, probes), probes, [(90, 92)]) <= 1e-5


def test_tokenizer_longer_than_the_embedding_is_refused():
    config = tiny_config("llama")
    config.vocab_size = 95
    with pytest.raises(HfExpandError, match="does not belong to this model"):
        AddTokens(("zq",), tokenizer=tiny_tokenizer()).plan(config, describe(config))


def test_labels_as_many_as_probe_positions():
    from matrix import tiny_classifier

    model = tiny_classifier("bert", num_labels=10)
    grown, report = grow_model(model, [AddLabels(("a", "b"))])  # 12 labels = the probe length
    assert grown.config.num_labels == 12 and report.max_abs_diff <= 1e-5
    assert report.operations[0].measures["positions"] == 3  # one prediction per sequence, not per token


def test_string_label_keys_keep_their_names():
    from matrix import tiny_classifier

    model = tiny_classifier("bert")
    model.config.id2label = {"0": "neg", "1": "neu", "2": "pos"}
    grown, _ = grow_model(model, [AddLabels(("mixed",))])
    assert [grown.config.id2label[i] for i in range(4)] == ["neg", "neu", "pos", "mixed"]
    with pytest.raises(HfExpandError, match="already exist"):
        grow_model(tiny_classifier("bert"), [AddLabels(("LABEL_0",))])


def test_multi_label_head_refused():
    from matrix import tiny_classifier

    model = tiny_classifier("bert")
    model.config.problem_type = "multi_label_classification"
    with pytest.raises(HfExpandError, match="multi-label"):
        grow_model(model, [AddLabels(("x",))])


def test_uncased_tokenizer_knows_capitalised_words():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    assert AddTokens(("Hello", "hfexpandium"), tokenizer=tok).split() == (["hfexpandium"], ["Hello"])


def test_record_follows_regrouped_heads():
    """widen_hidden then add_heads(kv=fixed): old heads move; the record must follow them."""
    model = tiny_model("mistral")  # 4 q heads / 2 kv heads
    hd = model.config.head_dim
    grown, report = grow_model(model, [WidenHidden(2, noise=False), AddHeads(4, kv="fixed")])
    assert grown.config.num_attention_heads == 12 and report.max_abs_diff <= 1e-5
    rows = torch.zeros(12 * hd, dtype=torch.bool)
    for s in report.new_slices["model.layers.0.self_attn.q_proj.weight"]:
        if s["axis"] == 0:
            rows[s["start"]:s["stop"]] = True
    new_heads = rows.view(12, hd).all(1)
    assert (rows.view(12, hd).any(1) == new_heads).all()  # whole heads only
    # Old heads sit at 0,1 (group 0) and 3,4 (group 1); all 8 others are replicas or new.
    assert new_heads.tolist() == [h not in (0, 1, 3, 4) for h in range(12)]
    w0 = model.model.layers[0].self_attn.q_proj.weight.view(4, hd, -1)
    w1 = grown.model.layers[0].self_attn.q_proj.weight.view(12, hd, -1)[:, :, :64]
    assert torch.equal(w1[[0, 1, 3, 4]] * 2, w0)  # the read side was halved by the hidden replication


@pytest.mark.parametrize("pre_norm", [True, False])
def test_widen_hidden_opt_with_projected_head(pre_norm):
    from transformers import AutoModelForCausalLM

    config = tiny_config("opt")
    config.word_embed_proj_dim, config.do_layer_norm_before = 32, pre_norm
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    grown, report, diff = _grow(model, WidenHidden(2))
    assert diff <= 1e-5 and grown.config.tie_word_embeddings
    assert grown.lm_head.weight.data_ptr() == grown.model.decoder.embed_tokens.weight.data_ptr()
    assert not any("untied" in n for n in report.operations[0].notes)
