"""``hf-expand run RECIPE``: the stages of a recipe, each saved under the run folder and skipped on a rerun
when its settings and inputs are unchanged (``stages.json`` holds each stage's key and timing)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import yaml

from .errors import HfExpandError
from .lineage import public_source
from .record import EVALUATION, read_record, write_record
from .signature import path_signature

log = logging.getLogger("hf_expand")
STAGES = ("grow", "data", "augment", "train", "evaluate", "push")
RUN_COMMAND = "hf-expand run recipe.yaml  # the recipe above"


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
            self.timings.append((name, f"skipped (ran in {done.get('seconds', 0):.1f}s)", 0.0))
            self.log(f"[{name}] skipped: settings and inputs unchanged ({output}; it ran in {done.get('seconds', 0):.1f}s)")
            return output
        start = time.perf_counter()
        self.log(f"[{name}] running")
        self.state.pop(name, None)  # until it finishes, this stage counts as not done
        self.state_file.write_text(json.dumps(self.state, indent=2) + "\n")
        from .output import disk_error, replace_dir

        tmp = output.with_name(f".{output.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            fn(tmp)
            replace_dir(tmp, output)  # old output aside, new in, old deleted (a kill in between: restored)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            mapped = disk_error(exc, output)
            exc = mapped or exc
            self.log(f"[{name}] failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                     echo=False)  # the command prints the error itself
            if mapped is not None:
                raise mapped from None
            raise
        seconds = time.perf_counter() - start
        self.state[name] = {"key": key, "seconds": seconds, "output": str(output)}
        self.state_file.write_text(json.dumps(self.state, indent=2) + "\n")
        self.timings.append((name, "ran", seconds))
        self.log(f"[{name}] done in {seconds:.1f}s")
        return output

    def log(self, line: str, echo: bool = True) -> None:
        """Print ``line`` and append it, timestamped, to ``run.log`` in the run folder."""
        if echo:
            print(line)
        with open(self.out / "run.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def dry_run(recipe: dict) -> str:
    """The plan, without loading weights: operations with sizes and parameter counts, data, steps."""
    from .grow import plan_growth, render_plans, with_tokenizer
    from .model_io import load_config
    from .recipe import operations

    _preflight(recipe)
    lines = [f"model: {recipe['model']['id']}"]
    ops = operations(recipe)
    if ops:
        config = load_config(recipe["model"]["id"])
        ops = with_tokenizer(ops, recipe["model"]["id"])
        full = render_plans(config, plan_growth(config, ops)).splitlines()
        # the per-tensor lines are for `hf-expand grow --dry-run`; a recipe plan keeps the operation lines
        lines += [ln for ln in full if not ln.startswith("  ") or ln.lstrip().startswith(("(", "parameters", "note"))]
    data = recipe.get("data")
    train_rows = None
    if data:
        lines.append(f"data: {data.get('source')} (text {data.get('text_column', 'text')}"
                     + (f", label {data['label_column']}" if data.get("label_column") else "") + ")")
        train_rows, line = _data_sizes(data)
        lines.append(f"  {line}")
    copies = 0
    if recipe.get("augment"):
        a = recipe["augment"]
        copies = a.get("copies", 1)
        if train_rows:
            from .augment.pipeline import check_output_rows

            try:
                check_output_rows(train_rows, copies)
            except HfExpandError as exc:
                raise HfExpandError(f"recipe: augment.copies: {exc}") from None
        lines.append(f"augment: {', '.join(map(str, a.get('augmenters') or []))} x{copies} copies"
                     + (f" -> {train_rows * (1 + copies)} training rows" if train_rows else ""))
    if recipe.get("train"):
        t = recipe["train"]
        batch = t.get("batch_size", 8) * t.get("grad_accum", 1)
        if t.get("max_steps") is not None or t.get("epochs") is None:
            steps = f"{100 if t.get('max_steps') is None else t['max_steps']} steps"
        elif train_rows:
            per_epoch = math.ceil(train_rows * (1 + copies) / batch)
            steps = f"{math.ceil(t['epochs'] * per_epoch)} steps ({t['epochs']} epochs of {per_epoch}" + (
                ", before packing" if t.get("packing") else "") + ")"
        else:
            steps = f"{t['epochs']} epochs"
        lines.append(f"train: policy {t.get('trainable', 'new')}, {steps}, batch {batch}, lr {t.get('lr', 1e-4)}")
    if "evaluate" in recipe:
        e = recipe["evaluate"]
        stages = ["base"] + (["grown"] if ops else []) + (["trained"] if recipe.get("train") else [])
        lines.append(f"evaluate: {', '.join(e.get('metrics') or ['all metrics of the task'])} on "
                     f"{e.get('data') or 'the held-out split'} for {', '.join(stages)}")
    if recipe.get("push"):
        lines.append(f"push: {recipe['push']['repo']}" + (" (private)" if recipe["push"].get("private") else ""))
    return "\n".join(lines)


def _data_sizes(data: dict) -> tuple[int | None, str]:
    """(training rows or None, a line) for the dry run: counted from the data, which is read but not kept."""
    if str(data.get("source", "")).startswith("builtin:"):
        n = len(data.get("lexnames") or [])
        return n * data.get("per_class", 100), (f"{n} classes x {data.get('per_class', 100)} train / "
                                                  f"{data.get('test_per_class', 50)} held out")
    if not Path(data["source"]).exists():  # a Hub dataset: not downloaded for a plan
        return None, "a Hub dataset: its size is known once the data stage reads it"
    from .train.data import load_splits

    train, test = load_splits(data["source"], data.get("eval"), data.get("eval_ratio"), data.get("seed", 0),
                              data.get("eval_split"), data.get("config"), data.get("revision"), data.get("split"))
    return len(train), f"{len(train)} training rows" + (f", {len(test)} held out" if test is not None else "")


def _data_inputs(recipe: dict) -> list[tuple[str, str | None]]:
    """(recipe key, value) of every data input a run reads."""
    d, e = recipe.get("data") or {}, recipe.get("evaluate") or {}
    return [("data.source", d.get("source")), ("data.eval", d.get("eval")), ("evaluate.data", e.get("data"))]


def _check_run_folder(recipe: dict, out: Path) -> None:
    """The run folder is new, empty, or an earlier run's (it has ``stages.json``): its stage folders are
    replaced on a rerun, so it must never be a folder of the user's, nor hold the run's own inputs."""
    if out.exists() and not out.is_dir():
        raise HfExpandError(f"{out} is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / "stages.json").is_file():
        raise HfExpandError(f"{out} is not empty and not an hf-expand run folder (no stages.json); choose a new or "
                            f"empty --out, so that none of its files is replaced")
    if out.is_dir():  # what a killed run left: stage builds, temp builds, outputs moved aside (their stage reruns)
        from .output import clean_leftovers

        clean_leftovers(out, [".*.partial", ".*.tmp-*", ".*.old-*"])
    for where, value in [("model.id", recipe["model"]["id"]), *_data_inputs(recipe)]:
        if value and Path(value).exists() and Path(value).resolve().is_relative_to(out.resolve()):
            raise HfExpandError(f"recipe: {where} {value} is inside the run folder {out}, whose stages replace their "
                                f"folders; copy it elsewhere or choose another --out")


def _preflight(recipe: dict) -> None:
    """Fail before any stage runs on what a later stage would trip over: a missing model or data file,
    evaluation metrics the task does not have. Reads configs only (also used by ``--dry-run``)."""
    from .augment.data_io import check_source
    from .model_io import load_config
    from .train.data import task_of

    config = load_config(recipe["model"]["id"])
    d, e = recipe.get("data") or {}, recipe.get("evaluate")
    for where, source in _data_inputs(recipe):
        if source and not str(source).startswith("builtin:"):
            try:
                check_source(str(source))
            except HfExpandError as exc:
                raise HfExpandError(f"recipe: {where}: {exc}") from None
    if str(d.get("source", "")).startswith("builtin:"):
        from .builtin_data import BUILTIN, check_lexnames

        if d["source"] != BUILTIN:
            raise HfExpandError(f"recipe: data.source: unknown builtin {d['source']!r}; available: {BUILTIN}")
        check_lexnames(d.get("lexnames") or [])
    if not (recipe.get("train") or e is not None):
        return
    label = (e or {}).get("label_column") or d.get("label_column")
    try:
        task = recipe["model"].get("task") or task_of(config, label)
    except HfExpandError as exc:  # worded for the command line: say it in recipe keys
        raise HfExpandError("recipe: " + str(exc).replace("pass --task classification", "set model.task: classification")
                            .replace("pass --task (", "set model.task (").replace("--label-column", "data.label_column")) from None
    if e and e.get("metrics"):
        available = ("accuracy", "f1") if task == "classification" else ("perplexity",)
        wrong = [m for m in e["metrics"] if m not in available]
        if wrong:
            raise HfExpandError(f"recipe: evaluate.metrics: {', '.join(wrong)} does not apply to a {task} model "
                                f"(available: {', '.join(available)})")


def run_recipe(recipe: dict, out: str | Path, progress: bool = True) -> dict:
    from .recipe import check_values, operations

    out = Path(out)
    check_values(recipe)  # every value, before any stage (load_recipe did it too; API callers pass dicts)
    _check_run_folder(recipe, out)
    _preflight(recipe)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(public_recipe(recipe), sort_keys=False))
    r = Runner(recipe, out, progress)
    model = recipe["model"]["id"]
    model_key = _key(model, path_signature(model))
    ops = operations(recipe)
    summary: dict = {}
    stage_models = {"base": model}  # what the evaluate stage compares
    stage_keys = {"base": model_key}  # their keys (paths differ between `--out runs/x` and `--out /abs/runs/x`)

    if ops:
        from .grow import grow_checkpoint
        from .shards import DEFAULT_MAX_SHARD_SIZE

        g = recipe.get("grow") or {}
        key = _key(model_key, [repr(o) for o in ops], g.get("seed", 0), g.get("tolerance"))

        def grow(tmp: Path):
            report = grow_checkpoint(model, tmp, ops, seed=g.get("seed", 0), tolerance=g.get("tolerance"),
                                     command=RUN_COMMAND, progress=progress,
                                     base_model=recipe["model"].get("base_model"),
                                     max_shard_size=g.get("max_shard_size", DEFAULT_MAX_SHARD_SIZE))
            summary["preservation_max_abs_diff"] = report.max_abs_diff

        model = str(r.stage("grow", key, out / "grown", grow))
        model_key = key
        stage_models["grown"], stage_keys["grown"] = model, key

    data_key, train_data, eval_data = None, None, None
    if recipe.get("data"):
        d = recipe["data"]
        data_key = _key(d, path_signature(d.get("source")), path_signature(d.get("eval")))

        def make_data(tmp: Path):
            tmp.mkdir(parents=True)
            if str(d.get("source", "")).startswith("builtin:"):
                from .builtin_data import wordnet_lexname_glosses  # the name was checked up front

                train, test = wordnet_lexname_glosses(d.get("lexnames") or [], d.get("per_class", 100),
                                                      d.get("test_per_class", 50), d.get("seed", 0))
            else:
                from .train.data import load_splits

                train, test = load_splits(d["source"], d.get("eval"), d.get("eval_ratio"), d.get("seed", 0),
                                          d.get("eval_split"), d.get("config"), d.get("revision"), d.get("split"))
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
                             eval_data=str(eval_data) if eval_data else None, command=RUN_COMMAND,
                             base_model=recipe["model"].get("base_model"), **t)
            section = train(args, progress=progress)
            summary["training"] = section
            from .card import write_card
            from .plot import training_curve

            training_curve(section, tmp / "training_curve.png")
            write_card(tmp, name="trained")

        model = str(r.stage("train", key, out / "trained", do_train))
        model_key = key
        stage_models["trained"], stage_keys["trained"] = model, key

    evaluation = None
    if "evaluate" in recipe:
        e, d = recipe["evaluate"], recipe.get("data") or {}
        key = _key(stage_keys, data_key, e, path_signature(e.get("data")), d.get("text_column"),
                   d.get("label_column"), recipe["model"].get("task"))

        def do_evaluate(tmp: Path):
            evaluation = evaluate_stage(recipe, stage_models, train_data, eval_data, progress, r.log)
            tmp.mkdir(parents=True)
            (tmp / "metrics.json").write_text(json.dumps(evaluation, indent=2) + "\n")

        evaluation = json.loads((r.stage("evaluate", key, out / "evaluation", do_evaluate) / "metrics.json").read_text())

    _finish_model(Path(model), out, recipe, evaluation)
    result = read_record(model) or {}
    if recipe.get("push"):
        from .hub import push_folder

        p = recipe["push"]
        url = push_folder(model, p["repo"], private=bool(p.get("private")))
        print(f"[push] {url}")
    _print_summary(r, result, evaluation)
    return {"model": model, "timings": r.timings, "record": result, "evaluation": evaluation}


def evaluate_stage(recipe: dict, models: dict[str, str], train_data: Path | None, eval_data: Path | None,
                   progress: bool = True, log=print) -> dict:
    """Metrics of each stage's model (base, grown, trained) on the held-out data, with the same seeded
    fresh head wherever a bare encoder needs one (so base and grown heads are the same random head).
    The base is skipped, with the reason, when growth added labels (it cannot score rows labelled with them)."""
    from datasets import load_from_disk

    from .augment.data_io import load_data
    from .train import data as D
    from .train.data import held_out_split
    from .train.evaluation import evaluate_dataset

    e, d = recipe["evaluate"], recipe.get("data") or {}
    seed = e.get("seed", 0)
    text, label = e.get("text_column") or d.get("text_column", "text"), e.get("label_column") or d.get("label_column")
    if e.get("data"):
        ds, split = held_out_split(load_data(e["data"]), e["data"], e.get("split"), what="evaluate.data")
        dataset = {"name": public_source(e["data"]), "type": public_source(e["data"]), "split": split}
    elif eval_data is not None:
        ds = load_from_disk(str(eval_data))
        dataset = {"name": public_source(d["source"]), "type": public_source(d["source"]), "split": _held_out_words(d)}
    else:
        raise HfExpandError("evaluate needs held-out data: set evaluate.data, or data.eval / data.eval_ratio")
    where = f"{dataset['name']}" + (f" ({dataset['split']} split)" if dataset["split"] else "")
    D.check_columns(ds, text, label, where)
    labels = D.count_labels(load_from_disk(str(train_data)), label) if train_data is not None and label else None
    wanted = e.get("metrics")
    max_length = e.get("max_length") or (recipe.get("train") or {}).get("max_length") or 128
    result = {"data": where, "dataset": dataset, "rows": len(ds), "max_length": max_length, "metrics": {}, "fresh_head": [], "skipped": {}}
    from .recipe import operations

    added_labels = any(op.name == "add_labels" for op in operations(recipe))
    for name, path in models.items():
        if name == "base" and added_labels and label and len(models) > 1:
            result["skipped"][name] = "growth added labels the base model does not have"
            log(f"[evaluate] base skipped: {result['skipped'][name]}")
            continue
        log(f"[evaluate] {name}: {public_source(path) if name == 'base' else Path(path).name}")
        metrics, fresh = evaluate_dataset(path, ds, text, label, recipe["model"].get("task"), e.get("batch_size", 16),
                                          max_length, seed, num_labels=labels, where=where,
                                          progress=f"evaluate {name}" if progress else None)
        result["metrics"][name] = {k: v for k, v in metrics.items() if not wanted or k in wanted}
        if fresh:
            result["fresh_head"].append(name)
    return result


def _held_out_words(d: dict) -> str:
    """The split name of the data stage's held-out rows, as the card and model-index show it."""
    if str(d.get("source", "")).startswith("builtin:"):
        return f"held-out {d.get('test_per_class', 50)} per class"
    if d.get("eval"):
        return f"{public_source(d['eval'])}" + (f" {d['eval_split']}" if d.get("eval_split") else "")
    return f"held-out {d.get('eval_ratio')} of the data (seed {d.get('seed', 0)})"


def public_recipe(recipe: dict) -> dict:
    """The recipe as written into run and model folders: sources by their public names (``lineage``), so a
    pushed card embeds no path of this machine; ``pkg:`` ids come back as ``pkg:`` ids."""
    import copy

    from .lineage import public_source

    r = copy.deepcopy(recipe)
    r["model"]["id"] = public_source(r["model"]["id"])
    for section, key in (("data", "source"), ("data", "eval"), ("evaluate", "data")):
        if (r.get(section) or {}).get(key):
            r[section][key] = public_source(r[section][key])
    if r.get("out") and Path(r["out"]).is_absolute():
        r["out"] = public_source(r["out"])
    return r


def _finish_model(model: Path, out: Path, recipe: dict, evaluation: dict | None) -> None:
    """Put the resolved recipe and the evaluation beside the final model and into its record and card,
    when that model is this run's output (a user's own folder is never written to)."""
    from .card import write_card

    if model.resolve() not in {(out / s).resolve() for s in ("grown", "trained")}:
        return
    record = read_record(model)
    if record is None:
        return
    text = yaml.safe_dump(public_recipe(recipe), sort_keys=False)
    recipe_path = model / "recipe.yaml"
    if record.get(EVALUATION) == evaluation and recipe_path.is_file() and recipe_path.read_text() == text:
        return
    recipe_path.write_text(text)
    if evaluation is None:
        record.pop(EVALUATION, None)
    else:
        record[EVALUATION] = evaluation
    write_record(model, record)
    write_card(model)


def _g(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _print_summary(r: Runner, record: dict, evaluation: dict | None) -> None:
    print("\nstage      status                   seconds")
    for name, status, seconds in r.timings:
        print(f"{name:10s} {status:24s} {seconds:7.1f}")
    print(f"{'total':10s} {'':24s} {sum(t for _, _, t in r.timings):7.1f}")
    ops = record.get("operations") or []
    if ops:
        v = record.get("verification") or {}
        recorded = "; ".join(f"{d['op']} changed outputs by {d['max_abs_diff']:.3g} (not function-preserving)"
                             for d in v.get("recorded_differences") or [])
        print(f"parameters: {ops[0]['params_before']:,} -> {ops[-1]['params_after']:,}; "
              f"preservation max |diff| {_g(v.get('reloaded_max_abs_diff'))}" + (f"; {recorded}" if recorded else ""))
    metrics = {} if evaluation else (record.get("training") or {}).get("metrics") or {}  # evaluation supersedes
    labels = {"base": "base model", "grown": "grown, before training", "trained": "trained"}
    if metrics.get("base_skipped"):
        print(f"{'base model':24s} not comparable: {metrics['base_skipped']}")
    for stage in ("base", "grown", "trained"):
        if metrics.get(stage):
            print(f"{labels[stage]:24s} " + ", ".join(f"{k} {v:.4g}" for k, v in metrics[stage].items()))
    if evaluation:
        print(f"held-out evaluation ({evaluation['rows']} rows of {evaluation['data']}):")
        for name, values in evaluation["metrics"].items():
            head = " (untrained head)" if name in evaluation["fresh_head"] else ""
            print(f"  {name + head:28s} " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()))
        for name, why in (evaluation.get("skipped") or {}).items():
            print(f"  {name:28s} not evaluated: {why}")
