"""Benchmark: steps/s and peak memory of `--trainable new`, `all`, `lora` and a plain transformers.Trainer
full fine-tune, on the same grown model and data, each in its own process (so peak RSS is its own).

    python benchmarks/bench_train.py            # llama, hidden 512, 8 layers (25M) grown FFN x1.5 + 2 layers
    python benchmarks/bench_train.py --steps 10 --hidden 256

Goal (issue 5): `new` needs clearly less memory than `all`, and is no slower per step than Trainer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def build(folder: Path, hidden: int, layers: int, growth: str) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_expand import AddLayers, WidenFFN, grow_checkpoint
    from matrix import tiny_tokenizer

    config = LlamaConfig(vocab_size=99, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    ops = [AddLayers(count=2)] if growth == "layers" else [WidenFFN(factor=1.5), AddLayers(count=2)]
    grow_checkpoint(str(folder / "base"), folder / "grown", ops, progress=False)
    lines = [s for s in (ROOT / "tests" / "data" / "sentences.txt").read_text().splitlines() if s]
    (folder / "data.txt").write_text("\n".join(lines * 20) + "\n")
    return folder / "grown"


def child(mode: str, grown: str, data: str, out: str, steps: int) -> None:
    """One measured run; prints a JSON line."""
    import torch

    torch.manual_seed(0)
    if mode == "trainer":
        from datasets import Dataset
        from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                                  TrainingArguments)

        tok = AutoTokenizer.from_pretrained(grown)
        model = AutoModelForCausalLM.from_pretrained(grown)
        texts = [t for t in Path(data).read_text().splitlines() if t]
        ds = Dataset.from_dict({"text": texts}).map(lambda b: tok(b["text"], truncation=True, max_length=64),
                                                   batched=True, remove_columns=["text"])
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=8, use_cpu=True,
                                 learning_rate=1e-4, weight_decay=0.01, report_to=[], save_strategy="no",
                                 logging_strategy="no", disable_tqdm=True, seed=0)
        from transformers import TrainerCallback

        marks = {}

        class Clock(TrainerCallback):  # time the loop itself, as hf_expand's steps_per_second does
            def on_train_begin(self, *a, **k):
                marks["start"] = time.perf_counter()

            def on_train_end(self, *a, **k):
                marks["end"] = time.perf_counter()

        trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                          data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=[Clock()])
        trainer.train()
        rate = steps / (marks["end"] - marks["start"])
        from hf_expand.train.loop import training_state_bytes

        state = training_state_bytes(model, trainer.optimizer) / 2**20
    else:
        from hf_expand.train import TrainArgs, train

        section = train(TrainArgs(model=grown, data=data, out=out, trainable=mode, max_steps=steps, lr=1e-4,
                                  batch_size=8, max_length=64, log_every=0), progress=False)
        rate, state = section["steps_per_second"], section["training_state_mib"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"mode": mode, "steps_per_s": rate, "peak_rss_mib": peak, "state_mib": state}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--growth", choices=["layers", "ffn+layers"], default="layers",
                    help="layers: +2 identity layers (LLaMA Pro); ffn+layers: also FFN x1.5 (partly-new tensors)")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, grown, data, out, steps = args.child
        child(mode, grown, data, out, int(steps))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    grown = build(tmp, args.hidden, args.layers, args.growth)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(grown)
    print(f"grown llama ({args.growth}): hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, FFN {cfg.intermediate_size}; "
          f"{args.steps} steps, batch 8, seq <= 64, 2 CPU cores")
    results = {}
    for mode in ("trainer", "all", "new", "lora"):
        proc = subprocess.run([sys.executable, __file__, "--child", mode, str(grown), str(tmp / "data.txt"),
                               str(tmp / f"out-{mode}"), str(args.steps)], capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode or not line:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-2000:]}")
        results[mode] = json.loads(line[-1])
    base = results["trainer"]
    a = results["all"]
    print(f"{'run':10s} {'steps/s':>8s} {'vs Trainer':>10s} {'grads+optimizer MiB':>20s} {'vs all':>7s} "
          f"{'peak RSS MiB':>13s} {'vs all':>7s}")
    for mode, r in results.items():
        print(f"{mode:10s} {r['steps_per_s']:8.2f} {r['steps_per_s'] / base['steps_per_s']:9.2f}x "
              f"{r['state_mib']:20,.0f} {r['state_mib'] / a['state_mib']:6.2f}x "
              f"{r['peak_rss_mib']:13,.0f} {r['peak_rss_mib'] / a['peak_rss_mib']:6.2f}x")


if __name__ == "__main__":
    main()
