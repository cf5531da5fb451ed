"""``hf-expand verify BASE GROWN``: the streamed certificate between two checkpoints on disk.

Both run on the same probes one block at a time (:mod:`hf_expand.certificate`), so any size verifies in
about one block of memory. Which base block each grown block must reproduce comes from the grown folder's
growth record (its certificate rows); without a record, blocks are paired by index when the depths agree.
Checkpoints with only pickled weights are compared in memory.
"""

from __future__ import annotations

from pathlib import Path

from .certificate import Certificate, StreamedModel, compare
from .errors import HfExpandError
from .reuse import Reuse
from .verify import Probes, make_probes


def counterparts_from_record(grown: Path, base_layers: int, grown_layers: int) -> list[int | None]:
    """Block pairs: the grown record's certificate rows, else by index when both have the same depth."""
    from .record import read_record

    record = read_record(grown) if grown.is_dir() else None
    rows = (((record or {}).get("verification") or {}).get("certificate") or {}).get("blocks")
    if rows and (record.get("verification") or {}).get("compared_with", "base") == "base":
        pairs: list[int | None] = [None] * grown_layers
        for row in rows:
            j, i = row.get("block"), row.get("counterpart")
            if isinstance(j, int) and isinstance(i, int) and 0 <= j < grown_layers and 0 <= i < base_layers:
                pairs[j] = i
        return pairs
    return list(range(grown_layers)) if base_layers == grown_layers else [None] * grown_layers


def streamed_certificate(base: str, grown: str, probes_for, progress: bool = False) -> tuple[Certificate, Probes]:
    """Run both checkpoints block by block on ``probes_for(base_config)``; return the certificate and probes."""
    from .streamed import bounded_heap, meta_model

    with bounded_heap():
        return _certificate(base, grown, probes_for, progress, meta_model)


def _certificate(base, grown, probes_for, progress, meta_model):
    from .architectures import main_blocks
    from .checkpoint import CheckpointReader, resolve_folder
    from .grow import model_class_for
    from .model_io import auto_class_for, load_config

    runs, metas = [], []
    for src in (base, grown):
        config = load_config(src)
        cls = model_class_for(auto_class_for(config), config)
        metas.append(meta_model(cls, config))
    probes = probes_for(metas[0].config)
    pairs = counterparts_from_record(Path(grown), main_blocks(metas[0].config)[0], main_blocks(metas[1].config)[0])
    readers = [CheckpointReader(resolve_folder(src), meta) for src, meta in zip((base, grown), metas)]
    runs.append(StreamedModel(metas[0], readers[0].get_float, "base").run(probes, progress, record=True))
    # a grown block stored as its counterpart's bytes and fed its exact inputs gives its output (reuse module)
    reuse = Reuse(runs[0], metas[0], pairs, lambda a, b: readers[1].same_bytes(a, readers[0], b))
    runs.append(StreamedModel(metas[1], readers[1].get_float, "grown").run(probes, progress, reuse=reuse))
    try:
        return compare(runs[0], runs[1], probes, pairs, names=("the base model", "the grown model")), probes
    except ValueError as exc:
        raise HfExpandError(f"cannot compare {base} and {grown}: {exc}") from None


def all_safetensors(*sources: str) -> bool:
    from .checkpoint import has_safetensors, resolve_folder

    return all(has_safetensors(resolve_folder(s)) for s in sources)


def default_probes(seed: int, texts: list[str], tokenizer_src: str):
    def make(config):
        from .model_io import load_probe_tokenizer

        tokenizer = load_probe_tokenizer(tokenizer_src) if texts else None
        return make_probes(config, tokenizer, texts, seed=seed)
    return make

