"""Families beyond the full matrix (issue 16): every one is grown by ``widen_ffn`` and by ``add_layers`` through
the checkpoint path (streamed, certificate, reload in stock transformers), or refused with its data file's
reason. Most have no data file: their layout is inferred from transformers and verification vouches for it."""

from __future__ import annotations

import json

import pytest

from hf_expand import AddLayers, UnsupportedArchitecture, WidenFFN, grow_checkpoint
from hf_expand.architectures import layout_is_inferred
from tests.matrix import FAMILY_CONFIGS, MORE_FAMILY_CONFIGS, more_tiny_model, more_unsupported_reason

FAMILIES = sorted(MORE_FAMILY_CONFIGS)
OPS = {"widen_ffn": lambda: [WidenFFN(factor=1.5)], "add_layers": lambda: [AddLayers(count=2)]}
# cells refused up front, by the family's data file (the reason is asserted)
REFUSED = {("bloom", "widen_ffn"): "FFN width is fixed at 4 x hidden_size",
           ("mpt", "widen_ffn"): "expansion_ratio x d_model",
           ("minimax", "add_layers"): "decay by their index over the layer count",
           ("jamba", "add_layers"): "decides each block's kind from its index"}


def test_more_families_are_new_and_many():
    assert len(FAMILIES) >= 24 and not set(FAMILIES) & set(FAMILY_CONFIGS)


def test_refused_cells_are_the_ones_planning_refuses():
    """The README table (planning) and these tests (growing) agree on which cells are refused."""
    refused = {(f, op) for f in FAMILIES for op in OPS if more_unsupported_reason(f, op) is not None}
    assert refused == set(REFUSED)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("more")
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = root / family
            more_tiny_model(family).save_pretrained(cache[family])
        return cache[family]
    return get


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_grows_exactly_or_is_refused(family, op, saved, tmp_path):
    out = tmp_path / "grown"
    if (family, op) in REFUSED:
        with pytest.raises(UnsupportedArchitecture, match=REFUSED[family, op]):
            grow_checkpoint(str(saved(family)), out, OPS[op]())
        assert not out.exists()
        return
    report = grow_checkpoint(str(saved(family)), out, OPS[op]())
    assert report.reloaded_max_abs_diff <= report.tolerance, report.reloaded_max_abs_diff
    record = json.loads((out / "hf_expand_growth.json").read_text())
    assert record["layout"] == ("inferred" if layout_is_inferred(family) else "data")
    assert record["verification"]["certificate"]["blocks"]
