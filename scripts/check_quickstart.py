"""CI check of the quickstart's promises (run after `bash scripts/quickstart.sh`):

* held-out accuracy of the trained model is reported beside the base model's and clearly better than
  the untrained head (by 0.3 or more);
* the output folder loads in stock transformers with hf_expand not importable, and classifies;
* its card carries the held-out metrics and the training curve, which exists, names base_model and no local path;
* rerunning the quickstart skips every stage, and says so in its output and in run.log, quickly.

    .venv/bin/python scripts/check_quickstart.py [RUN_DIR]      # default runs/quickstart
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("grow", "data", "augment", "train", "evaluate")

LOAD = """
import sys
sys.modules["hf_expand"] = None  # stock transformers only: importing hf_expand would fail
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
logits = model(**tok(["a domesticated carnivorous mammal that barks"], return_tensors="pt")).logits
print(model.config.id2label[int(logits.argmax(-1))])
"""


def main() -> int:
    run = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "quickstart"
    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    evaluation = json.loads((run / "evaluation" / "metrics.json").read_text())
    m = evaluation["metrics"]
    base, grown, trained = (m[k]["accuracy"] for k in ("base", "grown", "trained"))
    check(grown == base, f"grown model scores as the base (same seeded head): {grown:.3f} == {base:.3f}")
    check(trained - base >= 0.3, f"held-out accuracy {base:.3f} (base, untrained head) -> {trained:.3f} (trained)")

    model = run / "trained"
    loaded = subprocess.run([sys.executable, "-c", LOAD, str(model)], capture_output=True, text=True)
    check(loaded.returncode == 0, f"loads in stock transformers without hf_expand (predicts {loaded.stdout.strip()!r})"
          + (f": {loaded.stderr.strip().splitlines()[-1]}" if loaded.returncode else ""))
    card = (model / "README.md").read_text()
    check("## Held-out evaluation" in card and f"{trained:.3g}" in card, "card carries the held-out metrics")
    check((model / "training_curve.png").is_file() and "training_curve.png" in card, "card shows training_curve.png")
    check("## Recipe" in card, "card embeds the resolved recipe")
    check("\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n" in card, "card names its base_model (issue 13)")
    printed = ROOT / "runs" / "quickstart-output.log"  # what .ci/run's quickstart printed (tee)
    if printed.is_file():
        import re

        text = printed.read_text(errors="replace")
        text = text[text.find("[grow] running"):]
        check("LOAD REPORT" not in text and "HTTP Request" not in text, "no transformers load report, no HTTP lines")
        check(text.count("classification head") == 1, "the new head is announced once")
        # progress-bar lines carry rates ("2.3it/s]", or "1.06s/it]" on a slow machine) that are not metrics
        lines = [ln for ln in text.splitlines() if not re.search(r"(it/s|s/it|examples/s)\]", ln)]
        long = [ln for ln in lines if re.search(r"\d\.\d{6,}", ln)]
        check(not long, "metrics printed rounded" + (f": {long[0]!r}" if long else ""))
    check("site-packages" not in card and str(Path.home()) + "/" not in card and str(ROOT) not in card,
          "card names no local path")

    log_before = (run / "run.log").read_text()
    start = time.perf_counter()
    rerun = subprocess.run([str(Path(sys.executable).parent / "hf-expand"), "run", str(ROOT / "recipes" / "quickstart.yaml"),
                            "--out", str(run)], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    skipped = [s for s in STAGES if f"[{s}] skipped" in rerun.stdout]
    check(rerun.returncode == 0 and skipped == list(STAGES) and seconds < 60, f"rerun skipped {skipped} in {seconds:.1f}s")
    log = (run / "run.log").read_text()[len(log_before):]  # what the rerun appended
    check(all(f"[{s}] skipped" in log for s in STAGES) and "running" not in log, "run.log records the skipped stages")
    print("quickstart checks: " + ("all passed" if not failures else f"{len(failures)} failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
