"""``GrowthCallback`` (issue 18): a stock Trainer checks at the end that old values are bit-identical, and keeps
hf-expand's growth record and card across ``save_model`` and ``push_to_hub`` (which used to overwrite the card)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from hf_expand import HfExpandError
from test_train import SENTENCES

TOKEN = "hf_alice_callback_token_42"


def _trainer(grown, out, prepare: bool, callback, **kw):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_expand.train.trainer import prepare_for_trainer

    tok = AutoTokenizer.from_pretrained(grown)
    model = AutoModelForCausalLM.from_pretrained(grown)
    ds = Dataset.from_dict({"text": SENTENCES.read_text().splitlines()}).map(
        lambda b: tok(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
    if prepare:
        prepare_for_trainer(model, grown, "new")
    args = TrainingArguments(output_dir=str(out), max_steps=3, per_device_train_batch_size=8, use_cpu=True,
                             learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no", seed=0, **kw)
    return Trainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[callback],
                   data_collator=DataCollatorForLanguageModeling(tok, mlm=False))


def test_callback_checks_and_keeps_record_and_card(grown_llama, tmp_path, one_thread):
    from hf_expand.train.callback import GrowthCallback

    callback = GrowthCallback(grown_llama)
    trainer = _trainer(grown_llama, tmp_path / "t", True, callback)
    assert callback.trainer is trainer
    trainer.train()
    assert callback.checked is True
    trainer.save_model(str(tmp_path / "saved"))
    record = json.loads((tmp_path / "saved" / "hf_expand_growth.json").read_text())
    assert record["new_slices"] and record["trainer"] == {"policy": "new", "old_values_identical": True}
    trainer.save_model()  # push_to_hub's order: save_model into output_dir, then create_model_card there
    trainer.create_model_card(model_name="t")
    card = (tmp_path / "t" / "README.md").read_text()
    assert "model-growth" in card and "## Training with transformers.Trainer" in card


def test_callback_catches_changed_old_values(grown_llama, tmp_path, one_thread):
    from hf_expand.train.callback import GrowthCallback

    trainer = _trainer(grown_llama, tmp_path / "t", False, GrowthCallback(grown_llama))  # not prepared: all trains
    with pytest.raises(HfExpandError, match=r"policy new: old values changed in \d+ tensor\(s\)"):
        trainer.train()


PUSH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments
    from hf_expand.train.callback import GrowthCallback
    from hf_expand.train.trainer import prepare_for_trainer
    grown, out, sentences = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    tok = AutoTokenizer.from_pretrained(grown)
    model = AutoModelForCausalLM.from_pretrained(grown)
    ds = Dataset.from_dict({"text": sentences.read_text().splitlines()}).map(
        lambda b: tok(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
    prepare_for_trainer(model, grown, "new")
    args = TrainingArguments(output_dir=out, max_steps=2, per_device_train_batch_size=8, use_cpu=True, report_to=[],
                             save_strategy="no", logging_strategy="no", hub_model_id="alice/cb-model")
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[GrowthCallback(grown)],
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    trainer.push_to_hub()  # the token comes from HF_TOKEN (hub_token= would be pickled into training_args.bin)
""")



def test_push_to_hub_keeps_the_growth_card(grown_llama, tmp_path):
    from hub_server import HubServer, client_env

    server = HubServer(tmp_path / "hub", {TOKEN: "alice"})
    endpoint = server.start()
    try:
        env = client_env(endpoint, tmp_path / "home", HF_TOKEN=TOKEN, OMP_NUM_THREADS="1")
        env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "0"  # Trainer relies on the environment's token being sent
        r = subprocess.run([sys.executable, "-c", PUSH, str(grown_llama), str(tmp_path / "t"), str(SENTENCES)],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        files = server.files("alice/cb-model")
    finally:
        server.stop()
    card = files["README.md"].decode()
    assert "model-growth" in card and "## Training with transformers.Trainer" in card, card[:2000]
    assert json.loads(files["hf_expand_growth.json"])["trainer"]["old_values_identical"] is True
    assert TOKEN.encode() not in b"".join(files.values())
