"""Training that stops rather than corrupts (issue 14): out-of-range settings refused, a diverging run
stopped before any NaN reaches the weights, an atomic final save, a run folder one train at a time, and
resumes that are exact with dropout and for masked LMs."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_expand.cli import main
from hf_expand.errors import NonFiniteOutputs
from hf_expand.train import TrainArgs, train
from hf_expand.train import loop
from hf_expand.train.policy import slice_mask
from matrix import tiny_classifier, tiny_model, tiny_tokenizer

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
RECORD = "hf_expand_growth.json"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread for the whole module


@pytest.fixture()
def grown(grown_llama) -> Path:
    return grown_llama


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def old_masks(grown_dir: Path, tensors: dict) -> dict[str, torch.Tensor]:
    """name -> boolean mask of the entries that existed before growth."""
    record = json.loads((grown_dir / RECORD).read_text())["new_slices"]
    out = {}
    for name, t in tensors.items():
        if name in record:
            m = slice_mask(t.shape, record[name])
            out[name] = torch.zeros_like(t, dtype=torch.bool) if m is None else ~m
        else:
            out[name] = torch.ones_like(t, dtype=torch.bool)
    return out


def one_line(capsys, argv, code=2) -> str:
    capsys.readouterr()
    got = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("hf-expand: error: "), err
    return err[0]


def base_argv(model, out, *extra) -> list[str]:
    return ["train", str(model), "--data", str(SENTENCES), "--out", str(out), "--batch-size", "8", "--lr", "1e-2",
            "--log-every", "0", "-q", *extra]


# ------------------------------------------------------------------ bad settings: one line, exit 2, nothing written

BAD = {
    "lr_huge": (["--max-steps", "2", "--lr", "1e3"], "--lr"),
    "lr_inf": (["--max-steps", "2", "--lr", "inf"], "--lr"),
    "lr_nan": (["--max-steps", "2", "--lr", "nan"], "--lr"),
    "lr_zero": (["--max-steps", "2", "--lr", "0"], "--lr"),
    "new_lr_inf": (["--max-steps", "2", "--new-lr", "inf"], "--new-lr"),
    "grad_norm_nan": (["--max-steps", "2", "--max-grad-norm", "nan"], "--max-grad-norm"),
    "grad_norm_negative": (["--max-steps", "2", "--max-grad-norm", "-1"], "--max-grad-norm"),
    "grad_norm_inf": (["--max-steps", "2", "--max-grad-norm", "inf"], "--max-grad-norm"),
    "weight_decay_nan": (["--max-steps", "2", "--weight-decay", "nan"], "--weight-decay"),
    "weight_decay_negative": (["--max-steps", "2", "--weight-decay", "-0.1"], "--weight-decay"),
    "epochs_inf": (["--epochs", "inf"], "--epochs"),
    "epochs_huge": (["--epochs", "1e300"], "steps"),
    "max_steps_huge": (["--max-steps", "20000000"], "--max-steps"),
    "lora_r_zero": (["--max-steps", "2", "--trainable", "lora", "--lora-r", "0"], "--lora-r"),
    "lora_alpha_zero": (["--max-steps", "2", "--trainable", "lora", "--lora-alpha", "0"], "--lora-alpha"),
    "eval_ratio_zero": (["--max-steps", "2", "--eval-ratio", "0"], "--eval-ratio"),
    "eval_ratio_all": (["--max-steps", "2", "--eval-ratio", "0.999"], "--eval-ratio"),
    "eval_ratio_nan": (["--max-steps", "2", "--eval-ratio", "nan"], "--eval-ratio"),
    "warmup_negative": (["--max-steps", "2", "--warmup-steps", "-1"], "--warmup-steps"),
    "save_every_negative": (["--max-steps", "2", "--save-every", "-1"], "--save-every"),
    "eval_every_negative": (["--max-steps", "2", "--eval-every", "-1"], "--eval-every"),
    "log_every_negative": (["--max-steps", "2", "--log-every", "-1"], "--log-every"),
    "seed_negative": (["--max-steps", "2", "--seed", "-1"], "--seed"),
    "seed_huge": (["--max-steps", "2", "--seed", str(2**40)], "--seed"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_out_of_range_settings_are_refused(case, grown, tmp_path, capsys):
    extra, flag = BAD[case]
    out = tmp_path / "o"
    line = one_line(capsys, base_argv(grown, out) + extra)
    assert flag in line, line
    assert not out.exists()


def test_epochs_bound_names_the_computed_steps(grown, tmp_path, capsys):
    line = one_line(capsys, base_argv(grown, tmp_path / "o", "--epochs", "1e300"))
    assert "10,000,000" in line and "--epochs" in line, line


def test_evaluate_bad_batch_size(grown, capsys):
    line = one_line(capsys, ["evaluate", str(grown), "--data", str(SENTENCES), "--batch-size", "0", "-q"])
    assert "--batch-size" in line


def test_damaged_growth_record_is_one_line(grown, tmp_path, capsys):
    copy = tmp_path / "g"
    shutil.copytree(grown, copy)
    (copy / RECORD).write_text('{"new_slices": ')
    line = one_line(capsys, base_argv(copy, tmp_path / "o", "--max-steps", "1"))
    assert str(copy / RECORD) in line
    assert not (tmp_path / "o").exists()
    line = one_line(capsys, ["evaluate", str(copy), "--data", str(SENTENCES), "-q"])
    assert str(copy / RECORD) in line


# ------------------------------------------------------------------ divergence


def _poison(monkeypatch, at: int, what: str = "loss"):
    """Make the ``at``-th training forward pass diverge: its loss NaN (``loss``), or, with a finite loss,
    the gradient of one wholly new tensor NaN (``grad``)."""
    real = loop.load_for_training

    def load(a, num_labels=None):
        model, tokenizer, record, task, head = real(a, num_labels)
        calls = {"n": 0}

        def hook(module, args, output):
            if not module.training:
                return output
            calls["n"] += 1
            if calls["n"] == at:
                if what == "loss":
                    output["loss"] = output.loss * float("nan")
                else:
                    new = model.model.layers[-1].mlp.down_proj.weight  # a layer added by growth: trains fully
                    new.register_hook(lambda g: g * float("nan") if calls["n"] == at else g)
            return output

        model.register_forward_hook(hook)
        return model, tokenizer, record, task, head

    monkeypatch.setattr(loop, "load_for_training", load)


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_divergence_stops_before_any_update(what, grown, tmp_path, capsys, monkeypatch):
    """NaN at step 3 (loss, or only a gradient): one line naming the step and the last good checkpoint, no
    final model, and the checkpoint holds finite weights with every old value of the grown model."""
    _poison(monkeypatch, at=3, what=what)
    out = tmp_path / "run"
    line = one_line(capsys, base_argv(grown, out, "--max-steps", "6", "--save-every", "2"))
    assert "diverged at step 3" in line and str(out / "checkpoints" / "step-2") in line and "--lr" in line, line
    assert ("loss nan" if what == "loss" else "gradient norm nan") in line, line
    assert not (out / "model.safetensors").exists() and not (out / RECORD).exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    saved = weights(out / "checkpoints" / "step-2")
    before = weights(grown)
    masks = old_masks(grown, before)
    for name, t in before.items():
        assert torch.isfinite(saved[name]).all(), name
        assert torch.equal(t[masks[name]], saved[name][masks[name]]), f"old values of {name} changed"


def test_divergence_leaves_the_model_in_memory_untouched(grown, tmp_path, monkeypatch):
    """API use: the exception comes before optimizer.step, so no parameter ever holds NaN."""
    seen = {}
    real = loop.load_for_training

    def load(a, num_labels=None):
        got = real(a, num_labels)
        seen["model"] = got[0]
        return got

    monkeypatch.setattr(loop, "load_for_training", load)
    _poison(monkeypatch, at=2)
    with pytest.raises(loop.TrainingDiverged, match="diverged at step 2"):
        train(TrainArgs(model=str(grown), data=str(SENTENCES), out=str(tmp_path / "r"), max_steps=4, lr=1e-2,
                        log_every=0), progress=False)
    assert all(torch.isfinite(p).all() for p in seen["model"].parameters())


def test_masked_entries_stay_zero_whatever_clipping_does():
    """A NaN gradient in the new entries of a partly-new tensor: clip_grad_norm_ multiplies every entry by
    NaN; MaskedAdamW still leaves every old entry bit-identical (and updates nothing else with NaN's help)."""
    from hf_expand.train.policy import MaskedAdamW

    p = torch.nn.Parameter(torch.randn(4, 6))
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True  # two new columns
    before = p.detach().clone()
    opt = MaskedAdamW([{"params": [p], "weight_decay": 0.1}], {p: mask}, lr=1e-2)
    grad = torch.where(mask, torch.full_like(p, float("nan")), torch.zeros_like(p))
    p.grad = grad
    torch.nn.utils.clip_grad_norm_([p], 1.0)
    assert torch.isnan(p.grad).all()  # what clipping does: NaN everywhere
    opt.step()
    assert torch.equal(p.detach()[~mask], before[~mask])
    assert torch.equal(opt.state[p]["exp_avg"][~mask], torch.zeros_like(before[~mask]))


def test_nonfinite_growth_metrics_raise(grown, tmp_path, monkeypatch):
    """A non-finite metric before training (grown, base or both) raises NonFiniteOutputs naming the side."""
    real = loop._plain_eval
    for bad, where in (({"grown"}, "grown"), ({"base"}, "base"), ({"grown", "base"}, "both")):
        calls = {"n": 0}

        def fake(model, tokenizer, task, ds, seed, bad=bad, calls=calls):
            calls["n"] += 1
            side = "grown" if calls["n"] == 1 else "base"
            metrics = real(model, tokenizer, task, ds, seed)
            return {k: float("nan") for k in metrics} if side in bad else metrics

        monkeypatch.setattr(loop, "_plain_eval", fake)
        with pytest.raises(NonFiniteOutputs) as info:
            train(TrainArgs(model=str(grown), data=str(SENTENCES), out=str(tmp_path / where), max_steps=1,
                            log_every=0), progress=False)
        assert info.value.where == where, (where, str(info.value))
        assert not (tmp_path / where).exists()


def test_nonfinite_lora_merge_raises():
    from hf_expand.train.lora import finish_lora

    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Fake(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, **_):
            return Out(torch.full((1, 3, 5), self.value))

        def merge_and_unload(self):
            return Fake(float("nan"))

    with pytest.raises(NonFiniteOutputs, match="non-finite"):
        finish_lora(Fake(1.0), None, {"input_ids": torch.ones(1, 3, dtype=torch.long)})


# ------------------------------------------------------------------ atomic output, one train at a time


def test_overwrite_keeps_the_previous_model_until_the_new_run_succeeds(grown, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(base_argv(grown, out, "--max-steps", "2")) == 0
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert RECORD in kept and "model.safetensors" in kept
    with monkeypatch.context() as m:
        _poison(m, at=1)
        one_line(capsys, base_argv(grown, out, "--max-steps", "3", "--overwrite"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept  # untouched
    assert main(base_argv(grown, out, "--max-steps", "3", "--overwrite")) == 0
    assert json.loads((out / RECORD).read_text())["training"]["steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or backup left beside it


def interrupt_at_the_record(m) -> None:
    """Ctrl-C while the final save moves the growth record (its commit marker, moved last) into place."""
    real = loop._move_into_place

    def interrupt(src, dest):
        if dest.name == RECORD:
            raise KeyboardInterrupt
        real(src, dest)

    m.setattr(loop, "_move_into_place", interrupt)


def test_interrupted_final_save_is_unfinished_and_resume_completes_it(grown, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the record (the commit marker, moved last) goes into place: the folder is recognisably
    unfinished (no record), a plain rerun is refused, --resume finishes it to the uninterrupted result."""
    straight = tmp_path / "straight"
    assert main(base_argv(grown, straight, "--max-steps", "6", "--save-every", "2")) == 0
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        interrupt_at_the_record(m)
        capsys.readouterr()
        assert main(base_argv(grown, out, "--max-steps", "6", "--save-every", "2")) == 130
        err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "nothing half-written" not in err[0], err
    assert (out / "model.safetensors").exists() and not (out / RECORD).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    line = one_line(capsys, base_argv(grown, out, "--max-steps", "6", "--save-every", "2"))
    assert "unfinished" in line and "--resume" in line, line
    assert main(base_argv(grown, out, "--max-steps", "6", "--save-every", "2", "--resume")) == 0
    a, b = weights(straight), weights(out)
    assert all(torch.equal(a[n], b[n]) for n in a)
    record = json.loads((out / RECORD).read_text())
    assert record["training"]["steps"] == 6 and len(record["training"]["loss_history"]) == 6


def _hold_lock(folder: Path, pid: int):
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / loop.LOCK_FILE, "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.seek(0)
    f.truncate()
    f.write(str(pid))
    f.flush()
    return f


def test_a_run_folder_in_use_is_refused(grown, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(base_argv(grown, out, "--max-steps", "2", "--save-every", "1")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != loop.LOCK_FILE}
    held = _hold_lock(out, 424242)
    try:
        for flags in (["--resume"], ["--overwrite"], []):
            line = one_line(capsys, base_argv(grown, out, "--max-steps", "2", "--save-every", "1", *flags))
            assert f"{out} is in use by another hf-expand train (pid 424242)" in line, line
    finally:
        held.close()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != loop.LOCK_FILE} == before


def test_a_run_folder_created_meanwhile_is_refused(grown, tmp_path, capsys, monkeypatch):
    """Two fresh runs into one --out: the one that creates the folder second is refused, nothing mixed."""
    out = tmp_path / "run"
    real = loop.load_for_training
    held = []

    def load(a, num_labels=None):
        held.append(_hold_lock(out, 31337))  # the other run starts while this one loads
        return real(a, num_labels)

    monkeypatch.setattr(loop, "load_for_training", load)
    try:
        line = one_line(capsys, base_argv(grown, out, "--max-steps", "1"))
    finally:
        for f in held:
            f.close()
    assert "in use by another hf-expand train (pid 31337)" in line, line
    assert [p.name for p in out.iterdir()] == [loop.LOCK_FILE]


# ------------------------------------------------------------------ exact resume


def _cut_after(run: Path, step: int) -> None:
    """Make ``run`` look killed right after its step-``step`` checkpoint."""
    for f in run.iterdir():
        if f.name not in ("checkpoints", "train_args.json", loop.LOCK_FILE):
            f.unlink() if f.is_file() else shutil.rmtree(f)
    for ckpt in (run / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    (run / "checkpoints" / ".step-99.partial").mkdir()  # a checkpoint whose save was killed


def _resume_matches(args: dict, tmp_path: Path, steps: tuple[int, ...]) -> None:
    straight = tmp_path / "straight"
    train(TrainArgs(out=str(straight), **args), progress=False)
    for step in steps:
        copy = tmp_path / f"from-{step}"
        shutil.copytree(straight, copy)
        _cut_after(copy, step)
        section = train(TrainArgs(out=str(copy), **args), resume=True, progress=False)
        assert section["steps"] == args["max_steps"]
        assert not (copy / "checkpoints" / ".step-99.partial").exists()
        a, b = weights(straight), weights(copy)
        diff = max((a[n] - b[n]).abs().max().item() for n in a)
        assert diff <= 1e-6, f"resumed from step {step}: max |diff| {diff:.3g}"


def test_resume_is_exact_with_dropout(tmp_path):
    """A BERT classifier (hidden and attention dropout 0.1) resumed mid-epoch and at an epoch boundary."""
    model = tiny_classifier("bert", num_labels=3)
    assert model.config.hidden_dropout_prob > 0 and model.config.attention_probs_dropout_prob > 0
    model.save_pretrained(tmp_path / "cls")
    tiny_tokenizer().save_pretrained(tmp_path / "cls")
    lines = SENTENCES.read_text().splitlines()
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f'"{t}",{i % 3}\n' for i, t in enumerate(lines)))
    args = dict(model=str(tmp_path / "cls"), data=str(tmp_path / "d.csv"), label_column="label", trainable="all",
                max_steps=9, save_every=3, lr=1e-3, batch_size=8, log_every=0)
    _resume_matches(args, tmp_path, (3, 6))  # 48 rows / 8: step 6 ends epoch 0


def test_resume_is_exact_for_a_masked_lm(tmp_path):
    tiny_model("bert").save_pretrained(tmp_path / "mlm")
    tok = tiny_tokenizer()
    tok.add_special_tokens({"mask_token": "[UNK]"})
    tok.save_pretrained(tmp_path / "mlm")
    args = dict(model=str(tmp_path / "mlm"), data=str(SENTENCES), trainable="all", max_steps=9, save_every=3,
                lr=1e-3, batch_size=8, log_every=0)
    _resume_matches(args, tmp_path, (3, 6))


def test_resume_after_the_last_checkpoint_reports_the_run_and_pushes(grown, tmp_path, capsys, monkeypatch):
    """Killed after its last checkpoint: --resume writes the model with the real losses (stdout, record,
    card) and pushes."""
    out = tmp_path / "run"
    argv = base_argv(grown, out, "--max-steps", "4", "--save-every", "2")
    assert main(argv) == 0
    first = json.loads((out / RECORD).read_text())["training"]
    _cut_after(out, 4)
    pushed = []
    import hf_expand.cli as cli

    monkeypatch.setattr(cli, "_push", lambda args, folder: pushed.append(folder))
    capsys.readouterr()
    assert main(argv + ["--resume", "--push-to", "me/model"]) == 0
    stdout = capsys.readouterr().out
    assert f"loss {first['first_loss']:.4f} -> {first['final_loss']:.4f}" in stdout, stdout
    assert pushed == [str(out)]
    section = json.loads((out / RECORD).read_text())["training"]
    assert section["first_loss"] == first["first_loss"] and section["final_loss"] == first["final_loss"]
    assert "n/a" not in (out / "README.md").read_text().split("Loss", 1)[-1].splitlines()[0]


def test_interrupted_overwrite_keeps_the_old_model_and_resume_replaces_it(grown, tmp_path, capsys, monkeypatch):
    """Ctrl-C during an --overwrite run's final save: the previous model is untouched, the one line says where
    the new run waits; --resume finishes it and only then replaces the previous model."""
    out = tmp_path / "run"
    assert main(base_argv(grown, out, "--max-steps", "2")) == 0
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    new = base_argv(grown, out, "--max-steps", "4", "--save-every", "2", "--overwrite")
    with monkeypatch.context() as m:
        interrupt_at_the_record(m)
        capsys.readouterr()
        assert main(new) == 130
        err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} is unchanged" in err[0] and "--resume" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept
    assert main(new[:-1] + ["--resume"]) == 0
    assert json.loads((out / RECORD).read_text())["training"]["steps"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_overwrite_replaces_only_what_hf_expand_wrote(grown, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    line = one_line(capsys, base_argv(grown, mine, "--max-steps", "1", "--overwrite"))
    assert "not written by hf-expand" in line, line
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_disk_full_during_the_final_save_is_one_line_and_resumable(grown, tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "run"
    argv = base_argv(grown, out, "--max-steps", "2", "--save-every", "2")
    with monkeypatch.context() as m:
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        m.setattr(loop, "_write_final", full)
        line = one_line(capsys, argv)
    assert "No space left on device" in line and "--resume" in line, line
    assert not (out / RECORD).exists() and not (out / loop.FINAL_PARTIAL).exists()
    assert main(argv + ["--resume"]) == 0 and (out / RECORD).is_file()


def test_resume_starts_a_run_killed_before_it_wrote_anything(grown, tmp_path):
    """A kill right after the folder was created leaves it empty (or with the lock file only): --resume starts
    the run there from step 0."""
    out = tmp_path / "run"
    out.mkdir()
    (out / loop.LOCK_FILE).write_text("999\n")
    section = train(TrainArgs(model=str(grown), data=str(SENTENCES), out=str(out), max_steps=2, log_every=0),
                    resume=True, progress=False)
    assert section["steps"] == 2 and (out / RECORD).is_file()
