"""Starts that are not exact, on purpose (issue 20): ``--init zero:noise=S`` for new FFN units and new blocks, on
every family of the matrix. What the option promises: the drift is measured and recorded (never refused), it is
finite and above zero, and it shrinks in proportion to S (S -> 0 gives back the exact start); every cell the
exact init accepts, the noisy one accepts too. Bad values: one line, exit 2, nothing written."""

from __future__ import annotations

import math

import pytest
import torch

from hf_expand import AddLayers, WidenFFN, grow_model
from hf_expand.cli import main
from matrix import FAMILY_CONFIGS, tiny_model, unsupported_reason

OPS = {"widen_ffn": ("widen_zero", lambda init: WidenFFN(factor=1.5, init=init)),
       "add_layers": ("layers_interleave", lambda init: AddLayers(count=2, init=init))}
CELLS = [(family, op) for family in sorted(FAMILY_CONFIGS) for op in OPS if unsupported_reason(family, OPS[op][0]) is None]


def test_cells_cover_every_family():
    assert len({f for f, _ in CELLS}) == len(FAMILY_CONFIGS) >= 18  # nothing the exact init accepts is left out


@pytest.mark.parametrize("family,op", CELLS, ids=[f"{f}-{o}" for f, o in CELLS])
def test_noise_drift_is_recorded_and_shrinks_with_the_noise(family, op):
    torch.set_num_threads(1)
    make = OPS[op][1]
    drifts = {}
    for noise in (1e-2, 1e-4):
        _, report = grow_model(tiny_model(family), [make(f"zero:noise={noise}")])
        o = report.operations[0]
        assert o.preserving is False and report.recorded_differences == [{"op": op, "max_abs_diff": o.max_abs_diff}]
        drifts[noise] = o.max_abs_diff
    assert all(math.isfinite(d) and d > 0 for d in drifts.values()), drifts
    assert drifts[1e-4] < drifts[1e-2] / 10, drifts  # ~ proportional to S: 100x less noise, >10x less drift


BAD = {
    "negative_noise": (["--widen-ffn", "1.5", "--init", "zero:noise=-0.01"], "zero:noise must be a number in (0, 1]"),
    "noise_above_one": (["--add-layers", "1", "--init", "zero:noise=3"], "zero:noise must be a number in (0, 1]"),
    "noise_not_a_number": (["--widen-ffn", "1.5", "--init", "zero:noise=lots"], "zero:noise must be a number"),
    "unknown_init": (["--widen-ffn", "1.5", "--init", "random"], "--init must be zero, split or zero:noise=S"),
    "drop_fraction_outside": (["--upcycle-experts", "4", "--upcycle-init", "drop:r=1.2"],
                              "drop:r must be a share in (0, 1]"),
}


def test_bad_table_is_non_empty():
    assert len(BAD) == 5


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_one_line_and_write_nothing(case, tiny_checkpoints, tmp_path, capsys):
    args, message = BAD[case]
    src = tiny_checkpoints("llama")  # saved (with its progress bar) before capturing
    capsys.readouterr()
    assert main(["grow", str(src), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_the_cli_records_the_drift_in_the_card(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "noisy"
    assert main(["grow", str(tiny_checkpoints("llama")), "--out", str(out), "--widen-ffn", "1.5", "--add-layers", "1",
                 "--init", "zero:noise=0.01", "-q"]) == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "**Not function-preserving**" in card and "`widen_ffn` changed the outputs by" in card
    assert "`add_layers` changed the outputs by" in card
