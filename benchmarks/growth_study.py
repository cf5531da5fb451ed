"""Does growth pay? Learn a new domain without forgetting the old one, measured (issue 20).

    .venv/bin/python benchmarks/growth_study.py                     # the study: ~20-30 min on 2 cores, offline
    .venv/bin/python benchmarks/growth_study.py --size toy --seeds 1  # a smoke run (seconds)

1. **Old domain**: Python source, the standard library's ``*.py`` files (on every machine with Python).
   **New domain**: English WordNet definitions with their usage examples (``word: gloss``, Debian's WordNet files,
   which ``scripts/setup.sh`` installs). Each is split into train and held-out text by a hash of the file / synset.
2. **Tokenizer**: byte-level (256 byte tokens + 3 specials, no merges), so neither domain is favoured by a
   vocabulary learned on the other, and nothing is downloaded.
3. **Base**: a small Llama pretrained on the old domain with ``hf-expand train --trainable all``; cached under
   ``--cache`` by its settings, so reruns skip it.
4. **Arms**, each trained on the new domain for the same number of steps from that base, with ``hf-expand``
   itself (grow, then train): fine-tune ``all``; ``lora``; LLaMA-Pro (+25% layers, interleaved) ``new``;
   FFN x1.5 ``new``; FFN x1.5 ``all``; FFN x1.5 with a non-exact start (``--init zero:noise=0.01``) ``new``.
5. **Measured** on held-out text of both domains (mean token loss, fp32): new-domain loss (learning), old-domain loss
   (forgetting), trainable parameters, training-state memory and wall time; over ``--seeds`` seeds (mean ± sd).
   Output: ``table.md``, ``results.json``, ``tradeoff.png`` (old-domain loss against new-domain loss, one point
   per arm with error bars) and ``curves.png`` (training loss per step) in ``--out``.

Arms run in ``--workers`` processes (one torch thread each: the numbers do not depend on the number of workers,
and a fixed seed gives the same numbers when rerun).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import sys
import sysconfig
import time
from pathlib import Path

SIZES = {  # model and schedule per size; "gpu" is the larger run for a GPU machine
    "toy": {"hidden": 32, "layers": 4, "heads": 2, "ffn": 88, "pretrain_steps": 4, "steps": 3, "batch": 4,
            "length": 64, "eval_rows": 8, "chars": (60_000, 20_000)},
    "small": {"hidden": 128, "layers": 4, "heads": 4, "ffn": 344, "pretrain_steps": 1500, "steps": 300, "batch": 16,
              "length": 128, "eval_rows": 128, "chars": (3_000_000, 600_000)},
    "gpu": {"hidden": 768, "layers": 12, "heads": 12, "ffn": 2048, "pretrain_steps": 6000, "steps": 1500,
            "batch": 32, "length": 256, "eval_rows": 512, "chars": (30_000_000, 4_000_000)},
}
LR = 1e-3
# arm -> (grow flags or None, trainable policy); the same steps, lr and data for every arm
ARMS = {
    "finetune-all": (None, "all"),
    "lora": (None, "lora"),
    "llama-pro-25%-new": (["--add-layers", "{quarter}", "--placement", "interleave"], "new"),
    "ffn-x1.5-new": (["--widen-ffn", "1.5"], "new"),
    "ffn-x1.5-all": (["--widen-ffn", "1.5"], "all"),
    "ffn-x1.5-noise0.01-new": (["--widen-ffn", "1.5", "--init", "zero:noise=0.01"], "new"),
}


# -- data ---------------------------------------------------------------------------------------------------------

def _split(key: str) -> str:
    """A stable train / held-out split by a hash of the item's name (5% held out)."""
    return "heldout" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 20 == 0 else "train"


def python_texts(limit: int) -> dict[str, list[str]]:
    """The standard library's top-level ``*.py`` files, in name order, until ``limit`` characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, total = {"train": [], "heldout": []}, 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        out[_split(path.name)].append(text)
        total += len(text)
        if total >= limit:
            break
    if not out["heldout"]:  # a small run: hold out the last file read
        out["heldout"].append(out["train"].pop())
    return out


def wordnet_texts(limit: int) -> dict[str, list[str]]:
    """``lemma: definition; "usage example"`` for every synset of Debian's WordNet, until ``limit`` characters."""
    from hf_expand.augment.wordnet import DEBIAN_WORDNET

    out, total = {"train": [], "heldout": []}, 0
    for pos in ("noun", "verb", "adj", "adv"):
        path = DEBIAN_WORDNET / f"data.{pos}"
        if not path.is_file():
            sys.exit(f"WordNet data not found at {path}; run: apt-get install wordnet-base (scripts/setup.sh does)")
        for line in path.open(encoding="latin-1"):
            if line.startswith("  "):
                continue
            fields = line.split(" ")
            lemma = fields[4].replace("_", " ")
            gloss = line.split("|", 1)[-1].strip()
            text = f"{lemma}: {gloss}"
            out[_split(f"{pos}{fields[0]}")].append(text)
            total += len(text)
            if total >= limit:
                return out
    return out


def write_jsonl(rows: list[str], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for text in rows:
            f.write(json.dumps({"text": text}) + "\n")
    return path


# -- tokenizer and base -----------------------------------------------------------------------------------------------

def byte_tokenizer():
    """A byte-level tokenizer: every byte one token (no merges), plus <pad>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def run_cli(args: list[str]) -> None:
    from hf_expand.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise RuntimeError(f"hf-expand {' '.join(map(str, args[:2]))} failed with exit code {code}")


def base_model(size: dict, data: dict, cache: Path) -> Path:
    """The pretrained base (cached by its settings): a fresh Llama trained on the old domain."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    key = hashlib.sha256(json.dumps({**size, "chars": list(size["chars"]), "v": 1}, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / f"base-{key}"
    if (folder / "trained" / "config.json").is_file():
        print(f"base: cached at {folder}")
        return folder / "trained"
    start = time.perf_counter()
    tok = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=size["hidden"], intermediate_size=size["ffn"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"], max_position_embeddings=2 * size["length"],
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    init = folder / "init"
    LlamaForCausalLM(config).save_pretrained(init)
    tok.save_pretrained(init)
    run_cli(["train", init, "--data", data["old_train"], "--out", folder / "trained", "--trainable", "all",
             "--max-steps", size["pretrain_steps"], "--batch-size", size["batch"], "--max-length", size["length"],
             "--packing", "--lr", LR, "--warmup-steps", max(1, size["pretrain_steps"] // 20), "--log-every", 0,
             "--seed", 0, "-q"])
    print(f"base: pretrained {size['pretrain_steps']} steps on the old domain in {time.perf_counter() - start:.0f}s")
    return folder / "trained"


# -- arms -------------------------------------------------------------------------------------------------------------

def held_out_loss(model_dir: Path, texts: list[str], size: dict) -> float:
    """Mean next-token loss over the first ``eval_rows`` blocks of ``length`` bytes of ``texts`` (fp32, eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = byte_tokenizer()
    ids = [i for text in texts for i in tok(text)["input_ids"] + [tok.eos_token_id]]
    n = size["length"]
    blocks = [ids[k:k + n] for k in range(0, len(ids) - n + 1, n)][:size["eval_rows"]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(blocks), 16):
            batch = torch.tensor(blocks[k:k + 16])
            logits = model(batch).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                     reduction="sum")
            total, count = total + loss.item(), count + batch[:, 1:].numel()
    return total / count


def run_arm(job: dict) -> dict:
    """Grow (if the arm grows), train on the new domain, measure both domains. Runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    size, arm, seed, work = job["size"], job["arm"], job["seed"], Path(job["work"])
    grow, policy = ARMS[arm]
    folder = work / f"{re.sub(r'[^a-z0-9.]+', '-', arm.lower()).strip('-')}-seed{seed}"
    import hf_expand.grow  # noqa: F401  (imports before the clock starts: a worker's first arm pays them otherwise)
    import hf_expand.train.loop  # noqa: F401
    import peft  # noqa: F401

    start = time.perf_counter()
    model = Path(job["base"])
    if grow is not None:
        flags = [f.format(quarter=max(1, size["layers"] // 4)) for f in grow]
        run_cli(["grow", model, "--out", folder / "grown", *flags, "--seed", seed, "--overwrite", "-q"])
        model = folder / "grown"
    run_cli(["train", model, "--data", job["new_train"], "--out", folder / "trained", "--trainable", policy,
             "--max-steps", size["steps"], "--batch-size", size["batch"], "--max-length", size["length"], "--packing",
             "--lr", LR, "--log-every", 0, "--seed", seed, "--overwrite", "-q"])
    seconds = time.perf_counter() - start
    record = json.loads((folder / "trained" / "hf_expand_growth.json").read_text())["training"]
    old, new = (json.loads(Path(job[k]).read_text()) for k in ("old_heldout", "new_heldout"))
    return {"arm": arm, "seed": seed, "new_loss": held_out_loss(folder / "trained", new, size),
            "old_loss": held_out_loss(folder / "trained", old, size), "trainable": record["trainable_values"],
            "state_mib": record["training_state_mib"], "seconds": seconds, "steps": record["steps"],
            "loss_history": record["loss_history"]}


# -- report -----------------------------------------------------------------------------------------------------------

def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict], base: dict) -> list[dict]:
    rows = []
    for arm in ARMS:
        mine = [r for r in results if r["arm"] == arm]
        if not mine:
            continue
        new, old = _mean_sd([r["new_loss"] for r in mine]), _mean_sd([r["old_loss"] for r in mine])
        rows.append({"arm": arm, "seeds": len(mine), "new_loss": new, "old_loss": old,
                     "forgetting": old[0] - base["old_loss"], "learning": base["new_loss"] - new[0],
                     "trainable": mine[0]["trainable"], "state_mib": statistics.fmean(r["state_mib"] for r in mine),
                     "seconds": statistics.fmean(r["seconds"] for r in mine)})
    return rows


def table(rows: list[dict], base: dict) -> str:
    lines = [f"base (before the new domain): new-domain loss {base['new_loss']:.4f}, old-domain loss "
             f"{base['old_loss']:.4f}", "",
             "| arm | trainable values | new-domain loss (mean ± sd) | old-domain loss (mean ± sd) | forgetting "
             "(old-domain loss − base) | training state | wall time |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['trainable']:,} | {r['new_loss'][0]:.4f} ± {r['new_loss'][1]:.4f} | "
                     f"{r['old_loss'][0]:.4f} ± {r['old_loss'][1]:.4f} | {r['forgetting']:+.4f} | "
                     f"{r['state_mib']:.1f} MiB | {r['seconds']:.0f} s |")
    return "\n".join(lines)


def plots(rows: list[dict], results: list[dict], base: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        ax.errorbar(r["new_loss"][0], r["old_loss"][0], xerr=r["new_loss"][1], yerr=r["old_loss"][1], fmt="o",
                    capsize=3, label=r["arm"])
    ax.scatter([base["new_loss"]], [base["old_loss"]], marker="x", color="black", label="base (no training)")
    _finish(plt, fig, ax, "new-domain held-out loss (lower: learned more)",
            "old-domain held-out loss (higher: forgot more)", "learning vs forgetting (mean ± sd over seeds)",
            out / "tradeoff.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in ARMS:
        curves = [r["loss_history"] for r in results if r["arm"] == arm]
        if curves:
            steps = [s for s, _ in curves[0]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
            ax.plot(steps, mean, label=arm)
    _finish(plt, fig, ax, "step", "training loss (new domain)", "training loss, mean over seeds", out / "curves.png")


def _finish(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of the arms")
    p.add_argument("--workers", type=int, default=2, help="processes running arms (0: in this process)")
    p.add_argument("--out", default="benchmarks/study-out")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/hf_expand/study"))
    a = p.parse_args(argv)
    arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    unknown = [x for x in arms if x not in ARMS]
    if unknown or a.seeds < 1:
        p.error(f"unknown arm {unknown[0]!r}; arms: {', '.join(ARMS)}" if unknown else "--seeds must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, a.workers or 1))
    size, out, cache = SIZES[a.size], Path(a.out), Path(a.cache)
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    old, new = python_texts(size["chars"][0]), wordnet_texts(size["chars"][1])
    data = {"old_train": write_jsonl(old["train"], out / "old-train.jsonl"),
            "new_train": write_jsonl(new["train"], out / "new-train.jsonl")}
    for name, texts in (("old_heldout", old["heldout"]), ("new_heldout", new["heldout"])):
        data[name] = out / f"{name}.json"
        data[name].write_text(json.dumps(texts))
    print(f"data: old domain {sum(map(len, old['train'])):,} chars of Python ({len(old['heldout'])} held-out files), "
          f"new domain {sum(map(len, new['train'])):,} chars of WordNet ({len(new['heldout'])} held-out glosses)")
    base = base_model(size, data, cache)
    base_scores = {"new_loss": held_out_loss(base, json.loads(data["new_heldout"].read_text()), size),
                   "old_loss": held_out_loss(base, json.loads(data["old_heldout"].read_text()), size)}
    jobs = [{"size": size, "arm": arm, "seed": seed, "work": str(out / "runs"), "base": str(base),
             **{k: str(v) for k, v in data.items()}} for seed in range(a.seeds) for arm in arms]
    results = []
    if a.workers:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(run_arm, jobs):
                results.append(r)
                print(f"  {r['arm']} (seed {r['seed']}): new {r['new_loss']:.4f}, old {r['old_loss']:.4f}, "
                      f"{r['seconds']:.0f}s", flush=True)
    else:
        for job in jobs:
            results.append(run_arm(job))
    rows = summarize(results, base_scores)
    text = table(rows, base_scores)
    print(text)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"size": a.size, "settings": {**size, "chars": list(size["chars"])},
                                                  "lr": LR, "base": base_scores, "rows": rows, "runs": results},
                                                 indent=1) + "\n")
    try:
        plots(rows, results, base_scores, out)
    except ImportError:
        print("matplotlib is not installed (pip install 'hf-expand[plot]'): no plots")
    print(f"study done in {time.perf_counter() - start:.0f}s; wrote {out}/table.md, results.json"
          + (", tradeoff.png, curves.png" if (out / "tradeoff.png").is_file() else ""))
    return 0 if all(math.isfinite(r["new_loss"]) and math.isfinite(r["old_loss"]) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
