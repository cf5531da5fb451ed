"""Dense -> mixture-of-experts upcycling (issue 19): through the CLI, reloaded in stock transformers, the logits of
the dense base within 1e-5 and greedy cached generation identical; Drop-Upcycling's drift recorded; training
routes to the experts; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import load_stock
from hf_expand.cli import main
from matrix import tiny_config, tiny_model, tiny_tokenizer

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
TOL = 1e-5

# (dense family, extra flags, the stock class the result must load as). E in {4, 8} and top-k in {1, 2} are each
# covered on every family; "every other layer" where the MoE family can leave layers dense.
CELLS = {
    "llama-mixtral-e4-k1": ("llama", ["--upcycle-experts", "4", "--top-k", "1"], "MixtralForCausalLM"),
    "llama-mixtral-e4-k2": ("llama", ["--upcycle-experts", "4", "--top-k", "2"], "MixtralForCausalLM"),
    "llama-mixtral-e8-k1": ("llama", ["--upcycle-experts", "8", "--top-k", "1"], "MixtralForCausalLM"),
    "llama-mixtral-e8-k2": ("llama", ["--upcycle-experts", "8", "--top-k", "2"], "MixtralForCausalLM"),
    "mistral-mixtral-e4-k2": ("mistral", ["--upcycle-experts", "4"], "MixtralForCausalLM"),
    "qwen2-renormalise-e4-k2": ("qwen2", ["--upcycle-experts", "4"], "Qwen2MoeForCausalLM"),
    "qwen2-renormalise-e8-k1-every-other": ("qwen2", ["--upcycle-experts", "8", "--top-k", "1", "--moe-layers",
                                                      "every-other"], "Qwen2MoeForCausalLM"),
    "qwen2-shared-e4-k1": ("qwen2", ["--upcycle-experts", "4", "--top-k", "1", "--moe-route", "shared"],
                           "Qwen2MoeForCausalLM"),
    "qwen2-shared-e8-k2-every-other": ("qwen2", ["--upcycle-experts", "8", "--moe-route", "shared", "--moe-layers",
                                                 "every-other"], "Qwen2MoeForCausalLM"),
    "qwen3-qwen3_moe-e8-k2": ("qwen3", ["--upcycle-experts", "8"], "Qwen3MoeForCausalLM"),
    "qwen3-qwen3_moe-e4-k1-every-other": ("qwen3", ["--upcycle-experts", "4", "--top-k", "1", "--moe-layers",
                                                    "every-other"], "Qwen3MoeForCausalLM"),
    "llama-deepseek_v3-e8-k2": ("llama", ["--upcycle-experts", "8", "--moe-family", "deepseek_v3"],
                                "Glm4MoeForCausalLM"),
    "llama-deepseek_v3-e4-k1-last-layers": ("llama", ["--upcycle-experts", "4", "--top-k", "1", "--moe-family",
                                                      "deepseek_v3", "--moe-layers", "1-2"], "Glm4MoeForCausalLM"),
}


def _dense(family: str):
    """A tiny dense model with random norms (``matrix.tiny_model``); Qwen3 without its mixed sliding-window layers
    (qwen3_moe has one window for all layers: the mixed case is a refusal, tested below)."""
    config = tiny_config(family)
    if family == "qwen3":
        config.use_sliding_window = False
        config.layer_types = ["full_attention"] * config.num_hidden_layers
    return tiny_model(family, config=config)


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    made = {}

    def get(family: str) -> Path:
        if family not in made:
            _dense(family).save_pretrained(root / family)
            tiny_tokenizer().save_pretrained(root / family)
            made[family] = root / family
        return made[family]

    return get


def test_cli_choices_are_the_families():
    from hf_expand.cli import build_parser
    from hf_expand.ops.upcycle import FAMILIES

    grow = build_parser()._subparsers._group_actions[0].choices["grow"]
    action = next(a for a in grow._actions if "--moe-family" in a.option_strings)
    assert set(action.choices) == set(FAMILIES)


def test_cells_are_non_empty():
    assert len(CELLS) == 13
    flags = [args for _, args, _ in CELLS.values()]
    assert {a[a.index("--upcycle-experts") + 1] for a in flags} == {"4", "8"}
    assert {a[a.index("--top-k") + 1] if "--top-k" in a else "2" for a in flags} == {"1", "2"}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_upcycle_is_exact(cell, dense, tmp_path, capsys):
    family, args, cls = CELLS[cell]
    torch.set_num_threads(1)
    out = tmp_path / "moe"
    assert main(["grow", str(dense(family)), "--out", str(out), *args, "-q"]) == 0, capsys.readouterr().err
    base, grown = load_stock(dense(family)), load_stock(out)
    assert type(grown).__name__ == cls
    ids = torch.randint(3, 90, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (base(ids).logits - grown(ids).logits).abs().max().item()
    assert diff <= TOL, diff
    prompt = ids[:1, :6]
    assert torch.equal(base.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True),
                       grown.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True))
    record = json.loads((out / "hf_expand_growth.json").read_text())
    op = record["operations"][0]
    assert op["op"] == "upcycle" and record["verification"]["function_preserving"] is True
    assert record["verification"]["reloaded_max_abs_diff"] <= TOL
    experts = int(args[args.index("--upcycle-experts") + 1])
    assert op["config_updates"]["num_experts_per_tok"] == (int(args[args.index("--top-k") + 1]) if "--top-k" in args else 2)
    assert any(k.endswith("mlp.gate.weight") and v == [{"axis": None}] for k, v in record["new_slices"].items())
    config = json.loads((out / "config.json").read_text())
    assert experts in (config.get("num_local_experts"), config.get("num_experts"), config.get("n_routed_experts"))


def test_verify_and_dry_run_take_an_upcycled_model(dense, tmp_path, capsys):
    out = tmp_path / "moe"
    capsys.readouterr()
    assert main(["grow", str(dense("llama")), "--out", str(out), "--upcycle-experts", "4", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "upcycle: llama -> mixtral" in printed and "4 experts on a new axis 0" in printed and not out.exists()
    assert main(["grow", str(dense("llama")), "--out", str(out), "--upcycle-experts", "4", "-q"]) == 0
    assert main(["verify", str(dense("llama")), str(out), "-q"]) == 0
    card = (out / "README.md").read_text()
    assert "| upcycle | llama -> mixtral" in card and "AutoModelForCausalLM.from_pretrained" in card


def _experts(folder: Path, layer: int = 0) -> list[torch.Tensor]:
    """Each expert of a Mixtral layer as one flat vector (w1, w2, w3 of the stored checkpoint)."""
    state = load_file(folder / "model.safetensors")
    prefix = f"model.layers.{layer}.block_sparse_moe.experts."
    count = len({k.split(".")[5] for k in state if k.startswith(prefix)})
    return [torch.cat([state[f"{prefix}{e}.{w}.weight"].flatten() for w in ("w1", "w2", "w3")]) for e in range(count)]


def test_drop_upcycling_records_its_drift_and_is_reproducible(dense, tmp_path, capsys):
    args = ["--upcycle-experts", "4", "--upcycle-init", "drop:r=0.5", "-q"]
    for name in ("a", "b"):
        assert main(["grow", str(dense("llama")), "--out", str(tmp_path / name), *args]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "a" / "hf_expand_growth.json").read_text())
    assert record["verification"]["function_preserving"] is False
    drift = record["operations"][0]["max_abs_diff"]
    assert drift > 0 and record["verification"]["recorded_differences"] == [{"op": "upcycle", "max_abs_diff": drift}]
    experts = _experts(tmp_path / "a")
    assert all(not torch.equal(experts[i], experts[j]) for i in range(4) for j in range(i + 1, 4))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert main(["grow", str(dense("llama")), "--out", str(tmp_path / "c"), *args[:-1], "--seed", "1", "-q"]) == 0
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (tmp_path / "a" / "model.safetensors").read_bytes()


def test_training_new_moves_router_and_experts_and_keeps_the_dense_parts(dense, tmp_path, capsys):
    torch.set_num_threads(1)
    moe, trained = tmp_path / "moe", tmp_path / "trained"
    assert main(["grow", str(dense("llama")), "--out", str(moe), "--upcycle-experts", "4", "-q"]) == 0
    assert main(["train", str(moe), "--data", str(SENTENCES), "--out", str(trained), "--max-steps", "30",
                 "--trainable", "new", "--lr", "1e-3", "-q"]) == 0, capsys.readouterr().err
    before, after = load_file(moe / "model.safetensors"), load_file(trained / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    routers = {k for k in before if k.endswith("block_sparse_moe.gate.weight")}
    assert routers and routers <= moved  # the router trains
    new_experts = {k for k in before if ".experts." in k and ".experts.0." not in k}
    assert new_experts and new_experts <= moved
    # old values stay bit-identical: attention, norms, embeddings, head and expert 0 (the dense MLP itself)
    assert moved == routers | new_experts
    experts = _experts(trained)
    assert all(not torch.equal(experts[i], experts[j]) for i in range(4) for j in range(i + 1, 4))  # diverged
    section = json.loads((trained / "hf_expand_growth.json").read_text())["training"]
    assert section["router_aux_loss_coef"] > 0  # the load-balancing loss was on


BAD = {  # dense family, flags, message
    "one_expert": ("llama", ["--upcycle-experts", "1"], "--upcycle-experts must be a whole number >= 2"),
    "top_k_above_experts": ("llama", ["--upcycle-experts", "4", "--top-k", "5"],
                            "--top-k must be a whole number from 1 to the number of experts (4)"),
    "no_counterpart": ("gpt2", ["--upcycle-experts", "4"], "gpt2 has no mixture-of-experts counterpart"),
    "layer_out_of_range": ("qwen2", ["--upcycle-experts", "4", "--moe-layers", "7"],
                           "--moe-layers 7 is out of range: the model has 3 layers"),
    "drop_rate_above_one": ("llama", ["--upcycle-experts", "4", "--upcycle-init", "drop:r=1.5"],
                            "drop:r must be a share in (0, 1]"),
    "drop_rate_zero": ("llama", ["--upcycle-experts", "4", "--upcycle-init", "drop:r=0"],
                       "drop:r must be a share in (0, 1]"),
    "wrong_family": ("llama", ["--upcycle-experts", "4", "--moe-family", "qwen3_moe"],
                     "--moe-family qwen3_moe takes qwen3, not llama"),
    "subset_on_mixtral": ("llama", ["--upcycle-experts", "4", "--moe-layers", "every-other"],
                          "mixtral makes every layer MoE"),
    "olmo2_to_olmoe": ("olmo2", ["--upcycle-experts", "4"], "upcycle olmo2 -> olmoe is refused: OLMo 2 normalises after"),
    "mixed_windows": ("qwen3-sliding", ["--upcycle-experts", "4"], "cannot be written as qwen3_moe"),
    "upcycle_an_moe": ("mixtral", ["--upcycle-experts", "4"], "is a mixture of experts already"),
    "flag_without_upcycle": ("llama", ["--top-k", "2", "--add-layers", "1"], "--top-k applies to --upcycle-experts"),
}


def test_bad_table_is_non_empty():
    assert len(BAD) == 12


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, dense, tiny_checkpoints, tmp_path, capsys):
    family, args, message = BAD[case]
    src = dense(family) if family in ("llama", "qwen2") else tiny_checkpoints(family.split("-")[0])
    capsys.readouterr()
    code = main(["grow", str(src), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_multimodal_wrapper_upcycles_its_text_model(tmp_path):
    """LLaVA whose text model is a Llama: the text model becomes a Mixtral inside the same wrapper (the vision tower
    and projector pass through), exact, and stock AutoModelForImageTextToText loads it."""
    from transformers import AutoModelForImageTextToText

    from hf_expand import Upcycle, grow_checkpoint
    from test_multimodal import tiny

    config = tiny("llava")
    config.architectures = None
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(tmp_path / "llava")
    report = grow_checkpoint(str(tmp_path / "llava"), tmp_path / "moe", [Upcycle(experts=4)])
    assert report.reloaded_max_abs_diff <= TOL
    grown = AutoModelForImageTextToText.from_pretrained(tmp_path / "moe")
    assert type(grown).__name__ == "LlavaForConditionalGeneration"
    assert type(grown.model.language_model).__name__ == "MixtralModel"
    assert json.loads((tmp_path / "moe" / "config.json").read_text())["text_config"]["num_local_experts"] == 4
