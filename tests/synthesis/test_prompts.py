"""The M3T prompt: versioned, complete, ordered, and its JSON Schema fits what the parser reads."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from muco.synthesis.content import TurnType
from muco.synthesis.parsing import parse_response
from muco.synthesis.prompts import (
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    TURN_KINDS,
    build_prompt,
    response_json_schema,
)

M3T_ORDER = (
    "classification",
    "global_vqa",
    "global_vqa",
    "local_vqa",
    "local_vqa",
    "creative_vqa",
    "retrieval",
)
FIELDS = ("description", "type", "queries", "answer", "answer_sentence", "negative")
# The keywords guided-decoding backends (vLLM outlines / xgrammar) handle without surprises.
SIMPLE_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
}


def test_version_string() -> None:
    assert PROMPT_VERSION == "m3t-v1"


def test_kinds_are_the_m3t_order() -> None:
    assert TURN_KINDS == M3T_ORDER
    # Turn i has TurnType(i): GLOBAL_VQA_1 is the first global_vqa, and so on.
    for index, kind in enumerate(TURN_KINDS):
        assert TurnType(index).name.lower().startswith(kind)


def test_prompt_mentions_every_field_and_all_kinds_in_order() -> None:
    prompt = build_prompt()
    for field in FIELDS:
        assert f'"{field}"' in prompt, field
    numbered = re.findall(r"^(\d+)\. (\w+)$", prompt, flags=re.MULTILINE)
    assert numbered == [(str(i), kind) for i, kind in enumerate(M3T_ORDER, start=1)]
    for kind in dict.fromkeys(M3T_ORDER):
        assert f"\n- {kind}: " in prompt, kind
    assert re.findall(r'"type": "(\w+)"', prompt) == list(M3T_ORDER)
    assert "exactly 3 different paraphrases" in prompt
    assert "JSON" in SYSTEM_PROMPT


def test_fewer_turns_ask_for_the_first_kinds() -> None:
    prompt = build_prompt(turns=3, paraphrases=5)
    assert re.findall(r'"type": "(\w+)"', prompt) == list(M3T_ORDER[:3])
    assert "exactly 5 different paraphrases" in prompt
    assert "local_vqa" not in prompt


@pytest.mark.parametrize(("turns", "paraphrases"), [(7, 3), (7, 1), (3, 5), (1, 2)])
def test_format_shown_in_the_prompt_is_what_the_parser_reads(turns: int, paraphrases: int) -> None:
    # The example object is the only brace-delimited part of the prompt, so the parser finds it.
    content = parse_response(build_prompt(turns, paraphrases), turns, paraphrases)
    assert content.turn_types == tuple(range(turns))
    assert all(len(queries) == paraphrases for queries in content.qry)


@pytest.mark.parametrize("turns", [0, -1, 8])
def test_turns_out_of_range_raise(turns: int) -> None:
    with pytest.raises(ValueError, match="turns"):
        build_prompt(turns)
    with pytest.raises(ValueError, match="turns"):
        response_json_schema(turns)


def test_paraphrases_below_one_raise() -> None:
    with pytest.raises(ValueError, match="paraphrases"):
        build_prompt(paraphrases=0)
    with pytest.raises(ValueError, match="paraphrases"):
        response_json_schema(paraphrases=0)


# --- the JSON Schema -----------------------------------------------------------------------


def _keywords(schema: dict[str, Any]) -> set[str]:
    found = set(schema)
    if "items" in schema:
        found |= _keywords(schema["items"])
    for sub in schema.get("properties", {}).values():
        found |= _keywords(sub)
    return found


def _conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A validator for exactly the keywords in SIMPLE_KEYWORDS (jsonschema is not installed)."""
    kinds = {"object": dict, "array": list, "string": str}
    if not isinstance(value, kinds[schema["type"]]):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        properties = schema["properties"]
        if not set(schema["required"]) <= set(value):
            return False
        if schema["additionalProperties"] is False and not set(value) <= set(properties):
            return False
        return all(_conforms(value[key], properties[key]) for key in value)
    if isinstance(value, list):
        if not schema["minItems"] <= len(value) <= schema["maxItems"]:
            return False
        return all(_conforms(item, schema["items"]) for item in value)
    return True


def _example(turns: int = 7, paraphrases: int = 3) -> dict[str, Any]:
    return {
        "description": "A red ball on grass.",
        "turns": [
            {
                "type": kind,
                "queries": [f"Question {j}?" for j in range(paraphrases)],
                "answer": "red",
                "answer_sentence": "The ball is red.",
                "negative": "blue",
            }
            for kind in M3T_ORDER[:turns]
        ],
    }


def test_schema_is_simple_strict_and_json() -> None:
    schema = response_json_schema()
    assert _keywords(schema) <= SIMPLE_KEYWORDS
    assert json.loads(json.dumps(schema)) == schema
    turns = schema["properties"]["turns"]
    assert (turns["minItems"], turns["maxItems"]) == (7, 7)
    turn = turns["items"]
    assert turn["additionalProperties"] is False and schema["additionalProperties"] is False
    assert schema["required"] == ["description", "turns"]
    assert turn["required"] == list(FIELDS[1:])
    assert turn["properties"]["type"]["enum"] == list(dict.fromkeys(M3T_ORDER))
    queries = turn["properties"]["queries"]
    assert (queries["minItems"], queries["maxItems"]) == (3, 3)
    # Guided decoders emit keys in schema order: the description before the turns it grounds.
    assert list(schema["properties"]) == ["description", "turns"]


def test_schema_accepts_a_correct_answer_and_rejects_wrong_lengths() -> None:
    schema = response_json_schema()
    assert _conforms(_example(), schema)
    assert not _conforms(_example(turns=6), schema)
    assert not _conforms(_example(paraphrases=2), schema)
    assert not _conforms(_example(paraphrases=4), schema)
    missing = _example()
    del missing["turns"][2]["negative"]
    assert not _conforms(missing, schema)
    extra = _example()
    extra["turns"][0]["note"] = "?"
    assert not _conforms(extra, schema)
    unknown = _example()
    unknown["turns"][0]["type"] = "ocr"
    assert not _conforms(unknown, schema)


def test_schema_follows_turns_and_paraphrases() -> None:
    schema = response_json_schema(turns=2, paraphrases=4)
    assert _conforms(_example(turns=2, paraphrases=4), schema)
    turn = schema["properties"]["turns"]["items"]
    assert turn["properties"]["type"]["enum"] == ["classification", "global_vqa"]
    assert turn["properties"]["queries"]["maxItems"] == 4
