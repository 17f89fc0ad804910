"""parse_response: valid answers become M3TContent, every malformed one a precise rejection."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from muco.synthesis.content import IMAGE_PLACEHOLDER, M3TContent
from muco.synthesis.generators.base import Rejection
from muco.synthesis.parsing import (
    MAX_FIELD_CHARS,
    REASON_CODES,
    ParseRejection,
    parse_response,
)


def _turn(kind: str, queries: list[str], answer: str, sentence: str, negative: str) -> dict:
    return {
        "type": kind,
        "queries": queries,
        "answer": answer,
        "answer_sentence": sentence,
        "negative": negative,
    }


VALID: dict[str, Any] = {
    "description": "A brown dog lies on a green sofa next to a red cushion in a bright room.",
    "turns": [
        _turn(
            "classification",
            ["What animal is shown in this image?", "Which animal does the image show?",
             "Name the animal in the image."],
            "dog", "The image shows a dog.", "cat",
        ),
        _turn(
            "global_vqa",
            ["What kind of room is this?", "Which room does the image show?",
             "In what type of room was this photo taken?"],
            "living room", "The photo was taken in a living room.", "kitchen",
        ),
        _turn(
            "global_vqa",
            ["How many animals are in the image?", "Count the animals in this image.",
             "What is the number of animals shown?"],
            "one", "There is one animal in the image.", "two",
        ),
        _turn(
            "local_vqa",
            ["What colour is the cushion next to the dog?", "Which colour does the cushion have?",
             "The cushion beside the dog is what colour?"],
            "red", "The cushion next to the dog is red.", "blue",
        ),
        _turn(
            "local_vqa",
            ["What is the dog lying on?", "On what piece of furniture does the dog rest?",
             "Where is the dog lying?"],
            "a green sofa", "The dog is lying on a green sofa.", "a green bed",
        ),
        _turn(
            "creative_vqa",
            ["What might the dog do next?", "What will the dog probably do soon?",
             "Imagine the next moment: what does the dog do?"],
            "fall asleep on the sofa", "The dog will probably fall asleep on the sofa.",
            "jump into a swimming pool",
        ),
        _turn(
            "retrieval",
            ["Write a caption for this image.", "Describe the image in one sentence.",
             "Give a short caption of the image."],
            "A brown dog resting on a green sofa beside a red cushion.",
            "The image shows a brown dog resting on a green sofa beside a red cushion.",
            "A black dog resting on a green sofa beside a red cushion.",
        ),
    ],
}  # fmt: skip
VALID_TEXT = json.dumps(VALID, indent=2)


def changed(change: Callable[[dict[str, Any]], object]) -> str:
    """The valid answer as text, after ``change`` edited a copy of it."""
    data = copy.deepcopy(VALID)
    change(data)
    return json.dumps(data)


def rejection(text: str, **kwargs: Any) -> ParseRejection:
    with pytest.raises(ParseRejection) as caught:
        parse_response(text, **kwargs)
    assert caught.value.reason in REASON_CODES
    return caught.value


# --- valid answers -------------------------------------------------------------------------


def test_valid_answer_builds_the_content() -> None:
    content = parse_response(VALID_TEXT, paraphrases=3)
    assert isinstance(content, M3TContent)
    assert content.turn_types == (0, 1, 2, 3, 4, 5, 6)
    assert content.qry[0] == tuple(
        f"{IMAGE_PLACEHOLDER}\n{q}" for q in VALID["turns"][0]["queries"]
    )
    assert content.pos_text == tuple(t["answer"] for t in VALID["turns"])
    assert content.pos_sentence == tuple(t["answer_sentence"] for t in VALID["turns"])
    assert content.neg_text == tuple(t["negative"] for t in VALID["turns"])
    assert content.qry_sentence == VALID["description"]


def test_whitespace_is_normalised_and_placeholder_kept_where_present() -> None:
    def change(data: dict[str, Any]) -> None:
        data["description"] = "  A brown\tdog \r\n on a   sofa. "
        data["turns"][3]["answer"] = "\tdark  red "
        data["turns"][3]["queries"][0] = f"{IMAGE_PLACEHOLDER} What colour\n is the cushion?"

    content = parse_response(changed(change))
    assert content.qry_sentence == "A brown dog on a sofa."
    assert content.pos_text[3] == "dark red"
    assert content.qry[3][0] == f"{IMAGE_PLACEHOLDER} What colour is the cushion?"
    assert content.qry[3][1] == f"{IMAGE_PLACEHOLDER}\nWhich colour does the cushion have?"


def test_duplicate_paraphrases_are_merged_and_extra_ones_dropped() -> None:
    def change(data: dict[str, Any]) -> None:
        data["turns"][0]["queries"] = ["What animal?", "what  ANIMAL? ", "Which animal?"]
        data["turns"][1]["queries"].extend(["Extra one?", "Extra two?"])

    content = parse_response(changed(change))
    assert content.qry[0] == (
        f"{IMAGE_PLACEHOLDER}\nWhat animal?",
        f"{IMAGE_PLACEHOLDER}\nWhich animal?",
    )
    assert len(content.qry[1]) == 5
    assert parse_response(changed(change), paraphrases=2).qry[1] == content.qry[1][:2]


def test_same_answer_in_several_turns_and_lenient_type_spelling_are_accepted() -> None:
    def change(data: dict[str, Any]) -> None:
        data["turns"][2]["answer"] = "dog"
        data["turns"][1]["type"] = "Global VQA"
        data["turns"][3]["type"] = "local-vqa"
        data["extra"] = "ignored"

    content = parse_response(changed(change))
    assert content.pos_text[0] == content.pos_text[2] == "dog"
    assert content.turn_types == (0, 1, 2, 3, 4, 5, 6)


def test_fewer_turns_map_to_the_first_kinds() -> None:
    text = changed(lambda data: data.update(turns=data["turns"][:3]))
    assert parse_response(text, turns=3).turn_types == (0, 1, 2)


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\n{}\n```",
        "```JSON\n{}\n```",
        "```\n{}\n```",
        "```json{}```",
        "Sure! Here is the JSON you asked for:\n\n{}\n\nLet me know if you need more.",
        "Here it is:\n```json\n{}\n```\nThe turns follow the requested order.",
        "\ufeff  {}  ",
    ],
    ids=["fence-json", "fence-JSON", "fence-bare", "fence-inline", "prose", "prose-fence", "bom"],
)
def test_fences_and_prose_around_the_object(wrap: str) -> None:
    text = wrap.replace("{}", VALID_TEXT)
    assert parse_response(text) == parse_response(VALID_TEXT)


def test_trailing_commas_and_comments_outside_strings_are_dropped() -> None:
    text = VALID_TEXT.replace('"cat"', '"cat",  // a plausible other animal\n').replace(
        '"Name the animal in the image."', '"Name the animal in the image.",\n'
    )
    assert text.count(",\n") > VALID_TEXT.count(",\n")
    assert parse_response(text) == parse_response(VALID_TEXT)


def test_commas_braces_and_slashes_inside_strings_stay() -> None:
    def change(data: dict[str, Any]) -> None:
        data["description"] = 'A sign reads "{open}, ]closed[," see http://example.org,}'
        data["turns"][3]["answer"] = "red, white,"

    content = parse_response("Answer: " + changed(change) + " trailing } text {")
    assert content.qry_sentence == 'A sign reads "{open}, ]closed[," see http://example.org,}'
    assert content.pos_text[3] == "red, white,"


# --- rejections ----------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


TOO_LONG = "x" * (MAX_FIELD_CHARS + 1)
DUPLICATE = " what  ANIMAL is shown in this image? "  # turns[0].queries[0], differently spaced
FIELD_CASES = [
    ("missing_field", _delete(("description",)), "description"),
    ("missing_field", _delete(("turns",)), "turns"),
    ("missing_field", _delete(("turns", 3, "answer")), "turns[3].answer"),
    ("missing_field", _delete(("turns", 6, "type")), "turns[6].type"),
    ("wrong_type", _set(("description",), None), "description"),
    ("wrong_type", _set(("turns",), {"0": {}}), "turns"),
    ("wrong_type", _set(("turns", 1), "a turn"), "turns[1]"),
    ("wrong_type", _set(("turns", 0, "queries"), "What animal?"), "turns[0].queries"),
    ("wrong_type", _set(("turns", 0, "queries", 1), 5), "turns[0].queries[1]"),
    ("wrong_type", _set(("turns", 2, "answer"), 1), "turns[2].answer"),
    ("wrong_type", _set(("turns", 2, "negative"), True), "turns[2].negative"),
    ("empty_field", _set(("turns", 4, "answer"), " \t "), "turns[4].answer"),
    ("empty_field", _set(("turns", 0, "queries"), []), "turns[0].queries"),
    ("empty_field", _set(("turns", 0, "queries", 2), ""), "turns[0].queries[2]"),
    ("empty_field", _set(("turns", 0, "queries", 0), IMAGE_PLACEHOLDER), "turns[0].queries[0]"),
    ("field_too_long", _set(("turns", 5, "answer_sentence"), TOO_LONG), "turns[5].answer_sentence"),
    ("control_characters", _set(("turns", 3, "answer"), "red\x07"), "turns[3].answer"),
    ("control_characters", _set(("description",), "a\x00b"), "description"),
    ("invalid_unicode", _set(("turns", 3, "negative"), "blue\ud800"), "turns[3].negative"),
    ("wrong_turn_count", lambda data: data["turns"].pop(), "turns"),
    ("wrong_turn_type", _set(("turns", 3, "type"), "creative_vqa"), "turns[3].type"),
    ("wrong_turn_type", _set(("turns", 0, "type"), "ocr"), "turns[0].type"),
    ("too_few_paraphrases", _set(("turns", 0, "queries", 2), DUPLICATE), "turns[0].queries"),
    ("negative_equals_answer", _set(("turns", 0, "negative"), " DOG "), "turns[0].negative"),
    (
        "query_equals_answer",
        _set(("turns", 4, "queries", 1), " A GREEN sofa"),
        "turns[4].queries[1]",
    ),
]


@pytest.mark.parametrize(
    ("reason", "change", "path"), FIELD_CASES, ids=[f"{r}-{p}" for r, _, p in FIELD_CASES]
)
def test_field_rejections_name_the_reason_and_path(
    reason: str, change: Callable[[dict[str, Any]], None], path: str
) -> None:
    error = rejection(changed(change), paraphrases=3)
    assert (error.reason, error.detail.split(":")[0]) == (reason, path)


TEXT_CASES = [
    ("invalid_json", "I cannot help with that image."),
    ("invalid_json", ""),
    ("invalid_json", '{"description": "x", "turns": [1, 2}'),
    ("invalid_json", "{'description': 'single quotes'}"),
    ("invalid_json", '{"n": ' + "1" * 5000 + "}"),
    ("invalid_json", "[" * 50_000 + "]" * 50_000),
    ("truncated_json", VALID_TEXT[:-1]),
    ("truncated_json", '```json\n{"description": "A dog on a so'),
    ("not_an_object", "[1, 2, 3]"),
    ("not_an_object", "```json\n[" + VALID_TEXT + "]\n```"),
    ("not_an_object", "42"),
]


@pytest.mark.parametrize(("reason", "text"), TEXT_CASES)
def test_text_rejections(reason: str, text: str) -> None:
    error = rejection(text)
    assert error.reason == reason
    assert error.detail.startswith("response: ")


def test_wrong_turn_count_says_expected_and_got() -> None:
    error = rejection(changed(lambda data: data["turns"].pop()))
    assert error.detail == "turns: expected 7, got 6"


def test_too_few_paraphrases_only_when_a_count_is_required() -> None:
    text = changed(_set(("turns", 1, "queries"), ["Which room is this?"]))
    assert parse_response(text).qry[1] == (f"{IMAGE_PLACEHOLDER}\nWhich room is this?",)
    assert rejection(text, paraphrases=2).detail == (
        "turns[1].queries: expected 2 distinct paraphrases, got 1"
    )


def test_the_first_error_in_document_order_wins() -> None:
    def change(data: dict[str, Any]) -> None:
        data["turns"][4]["negative"] = 3
        del data["turns"][1]["answer_sentence"]
        data["turns"][1]["answer"] = ""

    error = rejection(changed(change))
    assert (error.reason, error.detail) == (
        "empty_field",
        "turns[1].answer: empty or whitespace only",
    )


def test_non_text_input_is_rejected() -> None:
    error = rejection(None)  # type: ignore[arg-type]
    assert (error.reason, error.detail) == ("wrong_type", "response: expected text, got NoneType")


def test_field_limit_is_inclusive() -> None:
    assert parse_response(changed(_set(("description",), "y" * MAX_FIELD_CHARS))).qry_sentence


def test_to_rejection_is_cacheable() -> None:
    error = rejection(changed(_delete(("turns", 3, "answer"))))
    assert error.to_rejection() == Rejection("missing_field", "turns[3].answer: missing", True)


def test_every_reason_code_is_exercised() -> None:
    tested = {reason for reason, _, _ in FIELD_CASES} | {reason for reason, _ in TEXT_CASES}
    assert tested == REASON_CODES


@pytest.mark.parametrize("turns", [0, 8])
def test_bad_arguments_raise_value_error(turns: int) -> None:
    with pytest.raises(ValueError):
        parse_response(VALID_TEXT, turns=turns)
    with pytest.raises(ValueError):
        parse_response(VALID_TEXT, paraphrases=0)


# --- truncated and arbitrary text ----------------------------------------------------------

FENCED = "Here is the annotation:\n```json\n" + VALID_TEXT + "\n```"
_LAST_BRACE = FENCED.rindex("}")
CUTS = [_LAST_BRACE * k // 20 for k in range(20)]


@pytest.mark.parametrize("cut", CUTS)
def test_truncated_answers_are_rejected_never_repaired(cut: int) -> None:
    error = rejection(FENCED[:cut])
    assert error.reason == ("truncated_json" if cut > FENCED.index("{") else "invalid_json")


def _assert_parses_or_rejects(text: str) -> None:
    try:
        parse_response(text, paraphrases=3)
    except ParseRejection as error:
        assert error.reason in REASON_CODES
        assert error.detail


def test_random_mutations_only_raise_parse_rejection() -> None:
    rng = random.Random(20240917)
    alphabet = '{}[]",:\\/ \n\t\x00\x1fa1é' + IMAGE_PLACEHOLDER
    for _ in range(300):
        chars = list(FENCED)
        for _ in range(rng.randint(1, 6)):
            position = rng.randrange(len(chars))
            operation = rng.choice(("insert", "delete", "replace"))
            if operation == "insert":
                chars.insert(position, rng.choice(alphabet))
            elif operation == "delete":
                del chars[position]
            else:
                chars[position] = rng.choice(alphabet)
        _assert_parses_or_rejects("".join(chars))


def test_arbitrary_text_only_raises_parse_rejection() -> None:
    hypothesis = pytest.importorskip(
        "hypothesis",
        reason="hypothesis is not installed; the seeded mutation test above covers"
        " the same property",
    )
    strategies = hypothesis.strategies

    @hypothesis.settings(max_examples=200, deadline=None)
    @hypothesis.given(
        strategies.text()
        | strategies.builds(lambda cut, junk: FENCED[:cut] + junk,
                            strategies.integers(0, len(FENCED)), strategies.text())
    )  # fmt: skip
    def check(text: str) -> None:
        _assert_parses_or_rejects(text)

    check()
