"""The recipe schema (pydantic, built from ``recipe.SCHEMA``) and its JSON Schema export: every shipped recipe
passes both; what the schema refuses, the JSON Schema refuses too; messages keep the key's path;
``hf-expand recipes schema`` writes the file editors read, and never replaces one without ``--overwrite``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_expand.cli import main
from hf_expand.errors import HfExpandError
from hf_expand.recipe import SCHEMA, json_schema, parse_yaml, validate

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))

BAD = {  # recipe -> the message validate() gives (key path first)
    "unknown_top": ({"model": {"id": "m"}, "outt": "x"}, "recipe: outt: unknown key; expected one of out, model"),
    "unknown_train_key": ({"model": {"id": "m"}, "train": {"lrr": 1}}, "recipe: train.lrr: unknown key"),
    "string_for_int": ({"model": {"id": "m"}, "train": {"max_steps": "abc"}},
                       "recipe: train.max_steps: expected int, found str 'abc'"),
    "bool_for_number": ({"model": {"id": "m"}, "train": {"lr": True}}, "recipe: train.lr: expected number, found bool"),
    "float_for_int": ({"model": {"id": "m"}, "augment": {"copies": 1.5}}, "recipe: augment.copies: expected int"),
    "list_for_str": ({"model": {"id": "m"}, "out": ["a"]}, "recipe: out: expected str, found list"),
    "section_not_mapping": ({"model": {"id": "m"}, "data": 3}, "recipe: data: expected a mapping, found int"),
    "no_model": ({"train": {"max_steps": 1}}, "recipe: model.id: required"),
    "data_without_source": ({"model": {"id": "m"}, "data": {"text_column": "t"}}, "recipe: data.source: required"),
    "operations_not_list": ({"model": {"id": "m"}, "grow": {"operations": "widen"}},
                            "recipe: grow.operations: expected list, found str"),
}


def test_tables_are_non_empty():
    assert len(RECIPES) >= 8 and len(BAD) == 10


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_pass_the_schema_and_the_json_schema(path):
    import jsonschema

    recipe = parse_yaml(path.read_text())
    validate(recipe)
    jsonschema.validate(recipe, json_schema())


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_are_refused_by_both(case):
    import jsonschema

    recipe, message = BAD[case]
    with pytest.raises(HfExpandError) as info:
        validate(recipe)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(recipe, json_schema())


def test_json_schema_has_every_key_with_training_help():
    schema = json_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["model"]
    assert set(schema["properties"]) == set(SCHEMA)
    for section, keys in SCHEMA.items():
        if isinstance(keys, dict):
            definition = schema["$defs"][section]
            assert definition["additionalProperties"] is False
            assert set(definition["properties"]) == set(keys), section
    train = schema["$defs"]["train"]["properties"]
    assert train["trainable"]["anyOf"][0]["enum"] == ["new", "all", "lora"]
    assert all(prop.get("description") for prop in train.values())
    assert "widen_ffn" in schema["$defs"]["grow"]["properties"]["operations"]["description"]


def test_recipes_schema_command(tmp_path, capsys):
    capsys.readouterr()
    assert main(["recipes", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json_schema()
    dest = tmp_path / "recipe.schema.json"
    assert main(["recipes", "schema", "--out", str(dest)]) == 0
    assert json.loads(dest.read_text()) == printed
    dest.write_text("mine")
    assert main(["recipes", "schema", "--out", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert dest.read_text() == "mine"
    assert main(["recipes", "schema", "--out", str(dest), "--overwrite"]) == 0
    assert json.loads(dest.read_text()) == printed
    assert main(["recipes", "schema", "--out", str(tmp_path / "no" / "s.json")]) == 2
    assert not (tmp_path / "no").exists()
