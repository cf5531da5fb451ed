"""Training: policies (new keeps every old value bit-identical, all moves everything, lora merges
exactly), resume, Trainer integration, offline metrics, 2-process DDP, classification on MiniLM, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_expand import AddLayers, WidenFFN, grow_checkpoint
from hf_expand.errors import HfExpandError
from hf_expand.train import TrainArgs, train
from hf_expand.train.policy import slice_mask
from conftest import finish_launch, free_port
from matrix import tiny_model, tiny_tokenizer

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for the whole module


def run(model, out, **kw) -> dict:
    args = dict(model=str(model), data=str(SENTENCES), out=str(out), max_steps=30, lr=1e-2, weight_decay=0.1,
                batch_size=8, log_every=0)
    args.update(kw)
    return train(TrainArgs(**args), progress=False)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def new_masks(grown: Path, tensors: dict) -> dict[str, torch.Tensor]:
    record = json.loads((grown / "hf_expand_growth.json").read_text())["new_slices"]
    out = {}
    for name, t in tensors.items():
        if name in record:
            m = slice_mask(t.shape, record[name])
            out[name] = torch.ones_like(t, dtype=torch.bool) if m is None else m
        else:
            out[name] = torch.zeros_like(t, dtype=torch.bool)
    return out


def perplexity(model_folder: Path) -> float:
    from hf_expand.train.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(str(model_folder), str(SENTENCES), batch_size=16)["perplexity"]


def test_new_policy_keeps_every_old_value_and_learns(grown_llama, tmp_path):
    """30 steps of AdamW (weight decay 0.1): old entries bit-identical tensor by tensor, every new slice moved,
    loss on the training text lower than the grown model's."""
    section = run(grown_llama, tmp_path / "new")
    before, after = weights(grown_llama), weights(tmp_path / "new")
    masks = new_masks(grown_llama, before)
    assert masks and set(before) == set(after)
    partial = [n for n, m in masks.items() if m.any() and not m.all()]
    assert partial, "the fixture must have partly-new tensors"
    for name, t in before.items():
        m = masks[name]
        assert torch.equal(t[~m], after[name][~m]), f"old values of {name} changed"
        if m.any():
            assert not torch.equal(t[m], after[name][m]), f"new slice of {name} did not train"
    assert perplexity(tmp_path / "new") < perplexity(grown_llama)
    assert section["policy"] == "new" and section["steps"] == 30
    m = section["metrics"]  # base == grown (the built-in growth check), trained better
    assert m["base"]["perplexity"] == pytest.approx(m["grown"]["perplexity"], rel=1e-4)
    assert m["trained"]["perplexity"] < m["grown"]["perplexity"]
    record = json.loads((tmp_path / "new" / "hf_expand_growth.json").read_text())
    assert record["training"]["policy"] == "new" and record["new_slices"]  # lineage kept, training added


@pytest.mark.parametrize("policy", ["new", "lora"])
def test_gradient_checkpointing_gives_the_same_weights(policy, grown_llama, tmp_path):
    """Recomputing activations in backward changes memory, not maths: the same final weights within 1e-5 (under
    ``new`` the frozen embeddings feed the checkpointed blocks, and the new slices must still get gradient)."""
    plain = run(grown_llama, tmp_path / "plain", trainable=policy, max_steps=8)
    checkpointed = run(grown_llama, tmp_path / "ckpt", trainable=policy, max_steps=8, gradient_checkpointing=True)
    assert plain["steps"] == checkpointed["steps"] == 8
    assert checkpointed["hyperparameters"]["gradient_checkpointing"] is True
    a, b, before = weights(tmp_path / "plain"), weights(tmp_path / "ckpt"), weights(grown_llama)
    assert a.keys() == b.keys() and a
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= 1e-5, worst
    moved = [k for k in a if not torch.equal(b[k], before[k])]
    assert moved  # training happened with checkpointing on
    if policy == "new":
        masks = new_masks(grown_llama, before)
        for name, t in before.items():
            assert torch.equal(t[~masks[name]], b[name][~masks[name]]), name
            if masks[name].any():
                assert not torch.equal(t[masks[name]], b[name][masks[name]]), f"new slice of {name} did not train"


def test_all_policy_moves_every_tensor(grown_llama, tmp_path):
    run(grown_llama, tmp_path / "all", trainable="all", max_steps=5)
    before, after = weights(grown_llama), weights(tmp_path / "all")
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert before and unchanged == []


def test_lora_trains_adapter_and_slices_and_merges_exactly(grown_llama, tmp_path):
    """LoRA adapter non-trivial, grown slices moved, merged model equal to the unmerged within 1e-5 and
    loading in stock transformers."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    section = run(grown_llama, out, trainable="lora", max_steps=15, save_adapter=True)
    assert section["lora_merge_max_abs_diff"] is not None and section["lora_merge_max_abs_diff"] <= 1e-5
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora_b = [t for n, t in adapter.items() if "lora_B" in n]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # B starts at zero: non-zero = adapter changes outputs
    before, after = weights(grown_llama), weights(out)
    masks = new_masks(grown_llama, before)
    moved = [n for n, m in masks.items() if m.any() and not torch.equal(before[n][m], after[n][m])]
    assert len(moved) == sum(1 for m in masks.values() if m.any())
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_new_policy_without_record_suggests_all(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "plain")
    tiny_tokenizer().save_pretrained(tmp_path / "plain")
    with pytest.raises(HfExpandError, match="use --trainable all"):
        run(tmp_path / "plain", tmp_path / "out", max_steps=1)
    assert not (tmp_path / "out").exists()


def test_resume_ends_where_an_uninterrupted_run_ends(grown_llama, tmp_path):
    """A run whose progress after the step-4 checkpoint was lost (as by a kill) and is resumed ends with the
    weights of an uninterrupted run with the same seed."""
    import shutil

    straight = run(grown_llama, tmp_path / "straight", max_steps=12, save_every=4)
    run(grown_llama, tmp_path / "killed", max_steps=12, save_every=4)
    killed = tmp_path / "killed"
    for f in killed.iterdir():  # keep only what existed right after the step-4 checkpoint
        if f.name not in ("checkpoints", "train_args.json"):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    for ckpt in ("step-8", "step-12"):
        shutil.rmtree(killed / "checkpoints" / ckpt)
    section = train(TrainArgs(model=str(grown_llama), data=str(SENTENCES), out=str(killed), max_steps=12, lr=1e-2,
                              weight_decay=0.1, batch_size=8, log_every=0, save_every=4), resume=True, progress=False)
    assert section["steps"] == 12
    # the resumed run reports the whole run's curve, not just the resumed steps
    assert len(section["loss_history"]) == 12 and section["first_loss"] == straight["first_loss"]
    a, b = weights(tmp_path / "straight"), weights(killed)
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6


def test_killed_run_resumes_to_the_uninterrupted_result(grown_llama, tmp_path, one_thread):
    """A real kill: SIGKILL the CLI process once a checkpoint exists, then --resume; the final weights equal
    those of an uninterrupted run with the same seed (fp32 noise). The resume and the straight run are the same
    code in this process (no second ~6 s of imports each)."""
    import signal
    import time

    settings = dict(max_steps=60, save_every=5, lr=1e-2, weight_decay=0.1, batch_size=8, log_every=0)
    common = ["--data", str(SENTENCES)] + [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    common += ["-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hf_expand", "train", str(grown_llama), "--out", str(killed), *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-10").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model.safetensors").exists()
    args = dict(model=str(grown_llama), data=str(SENTENCES), **settings)
    train(TrainArgs(out=str(killed), **args), resume=True, progress=False)
    train(TrainArgs(out=str(tmp_path / "straight"), **args), progress=False)
    a, b = weights(tmp_path / "straight"), weights(killed)
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6


def test_packing_builds_full_blocks(grown_llama, tmp_path):
    section = run(grown_llama, tmp_path / "packed", max_steps=3, packing=True, max_length=32)
    assert section["steps"] == 3


def test_resume_with_other_settings_is_refused(grown_llama, tmp_path):
    run(grown_llama, tmp_path / "r", max_steps=2, save_every=1)
    with pytest.raises(HfExpandError, match="differs from the one in .* in lr"):
        train(TrainArgs(model=str(grown_llama), data=str(SENTENCES), out=str(tmp_path / "r"), max_steps=2, lr=5e-3,
                        weight_decay=0.1, batch_size=8, log_every=0, save_every=1), resume=True, progress=False)


def test_trainer_integration_keeps_old_values(grown_llama, tmp_path):
    """transformers.Trainer with hf_expand's optimizer under `new`: old values bit-identical, new ones moved."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_expand.train.trainer import policy_optimizer

    tok = AutoTokenizer.from_pretrained(grown_llama)
    model = AutoModelForCausalLM.from_pretrained(grown_llama)
    ds = Dataset.from_dict({"text": SENTENCES.read_text().splitlines()}).map(
        lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"])
    optimizer = policy_optimizer(model, grown_llama, "new", lr=1e-2, weight_decay=0.1)
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=10, per_device_train_batch_size=8, use_cpu=True,
                             report_to=[], save_strategy="no", logging_strategy="no", seed=0)
    Trainer(model=model, args=args, train_dataset=ds, optimizers=(optimizer, None), processing_class=tok,
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False)).train()
    before = weights(grown_llama)
    after = {n: p.detach() for n, p in model.state_dict().items()}
    masks = new_masks(grown_llama, before)
    for name, t in before.items():
        assert torch.equal(t[~masks[name]], after[name][~masks[name]]), name
    assert any(not torch.equal(t[masks[n]], after[n][masks[n]]) for n, t in before.items() if masks[n].any())


def test_growth_aware_trainer_builds_its_own_optimizer(grown_llama, tmp_path):
    """``prepare_for_trainer`` then a stock Trainer that builds its own AdamW (as it must under FSDP): old values
    bit-identical, new ones moved, the optimizer holds state for new values only, save_model writes a plain
    checkpoint that stock transformers loads."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_expand.train.trainer import prepare_for_trainer

    tok = AutoTokenizer.from_pretrained(grown_llama)
    model = AutoModelForCausalLM.from_pretrained(grown_llama)
    ds = Dataset.from_dict({"text": SENTENCES.read_text().splitlines()}).map(
        lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"])
    plan = prepare_for_trainer(model, grown_llama, "new")
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=10, per_device_train_batch_size=8, use_cpu=True,
                             learning_rate=1e-2, weight_decay=0.1, report_to=[], save_strategy="no",
                             logging_strategy="no", seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    state = sum(v.numel() for st in trainer.optimizer.state.values() for v in st.values() if v.dim() > 0)
    assert state == 2 * plan.trainable_values(model)  # Adam's two moments, for the new values only
    trainer.save_model(str(tmp_path / "saved"))
    before, after = weights(grown_llama), weights(tmp_path / "saved")
    assert before.keys() == after.keys()  # plain names: no split parts in the checkpoint
    masks = new_masks(grown_llama, before)
    for name, t in before.items():
        assert torch.equal(t[~masks[name]], after[name][~masks[name]]), name
        if masks[name].any():
            assert not torch.equal(t[masks[name]], after[name][masks[name]]), f"new slice of {name} did not train"
    AutoModelForCausalLM.from_pretrained(tmp_path / "saved")


def test_offline_metrics_match_hand_computed_values():
    import math

    from hf_expand.train.metrics import load_metric

    acc, f1, ppl = load_metric("accuracy"), load_metric("f1"), load_metric("perplexity")
    assert acc.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0])["accuracy"] == 0.5
    # binary: tp=2 fp=1 fn=1 -> 2*2/(4+1+1)
    assert f1.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0])["f1"] == pytest.approx(4 / 6)
    # macro over 0,1,2: f1(0)=0, f1(1)=2/3, f1(2)=1
    assert f1.compute(predictions=[1, 0, 2], references=[1, 1, 2], average="macro")["f1"] == pytest.approx(5 / 9)
    assert ppl.compute(predictions=[2.0, 4.0], references=[2, 4])["perplexity"] == pytest.approx(math.exp(1.0))
    with pytest.raises(HfExpandError, match="unknown metric"):
        load_metric("bleu")


@pytest.mark.xdist_group("accelerate-launch")  # one 2-process launch at a time (with test_fsdp.py)
def test_two_process_ddp_on_cpu(grown_llama, tmp_path):
    """ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2: world size 2, identical ranks,
    one saved model, old values still bit-identical."""
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(port),
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_expand", "train",
           str(grown_llama), "--data", str(SENTENCES), "--out", str(out), "--max-steps", "6", "--batch-size", "4",
           "--lr", "1e-2", "--weight-decay", "0.1", "-q"]
    # its own session: a timeout kills the launcher and both ranks (a left-behind rank would hold its port)
    proc = finish_launch(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          start_new_session=True))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    section = json.loads((out / "hf_expand_growth.json").read_text())["training"]
    assert section["processes"] == 2 and section["ranks_identical"] and len(section["rank_checksums"]) == 2
    assert len(list(out.glob("*.safetensors"))) == 1
    before, after = weights(grown_llama), weights(out)
    masks = new_masks(grown_llama, before)
    assert all(torch.equal(t[~masks[n]], after[n][~masks[n]]) for n, t in before.items())


def _wordnet_examples(pos: str, n: int) -> list[str]:
    import re

    found = []
    for line in open(f"/usr/share/wordnet/data.{pos}", encoding="latin-1"):
        if not line.startswith("  "):
            found += [s for s in re.findall(r'"([^"]+)"', line.split("|", 1)[-1]) if len(s.split()) >= 5]
        if len(found) >= n:
            break
    return found[:n]


def test_classification_on_grown_minilm_beats_untrained_head(tmp_path):
    """all-MiniLM-L6-v2 grown (FFN x1.5, +1 layer) + a new 2-label head, trained with `new` on real
    sentences (WordNet usage examples: verb vs adjective senses): held-out accuracy above the untrained head's."""
    import csv

    from conftest import minilm_path

    grown = tmp_path / "grown"
    grow_checkpoint(str(minilm_path()), grown, [WidenFFN(factor=1.5), AddLayers(count=1)], progress=False)
    verbs, adjs = _wordnet_examples("verb", 160), _wordnet_examples("adj", 160)
    rows = [(t, 0) for t in verbs] + [(t, 1) for t in adjs]
    import random

    random.Random(0).shuffle(rows)
    for name, part in (("train.csv", rows[:240]), ("test.csv", rows[240:])):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(part)
    section = train(TrainArgs(model=str(grown), data=str(tmp_path / "train.csv"), eval_data=str(tmp_path / "test.csv"),
                              out=str(tmp_path / "cls"), label_column="label", max_steps=40, lr=1e-4, new_lr=1e-3,
                              batch_size=16, log_every=0), progress=False)
    m = section["metrics"]
    assert "task head" in m["base_skipped"]
    assert m["trained"]["accuracy"] > m["grown"]["accuracy"] + 0.1, m


def test_lora_on_layers_only_growth(tmp_path, tiny_checkpoints):
    """LLaMA-Pro-style growth (new layers only): LoRA goes on the old layers' linears, new layers train fully."""
    grow_checkpoint(str(tiny_checkpoints("llama")), tmp_path / "grown", [AddLayers(count=1)], progress=False)
    section = run(tmp_path / "grown", tmp_path / "lora", trainable="lora", max_steps=3)
    assert section["lora_merge_max_abs_diff"] <= 1e-5


def test_eval_every_keeps_the_metrics_section(grown_llama, tmp_path):
    """Periodic evaluation must not clobber the base/grown/trained metrics (regression)."""
    section = run(grown_llama, tmp_path / "e", max_steps=4, eval_ratio=0.2, eval_every=2)
    assert set(section["metrics"]) >= {"base", "grown", "trained"} and len(section["eval_history"]) == 2
    assert len(section["loss_history"]) == 4
