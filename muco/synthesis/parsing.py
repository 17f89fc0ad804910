"""Parse an MLLM's answer to the M3T prompt (:mod:`muco.synthesis.prompts`) into M3TContent.

Models wrap JSON in prose or code fences, leave trailing commas and ``//`` comments, run out of
tokens mid-answer, or write fields that are empty, wrong or duplicated. :func:`parse_response`
accepts the harmless variants and turns everything else into a :class:`ParseRejection` with a
short reason code (:data:`REASON_CODES`) and a detail naming the field path
(``turns[3].answer``). Checks run in document order (``description``, then ``turns``, then
each turn's ``type``, ``queries``, ``answer``, ``answer_sentence``, ``negative`` and the
comparisons between them) and the first failure wins. A truncated answer is rejected, never
repaired. Keys the prompt did not ask for are ignored.

Only the stdlib :mod:`json` decodes; the pre-processing (locating the object, dropping
comments and trailing commas, all outside strings) is the small scanner below.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from muco.synthesis.content import IMAGE_PLACEHOLDER, M3TContent, TurnType
from muco.synthesis.generators.base import Rejection
from muco.synthesis.prompts import DEFAULT_TURNS, turn_kinds

# Longest accepted text field, after whitespace normalisation: far above a sane answer or
# description, low enough to catch a model that loops.
MAX_FIELD_CHARS = 2000

REASON_CODES: frozenset[str] = frozenset(
    {
        "invalid_json",
        "truncated_json",
        "not_an_object",
        "missing_field",
        "wrong_type",
        "empty_field",
        "field_too_long",
        "control_characters",
        "invalid_unicode",
        "wrong_turn_count",
        "wrong_turn_type",
        "too_few_paraphrases",
        "negative_equals_answer",
        "query_equals_answer",
    }
)

# An opening code fence with an optional language tag (```json, ```JSON, ```).
_OPENING_FENCE = re.compile(r"```[ \t]*[\w-]*[ \t]*\r?\n?")
# C0 and C1 control characters except tab, line feed and carriage return, which are whitespace.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone surrogates (JSON "\ud800" escapes) decode but cannot be written as UTF-8 later.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_OPENER_OF = {"}": "{", "]": "["}


class ParseRejection(Exception):
    """An answer that yields no record: ``reason`` is a code of :data:`REASON_CODES`,
    ``detail`` names the field path and what was wrong with it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def to_rejection(self) -> Rejection:
        """The generator-level rejection; cacheable, since the same prompt, image and seed
        would give the same malformed answer again."""
        return Rejection(reason=self.reason, detail=self.detail, cacheable=True)


@dataclass(frozen=True)
class _Turn:
    queries: tuple[str, ...]
    answer: str
    answer_sentence: str
    negative: str


def parse_response(
    text: str, turns: int = DEFAULT_TURNS, paraphrases: int | None = None
) -> M3TContent:
    """The M3T content in ``text``, the raw answer of the model.

    ``turns`` is the number of turns the prompt asked for (their kinds are the first ``turns``
    of :data:`~muco.synthesis.prompts.TURN_KINDS`, in order). With ``paraphrases`` given, each
    turn needs at least that many distinct queries and extra ones are dropped; without it,
    all distinct queries are kept. Raises :class:`ParseRejection` for a bad answer and
    ValueError for bad ``turns`` / ``paraphrases`` arguments.
    """
    kinds = turn_kinds(turns)
    if paraphrases is not None and paraphrases < 1:
        raise ValueError(f"paraphrases must be at least 1, got {paraphrases}")
    if not isinstance(text, str):
        raise ParseRejection("wrong_type", f"response: expected text, got {type(text).__name__}")
    data = _load_object(text)
    description = _text_field(data, "description", "description")
    items = _field(data, "turns", "turns")
    if not isinstance(items, list):
        raise ParseRejection("wrong_type", f"turns: expected an array, got {_json_type(items)}")
    if len(items) != turns:
        raise ParseRejection("wrong_turn_count", f"turns: expected {turns}, got {len(items)}")
    parsed = [
        _parse_turn(item, index, kind, paraphrases)
        for index, (item, kind) in enumerate(zip(items, kinds, strict=True))
    ]
    return M3TContent(
        qry=tuple(turn.queries for turn in parsed),
        pos_text=tuple(turn.answer for turn in parsed),
        pos_sentence=tuple(turn.answer_sentence for turn in parsed),
        neg_text=tuple(turn.negative for turn in parsed),
        qry_sentence=description,
        # The kinds were checked position by position, so turn i is of type i (the first
        # global_vqa is GLOBAL_VQA_1, the second GLOBAL_VQA_2, and so on).
        turn_types=tuple(int(TurnType(index)) for index in range(turns)),
    )


# --- locating and decoding the JSON object -------------------------------------------------


def _load_object(text: str) -> dict[str, Any]:
    # Fast path: a well-behaved server (JSON mode, guided decoding) returns exactly one clean
    # object. json.loads in C is ~50x cheaper than the tolerant scan below, which matters at
    # hundreds of answers per second (benchmarks/synthesis.py).
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        pass
    else:
        if isinstance(value, dict):
            return value
    region = _after_opening_fence(text).lstrip()
    # A bare (or fenced) array is decoded to be reported as such; otherwise prose may precede
    # the object, which starts at the first brace.
    start = 0 if region.startswith("[") else region.find("{")
    if start < 0:
        _reject_non_object(region.split("```", 1)[0])
    try:
        value = json.loads(_clean_value(region, start))
    except json.JSONDecodeError as err:
        raise ParseRejection(
            "invalid_json", f"response: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except (ValueError, RecursionError) as err:  # over-long integers, absurd nesting
        raise ParseRejection("invalid_json", f"response: {err}") from None
    if not isinstance(value, dict):
        raise ParseRejection(
            "not_an_object", f"response: expected a JSON object, got {_json_type(value)}"
        )
    return value


def _after_opening_fence(text: str) -> str:
    """The text after the first code fence, if that fence opens before the first brace (a
    fence further on would be inside or after the object)."""
    fence = _OPENING_FENCE.search(text)
    brace = text.find("{")
    if fence is not None and (brace < 0 or fence.start() < brace):
        return text[fence.end() :]
    return text


def _reject_non_object(region: str) -> NoReturn:
    """Raise for a response without an object: a lone JSON scalar, or no JSON at all."""
    try:
        value = json.loads(region)
    except (ValueError, RecursionError):
        raise ParseRejection("invalid_json", "response: no JSON object in the text") from None
    raise ParseRejection(
        "not_an_object", f"response: expected a JSON object, got {_json_type(value)}"
    )


def _clean_value(text: str, start: int) -> str:
    """The JSON value whose bracket opens at ``text[start]``, up to its matching bracket, with
    ``//`` line comments and trailing commas removed; strings are copied untouched."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = False
    i = start
    while i < len(text):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif text.startswith("//", i):
            end_of_line = text.find("\n", i)
            i = len(text) if end_of_line < 0 else end_of_line
            continue
        elif char in "{[":
            stack.append(char)
        elif char in "}]":
            if stack.pop() != _OPENER_OF[char]:
                raise ParseRejection(
                    "invalid_json", f"response: mismatched {char!r} at character {i - start}"
                )
            _drop_trailing_comma(out)
            if not stack:
                out.append(char)
                return "".join(out)
        out.append(char)
        i += 1
    where = "inside a string" if in_string else f"with {len(stack)} unclosed bracket(s)"
    raise ParseRejection("truncated_json", f"response: the JSON ends {where}")


def _drop_trailing_comma(out: list[str]) -> None:
    """Remove a comma that is the last non-space character written (before a closing bracket).

    Outside a string the last character written is structural or a string's closing quote, so
    a comma found here is never part of a string.
    """
    j = len(out) - 1
    while j >= 0 and out[j].isspace():
        j -= 1
    if j >= 0 and out[j] == ",":
        del out[j]


# --- validating the decoded answer ---------------------------------------------------------


def _parse_turn(item: Any, index: int, kind: str, paraphrases: int | None) -> _Turn:
    path = f"turns[{index}]"
    if not isinstance(item, dict):
        raise ParseRejection("wrong_type", f"{path}: expected an object, got {_json_type(item)}")
    type_name = _text_field(item, "type", f"{path}.type")
    # Tolerate "Global VQA" / "global-vqa" spellings of the right kind.
    if type_name.lower().replace(" ", "_").replace("-", "_") != kind:
        raise ParseRejection(
            "wrong_turn_type", f"{path}.type: expected {kind!r}, got {_preview(type_name)}"
        )
    queries = _queries(item, f"{path}.queries", paraphrases)
    answer = _text_field(item, "answer", f"{path}.answer")
    answer_sentence = _text_field(item, "answer_sentence", f"{path}.answer_sentence")
    negative = _text_field(item, "negative", f"{path}.negative")
    if _key(negative) == _key(answer):
        raise ParseRejection(
            "negative_equals_answer", f"{path}.negative: same as {path}.answer {_preview(answer)}"
        )
    for query_index, query in queries:
        if _key(query) == _key(answer):
            raise ParseRejection(
                "query_equals_answer",
                f"{path}.queries[{query_index}]: same as {path}.answer {_preview(answer)}",
            )
    return _Turn(
        queries=tuple(_with_placeholder(query) for _, query in queries),
        answer=answer,
        answer_sentence=answer_sentence,
        negative=negative,
    )


def _queries(item: dict[str, Any], path: str, paraphrases: int | None) -> list[tuple[int, str]]:
    """The distinct paraphrases with their index in the answer, first occurrence kept."""
    value = _field(item, "queries", path)
    if not isinstance(value, list):
        raise ParseRejection(
            "wrong_type", f"{path}: expected an array of strings, got {_json_type(value)}"
        )
    if not value:
        raise ParseRejection("empty_field", f"{path}: no paraphrases")
    distinct: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(value):
        entry_path = f"{path}[{index}]"
        if not isinstance(entry, str):
            raise ParseRejection(
                "wrong_type", f"{entry_path}: expected a string, got {_json_type(entry)}"
            )
        query = _normalise(entry, entry_path)
        key = _key(query)
        if not key:
            raise ParseRejection("empty_field", f"{entry_path}: only the image placeholder")
        distinct.setdefault(key, (index, query))
    kept = list(distinct.values())
    if paraphrases is not None:
        if len(kept) < paraphrases:
            raise ParseRejection(
                "too_few_paraphrases",
                f"{path}: expected {paraphrases} distinct paraphrases, got {len(kept)}",
            )
        kept = kept[:paraphrases]
    return kept


def _field(container: dict[str, Any], key: str, path: str) -> Any:
    if key not in container:
        raise ParseRejection("missing_field", f"{path}: missing")
    return container[key]


def _text_field(container: dict[str, Any], key: str, path: str) -> str:
    value = _field(container, key, path)
    if not isinstance(value, str):
        raise ParseRejection("wrong_type", f"{path}: expected a string, got {_json_type(value)}")
    return _normalise(value, path)


def _normalise(value: str, path: str) -> str:
    """``value`` with whitespace runs (tabs and line breaks included) collapsed to one space
    and the ends stripped; other control characters, lone surrogates, empty and over-long
    text are rejected."""
    control = _CONTROL.search(value)
    if control is not None:
        raise ParseRejection(
            "control_characters",
            f"{path}: control character U+{ord(control.group()):04X} at position {control.start()}",
        )
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        raise ParseRejection(
            "invalid_unicode",
            f"{path}: lone surrogate U+{ord(surrogate.group()):04X} at position "
            f"{surrogate.start()}",
        )
    text = " ".join(value.split())
    if not text:
        raise ParseRejection("empty_field", f"{path}: empty or whitespace only")
    if len(text) > MAX_FIELD_CHARS:
        raise ParseRejection(
            "field_too_long", f"{path}: {len(text)} characters, at most {MAX_FIELD_CHARS}"
        )
    return text


def _key(text: str) -> str:
    """Comparison key: case- and whitespace-insensitive, ignoring the image placeholder."""
    return " ".join(text.replace(IMAGE_PLACEHOLDER, " ").split()).casefold()


def _with_placeholder(query: str) -> str:
    return query if IMAGE_PLACEHOLDER in query else f"{IMAGE_PLACEHOLDER}\n{query}"


def _preview(text: str, limit: int = 60) -> str:
    """``text`` quoted for a detail message, shortened so details stay one short line."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for wrong_type details."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
