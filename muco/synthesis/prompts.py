"""The versioned prompt that asks an MLLM to write the M3T turns of one image as JSON.

The prompt serves a local Qwen2-VL-Instruct model and any chat model behind an OpenAI-compatible
API alike: :data:`SYSTEM_PROMPT` is the system message, :func:`build_prompt` the user
instruction (the generator attaches the image to that message), and
:func:`response_json_schema` the answer's JSON Schema for servers with guided JSON decoding.
:mod:`muco.synthesis.parsing` turns the answer into :class:`~muco.synthesis.content.M3TContent`.

The answer is one JSON object::

    {"description": "...",
     "turns": [{"type": "classification", "queries": ["...", "...", "..."],
                "answer": "...", "answer_sentence": "...", "negative": "..."}, ...]}

Only ``turns=7`` gives the M3T turn types their full meaning; a smaller ``turns`` asks for the
first ``turns`` kinds of :data:`TURN_KINDS` (turn i still has type i).
"""

from __future__ import annotations

import json
from typing import Any

# Part of the synthesis cache key and of every record's provenance: any change to the prompt
# text, the answer format or the schema below must come with a new version string, or cached
# answers to the old prompt would be reused as if they answered the new one.
PROMPT_VERSION = "m3t-v1"

DEFAULT_TURNS = 7
DEFAULT_PARAPHRASES = 3

# The turn kinds in M3T order, as named in the JSON answer; turn i has TurnType(i).
TURN_KINDS: tuple[str, ...] = (
    "classification",
    "global_vqa",
    "global_vqa",
    "local_vqa",
    "local_vqa",
    "creative_vqa",
    "retrieval",
)

# What each kind asks for; precise enough that the model keeps the kinds apart.
_KIND_GUIDE: dict[str, str] = {
    "classification": (
        'the query asks what category the image shows (e.g. "What is the main object category '
        'of this image?"); the answer is a short category label of one to three words (e.g. '
        '"golden retriever", "kitchen", "red sports car")'
    ),
    "global_vqa": (
        "a question about the image as a whole: the kind of scene or setting, the time of day, "
        "the weather or lighting, the number of objects of a kind, the main activity; separate "
        "global_vqa turns ask different questions"
    ),
    "local_vqa": (
        "a question about one specific object or region, named by its position or attributes "
        '(e.g. "What colour is the mug on the left side of the table?"); it asks about the '
        "object's attribute, material, state, text, or its relation to a neighbouring object; "
        "separate local_vqa turns are about different objects or regions"
    ),
    "creative_vqa": (
        "an imaginative question (what might happen next, what the scene could be used for, "
        "how a person in it might feel, a good title for it) whose answer is still grounded in "
        "what is visible in the image"
    ),
    "retrieval": (
        'the query asks for a caption or a description of the image (e.g. "Write a one-sentence '
        'caption for this image."); the answer is a concise caption of one sentence'
    ),
}

SYSTEM_PROMPT = (
    "You are a meticulous visual annotator writing training data for an image-text retrieval "
    "model. You look carefully at the image you are given, you state only what is clearly "
    "visible in it, you never guess, and you answer with a single JSON object and nothing else."
)


def turn_kinds(turns: int = DEFAULT_TURNS) -> tuple[str, ...]:
    """The JSON type names of the first ``turns`` turns; ValueError unless 1 <= turns <= 7."""
    if not 1 <= turns <= len(TURN_KINDS):
        raise ValueError(f"turns must be between 1 and {len(TURN_KINDS)}, got {turns}")
    return TURN_KINDS[:turns]


def _check_paraphrases(paraphrases: int) -> None:
    if paraphrases < 1:
        raise ValueError(f"paraphrases must be at least 1, got {paraphrases}")


def build_prompt(turns: int = DEFAULT_TURNS, paraphrases: int = DEFAULT_PARAPHRASES) -> str:
    """The user instruction asking for ``turns`` turns with ``paraphrases`` queries each.

    The image is not part of the text: the generator attaches it to the same user message.
    """
    kinds = turn_kinds(turns)
    _check_paraphrases(paraphrases)
    order = "\n".join(f"{i}. {kind}" for i, kind in enumerate(kinds, start=1))
    # Each kind is explained once, in order of first appearance, even when it fills two turns.
    guide = "\n".join(f"- {kind}: {_KIND_GUIDE[kind]}." for kind in dict.fromkeys(kinds))
    skeleton = _skeleton(kinds, paraphrases)
    return f"""\
Write training data about the attached image: a detailed description of it and exactly \
{turns} query-answer turns.

The "description" comes first: describe the image in detail, covering the main subjects and \
their attributes (colour, shape, size, material, count), their positions and relations, the \
setting, and any legible text. Mention only what is visible.

Then write exactly {turns} turns of these kinds, in this order:
{order}

What each kind asks for:
{guide}

Every turn has these fields:
- "type": the kind of the turn, spelled exactly as above;
- "queries": exactly {paraphrases} different paraphrases of the query (the same request in \
different words); a query refers to "the image" or "this image" and does not give the answer \
away;
- "answer": the short target text: a label, a word or a short phrase (for retrieval, the \
caption);
- "answer_sentence": the answer stated as one complete sentence;
- "negative": a hard negative: an answer of the same form and length as "answer" that sounds \
plausible but is wrong for this image, e.g. the answer with one attribute changed (another \
colour, count, object or position); it must differ from the answer.

Rules:
- Every answer must be verifiable by looking at the image. No speculation about anything that \
is not visible (names, brands, places, intentions); the creative turn may imagine, but its \
answer must rest on visible details.
- Write plain English text: no markdown, no line breaks inside strings, no empty strings.
- Reply with the JSON object only, without code fences or any text before or after it, in \
exactly this format:
{skeleton}
"""


def _skeleton(kinds: tuple[str, ...], paraphrases: int) -> str:
    """The answer format, every value replaced by what belongs there; one line per turn keeps
    the prompt short while showing the order of the kinds."""
    turns = ",\n    ".join(
        json.dumps(
            {
                "type": kind,
                "queries": [f"<paraphrase {j} of the query>" for j in range(1, paraphrases + 1)],
                "answer": "<short answer>",
                "answer_sentence": "<the answer as one full sentence>",
                "negative": "<plausible but wrong answer of the same form>",
            }
        )
        for kind in kinds
    )
    description = json.dumps("<detailed description of the image>")
    return f'{{\n  "description": {description},\n  "turns": [\n    {turns}\n  ]\n}}'


def response_json_schema(
    turns: int = DEFAULT_TURNS, paraphrases: int = DEFAULT_PARAPHRASES
) -> dict[str, Any]:
    """JSON Schema of the answer, for guided decoding (vLLM ``guided_json``, OpenAI
    ``response_format={"type": "json_schema", ...}``).

    It fixes the array lengths, the keys and their order (guided decoders emit properties in
    schema order, so the description is written before the turns it grounds). The turn type
    is an enum of the kind names rather than a per-position ``prefixItems`` constraint, which
    not every guided-decoding backend accepts; :func:`~muco.synthesis.parsing.parse_response`
    checks the order.
    """
    kinds = turn_kinds(turns)
    _check_paraphrases(paraphrases)
    turn = {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": list(dict.fromkeys(kinds))},
            "queries": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": paraphrases,
                "maxItems": paraphrases,
            },
            "answer": {"type": "string"},
            "answer_sentence": {"type": "string"},
            "negative": {"type": "string"},
        },
        "required": ["type", "queries", "answer", "answer_sentence", "negative"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "description": {"type": "string"},
            "turns": {"type": "array", "items": turn, "minItems": turns, "maxItems": turns},
        },
        "required": ["description", "turns"],
        "additionalProperties": False,
    }
