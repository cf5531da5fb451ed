"""``hf-expand run RECIPE``: the stages of a recipe, each saved under the run folder and skipped on a rerun
when its settings and inputs are unchanged (``stages.json`` holds each stage's key and timing)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import yaml

from .errors import HfExpandError
from .grow import RECORD_FILE
from .signature import path_signature

log = logging.getLogger("hf_expand")
STAGES = ("grow", "data", "augment", "train", "evaluate", "push")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]



class Runner:
    def __init__(self, recipe: dict, out: Path, progress: bool = True):
        self.recipe, self.out, self.progress = recipe, out, progress
        self.state_file = out / "stages.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.timings: list[tuple[str, str, float]] = []

    def stage(self, name: str, key: str, output: Path, fn) -> Path:
        """Run ``fn(tmp_output)`` unless ``name`` already produced ``output`` with the same ``key``."""
        done = self.state.get(name)
        if done and done.get("key") == key and output.exists():
            self.timings.append((name, "skipped (unchanged)", 0.0))
            print(f"[{name}] skipped: settings and inputs unchanged ({output})")
            return output
        start = time.perf_counter()
        print(f"[{name}] running")
        self.state.pop(name, None)  # until it finishes, this stage counts as not done
        self.state_file.write_text(json.dumps(self.state, indent=2) + "\n")
        tmp = output.with_name(f".{output.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            fn(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        tmp.rename(output)
        seconds = time.perf_counter() - start
        self.state[name] = {"key": key, "seconds": seconds, "output": str(output)}
        self.state_file.write_text(json.dumps(self.state, indent=2) + "\n")
        self.timings.append((name, "ran", seconds))
        print(f"[{name}] done in {seconds:.1f}s")
        return output


def dry_run(recipe: dict) -> str:
    """The plan, without loading weights: operations with sizes and parameter counts, data, steps."""
    from .grow import plan_growth, render_plans, with_tokenizer
    from .model_io import load_config
    from .recipe import operations

    lines = [f"model: {recipe['model']['id']}"]
    ops = operations(recipe)
    if ops:
        config = load_config(recipe["model"]["id"])
        ops = with_tokenizer(ops, recipe["model"]["id"])
        full = render_plans(config, plan_growth(config, ops)).splitlines()
        # the per-tensor lines are for `hf-expand grow --dry-run`; a recipe plan keeps the operation lines
        lines += [ln for ln in full if not ln.startswith("  ") or ln.lstrip().startswith(("(", "parameters", "note"))]
    data = recipe.get("data")
    if data:
        lines.append(f"data: {data.get('source')} (text {data.get('text_column', 'text')}"
                     + (f", label {data['label_column']}" if data.get("label_column") else "") + ")")
        if data.get("source", "").startswith("builtin:"):
            lines.append(f"  {len(data.get('lexnames') or [])} classes x {data.get('per_class')} train / "
                         f"{data.get('test_per_class')} held out")
    if recipe.get("augment"):
        a = recipe["augment"]
        lines.append(f"augment: {', '.join(map(str, a.get('augmenters') or []))} x{a.get('copies', 1)} copies")
    if recipe.get("train"):
        t = recipe["train"]
        lines.append(f"train: policy {t.get('trainable', 'new')}, "
                     + (f"{t['max_steps']} steps" if t.get("max_steps") else f"{t.get('epochs')} epochs")
                     + f", batch {t.get('batch_size', 8)}, lr {t.get('lr', 1e-4)}")
    if recipe.get("push"):
        lines.append(f"push: {recipe['push']['repo']}" + (" (private)" if recipe["push"].get("private") else ""))
    return "\n".join(lines)


def run_recipe(recipe: dict, out: str | Path, progress: bool = True) -> dict:
    from .recipe import operations

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HfExpandError(f"{out} is a file; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    r = Runner(recipe, out, progress)
    model = recipe["model"]["id"]
    model_key = _key(model, path_signature(model))
    ops = operations(recipe)
    summary: dict = {}

    if ops:
        from .grow import grow_checkpoint

        g = recipe.get("grow") or {}
        key = _key(model_key, [repr(o) for o in ops], g.get("seed", 0), g.get("tolerance"))

        def grow(tmp: Path):
            report = grow_checkpoint(model, tmp, ops, seed=g.get("seed", 0), tolerance=g.get("tolerance"),
                                     command=f"hf-expand run {out / 'recipe.yaml'}", progress=progress)
            summary["preservation_max_abs_diff"] = report.max_abs_diff

        model = str(r.stage("grow", key, out / "grown", grow))
        model_key = key

    data_key, train_data, eval_data = None, None, None
    if recipe.get("data"):
        d = recipe["data"]
        data_key = _key(d, path_signature(d.get("source")), path_signature(d.get("eval")))

        def make_data(tmp: Path):
            tmp.mkdir(parents=True)
            if str(d.get("source", "")).startswith("builtin:"):
                from .builtin_data import BUILTIN, wordnet_lexname_glosses

                if d["source"] != BUILTIN:
                    raise HfExpandError(f"data.source: unknown builtin {d['source']!r}; available: {BUILTIN}")
                train, test = wordnet_lexname_glosses(d.get("lexnames") or [], d.get("per_class", 100),
                                                      d.get("test_per_class", 50), d.get("seed", 0))
            else:
                from .train.data import load_splits

                train, test = load_splits(d["source"], d.get("eval"), d.get("eval_ratio"), d.get("seed", 0))
            train.save_to_disk(str(tmp / "train"))
            if test is not None:
                test.save_to_disk(str(tmp / "test"))

        data_dir = r.stage("data", data_key, out / "data", make_data)
        train_data = data_dir / "train"
        eval_data = data_dir / "test" if (data_dir / "test").exists() else None

    if recipe.get("augment"):
        a = recipe["augment"]
        d = recipe["data"]
        key = _key(data_key, a)

        def augment(tmp: Path):
            from datasets import load_from_disk

            from .augment import augment_dataset, summarize

            source = load_from_disk(str(train_data))
            text = d.get("text_column", "text")
            aug = augment_dataset(source, a.get("augmenters") or ["synonym"], text, copies=a.get("copies", 1),
                                  seed=a.get("seed", 0), progress=progress)
            aug.save_to_disk(str(tmp))
            line = str(summarize(source, aug, text, a.get("copies", 1)))
            (tmp / "hf_expand_augmentation.json").write_text(json.dumps(
                {"augmenters": [str(x) for x in a.get("augmenters") or ["synonym"]], "seed": a.get("seed", 0),
                 "copies": a.get("copies", 1), "summary": [line]}, indent=2))

        train_data = r.stage("augment", key, out / "augmented", augment)
        data_key = key

    if recipe.get("train"):
        from .train import TrainArgs, train

        t, d = dict(recipe["train"]), recipe["data"]
        key = _key(model_key, data_key, t, d.get("text_column"), d.get("label_column"), recipe["model"].get("task"))
        if not t.get("max_steps") and not t.get("epochs"):
            t["max_steps"] = 100

        def do_train(tmp: Path):
            args = TrainArgs(model=model, data=str(train_data), out=str(tmp), text_column=d.get("text_column", "text"),
                             label_column=d.get("label_column"), task=recipe["model"].get("task"),
                             eval_data=str(eval_data) if eval_data else None, command=f"hf-expand run {out / 'recipe.yaml'}",
                             **t)
            section = train(args, progress=progress)
            summary["training"] = section
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
            from .card import write_card
            from .plot import training_curve

            training_curve(section, tmp / "training_curve.png")
            write_card(tmp)

        model = str(r.stage("train", key, out / "trained", do_train))
        model_key = key

    record_path = Path(model) / RECORD_FILE
    result = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if recipe.get("push"):
        from .hub import push_folder

        p = recipe["push"]
        url = push_folder(model, p["repo"], private=bool(p.get("private")))
        print(f"[push] {url}")
    _print_summary(r, result)
    return {"model": model, "timings": r.timings, "record": result}


def _print_summary(r: Runner, record: dict) -> None:
    print("\nstage      status                 seconds")
    for name, status, seconds in r.timings:
        print(f"{name:10s} {status:22s} {seconds:7.1f}")
    ops = record.get("operations") or []
    if ops:
        print(f"parameters: {ops[0]['params_before']:,} -> {ops[-1]['params_after']:,}; "
              f"preservation max |diff| {(record.get('verification') or {}).get('reloaded_max_abs_diff')}")
    metrics = (record.get("training") or {}).get("metrics") or {}
    labels = {"base": "base model", "grown": "grown, before training", "trained": "trained"}
    if metrics.get("base_skipped"):
        print(f"{'base model':24s} not comparable: {metrics['base_skipped']}")
    for stage in ("base", "grown", "trained"):
        if metrics.get(stage):
            print(f"{labels[stage]:24s} " + ", ".join(f"{k} {v:.4g}" for k, v in metrics[stage].items()))
