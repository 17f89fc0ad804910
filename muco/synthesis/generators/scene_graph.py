"""The default offline generator: every field of the M3T turns derived from the scene graph.

Answers are correct by construction, and :func:`check_content` re-derives them from the scene
graph so a test can verify every record of the pool. The seven turns (METHODS.md §2):

0. classification: the most prominent object (the largest; ties go to reading order);
1. global VQA: how many objects; 2. global VQA: the background colour;
3. local VQA: the colour of an object named by shape (and maybe size) and cell;
4. local VQA: what is in a cell, which shape is in a cell, or what lies left of / right of /
   above / below an object (asked only when exactly one object answers it);
5. creative VQA: a story title, a party guest list, a line of verse (all objects, in reading
   order) or, when one object is strictly the largest, who the parent of the shape family is;
6. retrieval: a caption naming every object with size, colour, shape and cell, plus the
   background.

Queries always name cells as "the <cell> cell" and objects as "<size> <colour> <shape>", so
:func:`check_content` can parse them back. Hard negatives change exactly one attribute of one
object (or the count, background or colour asked about), so they stay plausible. Outside the
"test_unseen" split no text ever pairs a held-out colour with its shape, negatives included,
which keeps the compositional-generalisation benchmark clean.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from muco.images import scenes
from muco.images.scenes import BACKGROUNDS, CELL_NAMES, COLOURS, SHAPES, SIZES, Scene, SceneObject
from muco.synthesis.content import IMAGE_PLACEHOLDER, M3T_TURN_TYPES, M3TContent, TurnType
from muco.synthesis.generators.base import (
    Generator,
    Rejection,
    ResultCallback,
    SynthesisInput,
)

# Part of the synthesis cache key and of every record's provenance: bump it whenever a
# template, an answer format or a negative rule changes, so cached records are regenerated.
TEMPLATE_VERSION = "sg-v1"

MAX_TURNS = len(M3T_TURN_TYPES)
# The config's upper bound; every query kind below has at least this many distinct phrasings.
MAX_PARAPHRASES = 8

Label = tuple[str, str, str]  # (size, colour, shape), the order describe_object writes them in

_HELD_OUT_PAIRS = scenes.held_out_pairs()
_NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_VOCABULARIES: tuple[tuple[str, ...], ...] = (tuple(SIZES), tuple(COLOURS), SHAPES)
_PREDICATE_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}

# Lead-ins multiply the core phrasings; none contains a vocabulary word the checks parse.
_LEAD_INS = ("", "Look at the image. ", "See the picture. ", "About this picture: ")

_CLASSIFICATION = (
    "What is the most prominent object in this image?",
    "Name the most prominent object in the picture.",
    "Which object is the most prominent here?",
    "Classify the most prominent object in this image.",
)
_COUNT = (
    "How many objects are in this image?",
    "Count the objects in the picture.",
    "How many shapes can you see?",
    "What is the number of objects shown?",
)
_BACKGROUND = (
    "What colour is the background?",
    "Which colour is the background of this picture?",
    "Name the background colour.",
    "What is the colour of the backdrop behind the shapes?",
)
_OBJECT_COLOUR = (
    "What colour is the {ref} in the {cell} cell?",
    "Which colour does the {ref} in the {cell} cell have?",
    "Tell me the colour of the {ref} in the {cell} cell.",
    "The {ref} in the {cell} cell: what colour is it?",
)
_CELL_OBJECT = (
    "What is in the {cell} cell?",
    "Describe the object in the {cell} cell.",
    "Which object sits in the {cell} cell?",
    "What can you see in the {cell} cell?",
)
_CELL_SHAPE = (
    "Which shape is in the {cell} cell?",
    "What shape is the object in the {cell} cell?",
    "Name the shape in the {cell} cell.",
    "What kind of shape occupies the {cell} cell?",
)
_RELATION = (
    "What is {predicate} the {anchor} in the {cell} cell?",
    "Which object is {predicate} the {anchor} in the {cell} cell?",
    "Name the object {predicate} the {anchor} in the {cell} cell.",
    "What do you see {predicate} the {anchor} in the {cell} cell?",
)
_RETRIEVAL = (
    "Find a caption for this image.",
    "Retrieve the caption that describes this picture.",
    "Which caption matches this image?",
    "Find the text that describes this image.",
)
# Caption frames: objects as "a <size> <colour> <shape> in the <cell> cell", reading order.
_CAPTIONS = (
    "{objects} on a {background} background",
    "A {background} background with {objects}",
    "On a {background} background: {objects}",
)


class _Creative(NamedTuple):
    """A creative prompt and its answer frame; ``{objects}`` lists every object."""

    prompts: tuple[str, ...]
    answer: str


_ENSEMBLES = (
    _Creative(
        (
            "Write a one-line story title about this picture.",
            "Invent a book title inspired by this image.",
            "Give this picture a fairy-tale title.",
            "Suggest a title for a short story about this image.",
        ),
        "The tale of {objects} on a {background} background",
    ),
    _Creative(
        (
            "Imagine the shapes are guests at a party. Who is on the guest list?",
            "If this picture were a party, who came?",
            "Pretend the objects are party guests and list them.",
            "Who would be invited if these shapes threw a party?",
        ),
        "The guests are {objects}, dancing on a {background} floor",
    ),
    _Creative(
        (
            "Write one line of a poem about this picture.",
            "Compose a single poetic line describing this image.",
            "Turn this picture into one line of verse.",
            "Write a dreamy line of verse about these shapes.",
        ),
        "Under a {background} sky rest {objects}",
    ),
)
_FAMILY = _Creative(
    (
        "If these shapes were a family, who would be the parent?",
        "Imagine the objects are a family. Which one is the grown-up?",
        "If the shapes were a family, who would be the eldest?",
        "Pretend these shapes are a family: who is the parent?",
    ),
    "The {object} in the {cell} cell would lead the family, because it is the biggest",
)


class _Turn(NamedTuple):
    queries: tuple[str, ...]
    pos: str
    sentence: str
    neg: str


# --- scene facts -------------------------------------------------------------------------------


def _label(obj: SceneObject) -> Label:
    return (obj.size, obj.colour, obj.shape)


def _text(label: Label) -> str:
    return " ".join(label)


def _reading_order(scene: Scene) -> list[SceneObject]:
    return sorted(scene.objects, key=lambda obj: (obj.row, obj.col))


def _most_prominent(scene: Scene) -> SceneObject:
    # min() keeps the first of equals, so ties go to the earliest object in reading order.
    return min(_reading_order(scene), key=lambda obj: -SIZES[obj.size])


def _unique_largest(scene: Scene) -> SceneObject | None:
    """The strictly largest object of a scene with two or more objects, else None."""
    top = max(SIZES[obj.size] for obj in scene.objects)
    largest = [obj for obj in scene.objects if SIZES[obj.size] == top]
    return largest[0] if len(scene.objects) > 1 and len(largest) == 1 else None


def _unique_relations(scene: Scene) -> list[tuple[int, str, int]]:
    """``(subject, predicate, anchor)`` where the subject is the only object so related."""
    subjects: dict[tuple[int, str], list[int]] = {}
    for subject, predicate, anchor in scenes.relations(scene):
        subjects.setdefault((anchor, predicate), []).append(subject)
    return [
        (found[0], predicate, anchor)
        for (anchor, predicate), found in subjects.items()
        if len(found) == 1
    ]


def _allows_held_out(scene: Scene) -> bool:
    return scene.split == "test_unseen"


def _object_list(objects: Sequence[str]) -> str:
    return objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _scene_stream(scene: Scene, seed: int) -> np.random.Generator:
    # A stable hash of the id (Python's hash() is salted per process) keeps output reproducible.
    digest = hashlib.sha256(scene.scene_id.encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "big")])


# --- randomness helpers ------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _queries(rng: np.random.Generator, cores: Sequence[str], count: int) -> tuple[str, ...]:
    """``count`` distinct (lead-in, core) phrasings, each after the image placeholder."""
    combos = rng.choice(len(_LEAD_INS) * len(cores), size=count, replace=False)
    return tuple(
        f"{IMAGE_PLACEHOLDER}\n{_LEAD_INS[int(c) % len(_LEAD_INS)]}"
        f"{cores[int(c) // len(_LEAD_INS)]}"
        for c in combos
    )


def _mutated(
    label: Label, rng: np.random.Generator, allow_held_out: bool, forbidden: Collection[Label] = ()
) -> Label:
    """``label`` with exactly one attribute changed, never to a label in ``forbidden``.

    The attribute is drawn first, so sizes (two alternatives) change as often as colours and
    shapes (seven each).
    """
    per_attribute = []
    for position, vocabulary in enumerate(_VOCABULARIES):
        candidates = [
            (*label[:position], value, *label[position + 1 :])
            for value in vocabulary
            if value != label[position]
        ]
        allowed = [
            c for c in candidates if c not in forbidden and (allow_held_out or not _is_held_out(c))
        ]
        if allowed:
            per_attribute.append(allowed)
    return _pick(rng, _pick(rng, per_attribute))


def _one_object_changed(
    labels: Sequence[Label], rng: np.random.Generator, allow_held_out: bool
) -> list[Label]:
    """``labels`` with one attribute of one randomly chosen object changed."""
    changed = int(rng.integers(len(labels)))
    result = list(labels)
    result[changed] = _mutated(labels[changed], rng, allow_held_out)
    return result


def _is_held_out(label: Label) -> bool:
    return (label[1], label[2]) in _HELD_OUT_PAIRS


# --- the seven turns ---------------------------------------------------------------------------


def _classification(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    queries = _queries(rng, _CLASSIFICATION, paraphrases)
    label = _label(_most_prominent(scene))
    present = {_label(obj) for obj in scene.objects}
    neg = _mutated(label, rng, _allows_held_out(scene), forbidden=present)
    sentence = f"The most prominent object is a {_text(label)}."
    return _Turn(queries, _text(label), sentence, _text(neg))


def _count(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    queries = _queries(rng, _COUNT, paraphrases)
    n = len(scene.objects)
    wrong = _pick(rng, [m for m in (n - 1, n + 1) if 1 <= m <= len(_NUMBER_WORDS)])
    word = _NUMBER_WORDS[n - 1]
    verb, noun = ("is", "object") if n == 1 else ("are", "objects")
    sentence = f"There {verb} {word} {noun} in the image."
    return _Turn(queries, word, sentence, _NUMBER_WORDS[wrong - 1])


def _background(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    queries = _queries(rng, _BACKGROUND, paraphrases)
    neg = _pick(rng, [name for name in BACKGROUNDS if name != scene.background])
    return _Turn(queries, scene.background, f"The background is {scene.background}.", neg)


def _object_colour(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    target = _pick(rng, scene.objects)
    refs = (f"{target.size} {target.shape}", target.shape)
    cores = [t.format(ref=ref, cell=target.cell) for t in _OBJECT_COLOUR for ref in refs]
    queries = _queries(rng, cores, paraphrases)
    # The hardest negative is a colour the picture does show, on another object: only
    # grounding the question in the right cell tells it apart.
    distractors = sorted({obj.colour for obj in scene.objects} - {target.colour})
    neg = _pick(rng, distractors or [c for c in COLOURS if c != target.colour])
    sentence = f"The {target.size} {target.shape} in the {target.cell} cell is {target.colour}."
    return _Turn(queries, target.colour, sentence, neg)


def _local(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    relations = _unique_relations(scene)
    kinds = ["object", "shape", "relation"] if relations else ["object", "shape"]
    kind = _pick(rng, kinds)
    held_out_ok = _allows_held_out(scene)
    if kind == "relation":
        subject_index, predicate, anchor_index = _pick(rng, relations)
        subject, anchor = scene.objects[subject_index], scene.objects[anchor_index]
        phrase = _PREDICATE_PHRASES[predicate]
        anchor_text = _text(_label(anchor))
        cores = [
            t.format(predicate=phrase, anchor=anchor_text, cell=anchor.cell) for t in _RELATION
        ]
        answer = _text(_label(subject))
        sentence = f"The {answer} is {phrase} the {anchor_text} in the {anchor.cell} cell."
        neg = _text(_mutated(_label(subject), rng, held_out_ok))
        return _Turn(_queries(rng, cores, paraphrases), answer, sentence, neg)
    target = _pick(rng, scene.objects)
    if kind == "shape":
        cores = [t.format(cell=target.cell) for t in _CELL_SHAPE]
        sentence = f"The shape in the {target.cell} cell is a {target.shape}."
        # Shapes elsewhere in the picture first, as for colours in turn 3.
        distractors = sorted({obj.shape for obj in scene.objects} - {target.shape})
        neg = _pick(rng, distractors or [s for s in SHAPES if s != target.shape])
        return _Turn(_queries(rng, cores, paraphrases), target.shape, sentence, neg)
    cores = [t.format(cell=target.cell) for t in _CELL_OBJECT]
    answer = _text(_label(target))
    sentence = f"The {target.cell} cell holds a {answer}."
    neg = _text(_mutated(_label(target), rng, held_out_ok))
    return _Turn(_queries(rng, cores, paraphrases), answer, sentence, neg)


def _creative(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    largest = _unique_largest(scene)
    kinds: list[_Creative] = [*_ENSEMBLES, _FAMILY] if largest is not None else [*_ENSEMBLES]
    kind = _pick(rng, kinds)
    queries = _queries(rng, kind.prompts, paraphrases)
    held_out_ok = _allows_held_out(scene)
    if kind is _FAMILY:
        label = _label(largest)
        neg_label = _mutated(label, rng, held_out_ok)
        pos = kind.answer.format(object=_text(label), cell=largest.cell) + "."
        neg = kind.answer.format(object=_text(neg_label), cell=largest.cell) + "."
        return _Turn(queries, pos, pos, neg)
    labels = [_label(obj) for obj in _reading_order(scene)]
    neg_labels = _one_object_changed(labels, rng, held_out_ok)
    pos = _ensemble_answer(kind, scene.background, labels)
    neg = _ensemble_answer(kind, scene.background, neg_labels)
    return _Turn(queries, pos, pos, neg)


def _ensemble_answer(kind: _Creative, background: str, labels: Sequence[Label]) -> str:
    objects = _object_list([f"the {_text(label)}" for label in labels])
    return _capitalised(kind.answer.format(objects=objects, background=background)) + "."


def _caption(scene: Scene, frame: str, labels: Sequence[Label]) -> str:
    cells = [obj.cell for obj in _reading_order(scene)]
    objects = _object_list(
        [f"a {_text(label)} in the {cell} cell" for label, cell in zip(labels, cells, strict=True)]
    )
    return _capitalised(frame.format(objects=objects, background=scene.background)) + "."


def _retrieval(scene: Scene, rng: np.random.Generator, paraphrases: int) -> _Turn:
    queries = _queries(rng, _RETRIEVAL, paraphrases)
    frame = _pick(rng, _CAPTIONS)
    labels = [_label(obj) for obj in _reading_order(scene)]
    neg_labels = _one_object_changed(labels, rng, _allows_held_out(scene))
    pos = _caption(scene, frame, labels)
    return _Turn(queries, pos, pos, _caption(scene, frame, neg_labels))


_BUILDERS: tuple[Callable[[Scene, np.random.Generator, int], _Turn], ...] = (
    _classification,
    _count,
    _background,
    _object_colour,
    _local,
    _creative,
    _retrieval,
)


def content_for_scene(scene: Scene, seed: int, paraphrases: int, turns: int = 7) -> M3TContent:
    """The first ``turns`` M3T turns about ``scene``; a pure function of its arguments."""
    if not 1 <= turns <= MAX_TURNS:
        raise ValueError(f"turns must be in 1..{MAX_TURNS}, got {turns}")
    if not 1 <= paraphrases <= MAX_PARAPHRASES:
        raise ValueError(f"paraphrases must be in 1..{MAX_PARAPHRASES}, got {paraphrases}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    rng = _scene_stream(scene, seed)
    built = [build(scene, rng, paraphrases) for build in _BUILDERS[:turns]]
    return M3TContent(
        qry=tuple(turn.queries for turn in built),
        pos_text=tuple(turn.pos for turn in built),
        pos_sentence=tuple(turn.sentence for turn in built),
        neg_text=tuple(turn.neg for turn in built),
        # The caption frame is fixed here so the description does not depend on `turns`.
        qry_sentence=_caption(scene, _CAPTIONS[0], [_label(o) for o in _reading_order(scene)]),
        turn_types=M3T_TURN_TYPES[:turns],
    )


class SceneGraphM3TGenerator(Generator):
    """Offline generator reading each image's scene-graph JSON; see the module docstring."""

    kind = "scene_graph"

    def __init__(self, seed: int = 0, paraphrases: int = 3, turns: int = 7) -> None:
        if not 1 <= turns <= MAX_TURNS:
            raise ValueError(f"turns must be in 1..{MAX_TURNS}, got {turns}")
        if not 1 <= paraphrases <= MAX_PARAPHRASES:
            raise ValueError(f"paraphrases must be in 1..{MAX_PARAPHRASES}, got {paraphrases}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        self.paraphrases = paraphrases
        self.turns = turns

    def identity(self) -> dict[str, Any]:
        return {
            "generator": self.kind,
            "model": f"scene-graph-{TEMPLATE_VERSION}",
            "prompt_version": TEMPLATE_VERSION,
            "sampling": {"seed": self.seed, "paraphrases": self.paraphrases},
        }

    def generate(self, inputs: Sequence[SynthesisInput], on_result: ResultCallback) -> None:
        for item in inputs:
            scene = _load_scene(item)
            if isinstance(scene, Rejection):
                on_result(item, scene)
            else:
                on_result(item, content_for_scene(scene, self.seed, self.paraphrases, self.turns))


def _load_scene(item: SynthesisInput) -> Scene | Rejection:
    path = item.scene_graph
    if path is None:
        return Rejection("missing_scene_graph", f"image {item.image_id} has no scene graph")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Rejection("missing_scene_graph", f"{path} does not exist")
    except (OSError, UnicodeDecodeError) as error:
        return Rejection("invalid_scene_graph", f"{path} is unreadable: {error}")
    try:
        return scenes.scene_from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        # json.JSONDecodeError is a ValueError; the others come from a wrongly shaped record.
        return Rejection(
            "invalid_scene_graph", f"{path} is not a scene graph: {type(error).__name__}: {error}"
        )


# --- checking ----------------------------------------------------------------------------------


def _alternation(words: Collection[str]) -> str:
    # Longest first, so "top left" wins over "top" at the same position.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_SIZE = _alternation(SIZES)
_COLOUR = _alternation(COLOURS)
_SHAPE = _alternation(SHAPES)
_CELL = _alternation(CELL_NAMES.values())
_LABEL_RE = re.compile(rf"\b({_SIZE}) ({_COLOUR}) ({_SHAPE})\b", re.IGNORECASE)
_PLACED_RE = re.compile(rf"\b({_SIZE}) ({_COLOUR}) ({_SHAPE}) in the ({_CELL}) cell\b", re.I)
_CELL_RE = re.compile(rf"\bthe ({_CELL}) cell\b", re.IGNORECASE)
_SHAPE_RE = re.compile(rf"\b({_SHAPE})\b", re.IGNORECASE)
_SIZED_SHAPE_RE = re.compile(rf"\b({_SIZE}) ({_SHAPE})\b", re.IGNORECASE)
_PREDICATE_RE = re.compile(rf"\b({_alternation(_PREDICATE_PHRASES.values())})\b", re.I)
_BACKGROUND_RE = re.compile(
    rf"\b({_alternation(BACKGROUNDS)}) (?:background|floor|sky)\b", re.IGNORECASE
)
_FULL_LABEL_RE = re.compile(rf"({_SIZE}) ({_COLOUR}) ({_SHAPE})")


def _labels_in(text: str) -> list[Label]:
    return [tuple(m.lower() for m in found) for found in _LABEL_RE.findall(text)]


def _placed_in(text: str) -> list[tuple[Label, str]]:
    return [
        ((size.lower(), colour.lower(), shape.lower()), cell.lower())
        for size, colour, shape, cell in _PLACED_RE.findall(text)
    ]


def _as_label(text: str) -> Label | None:
    found = _FULL_LABEL_RE.fullmatch(text)
    return None if found is None else (found[1], found[2], found[3])


def _attribute_changes(a: Sequence[Label], b: Sequence[Label]) -> int:
    """How many attributes differ between two equally long label lists."""
    return sum(x != y for la, lb in zip(a, b, strict=True) for x, y in zip(la, lb, strict=True))


def _one_label_apart(pos: str, neg: str) -> list[str]:
    """Problems unless both are labels and ``neg`` changes exactly one attribute of ``pos``."""
    a, b = _as_label(pos), _as_label(neg)
    if a is None or b is None:
        return [f"{pos!r} / {neg!r} are not both '<size> <colour> <shape>' labels"]
    if _attribute_changes([a], [b]) != 1:
        return [f"negative {neg!r} does not change exactly one attribute of {pos!r}"]
    return []


def _object_at(scene: Scene, cell: str) -> SceneObject | None:
    return next((obj for obj in scene.objects if obj.cell == cell), None)


def _queried_object(scene: Scene, query: str) -> tuple[SceneObject | None, list[str]]:
    """The object in the one cell ``query`` names, or problems."""
    cells = [c.lower() for c in _CELL_RE.findall(query)]
    if len(cells) != 1:
        return None, [f"query {query!r} names {len(cells)} cells, expected 1"]
    obj = _object_at(scene, cells[0])
    if obj is None:
        return None, [f"query {query!r} asks about the empty {cells[0]} cell"]
    return obj, []


def _check_classification(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    expected = _text(_label(_most_prominent(scene)))
    problems = [] if pos == expected else [f"answer {pos!r}, expected {expected!r}"]
    problems += _one_label_apart(expected, neg)
    if _as_label(neg) in {_label(obj) for obj in scene.objects}:
        problems.append(f"negative {neg!r} describes an object of the scene")
    return problems


def _check_count(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    n = len(scene.objects)
    problems = [] if pos == _NUMBER_WORDS[n - 1] else [f"count {pos!r}, expected {n}"]
    if neg not in _NUMBER_WORDS or abs(_NUMBER_WORDS.index(neg) + 1 - n) != 1:
        problems.append(f"negative count {neg!r} is not {n} ± 1")
    return problems


def _check_background(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    problems = []
    if pos != scene.background:
        problems.append(f"background {pos!r}, expected {scene.background!r}")
    if neg not in BACKGROUNDS or neg == scene.background:
        problems.append(f"negative background {neg!r} is not another background")
    return problems


def _check_object_colour(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    problems: list[str] = []
    for query in qry:
        obj, found = _queried_object(scene, query)
        problems += found
        if obj is None:
            continue
        shapes = [s.lower() for s in _SHAPE_RE.findall(query)]
        if shapes != [obj.shape]:
            problems.append(f"query {query!r} names shapes {shapes}, the cell holds a {obj.shape}")
        sizes = [size.lower() for size, _ in _SIZED_SHAPE_RE.findall(query)]
        if sizes not in ([], [obj.size]):
            problems.append(f"query {query!r} names size {sizes}, the object is {obj.size}")
        if pos != obj.colour:
            problems.append(f"colour {pos!r}, expected {obj.colour!r} for {query!r}")
        if neg not in COLOURS or neg == obj.colour:
            problems.append(f"negative colour {neg!r} is not another colour")
    return problems


def _check_local(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    problems: list[str] = []
    for query in qry:
        predicates = [p.lower() for p in _PREDICATE_RE.findall(query)]
        if predicates:
            problems += _check_relation(scene, query, predicates, pos)
            problems += _one_label_apart(pos, neg)
            continue
        obj, found = _queried_object(scene, query)
        problems += found
        if obj is None:
            continue
        if pos in SHAPES:
            if pos != obj.shape:
                problems.append(f"shape {pos!r}, expected {obj.shape!r} for {query!r}")
            if neg not in SHAPES or neg == pos:
                problems.append(f"negative shape {neg!r} is not another shape")
        else:
            if pos != _text(_label(obj)):
                problems.append(f"object {pos!r}, expected {_text(_label(obj))!r} for {query!r}")
            problems += _one_label_apart(pos, neg)
    return problems


def _check_relation(scene: Scene, query: str, predicates: list[str], pos: str) -> list[str]:
    anchors = _placed_in(query)
    if len(predicates) != 1 or len(anchors) != 1:
        return [f"relation query {query!r} needs one predicate and one placed object"]
    label, cell = anchors[0]
    anchor = _object_at(scene, cell)
    if anchor is None or _label(anchor) != label:
        return [f"relation query {query!r} names an object that is not in the {cell} cell"]
    predicate = next(k for k, v in _PREDICATE_PHRASES.items() if v == predicates[0])
    index = scene.objects.index(anchor)
    subjects = [s for s, p, o in scenes.relations(scene) if p == predicate and o == index]
    if len(subjects) != 1:
        return [f"relation query {query!r} has {len(subjects)} answers, expected 1"]
    expected = _text(_label(scene.objects[subjects[0]]))
    return [] if pos == expected else [f"answer {pos!r}, expected {expected!r} for {query!r}"]


def _check_creative(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    placed, neg_placed = _placed_in(pos), _placed_in(neg)
    if placed:  # the family prompt names the one strictly largest object by its cell
        largest = _unique_largest(scene)
        if largest is None or placed != [(_label(largest), largest.cell)]:
            return [f"answer {pos!r} does not name the strictly largest object"]
        if len(neg_placed) != 1 or neg_placed[0][1] != largest.cell:
            return [f"negative {neg!r} does not name the {largest.cell} cell"]
        return _one_label_apart(_text(placed[0][0]), _text(neg_placed[0][0]))
    return _listing_problems(scene, pos, neg)


def _listing_problems(scene: Scene, pos: str, neg: str) -> list[str]:
    """An answer listing every object in reading order and a negative one attribute off."""
    expected = [_label(obj) for obj in _reading_order(scene)]
    problems = [] if _labels_in(pos) == expected else [f"{pos!r} does not list {expected}"]
    problems += _background_problems(scene, pos)
    neg_labels = _labels_in(neg)
    if len(neg_labels) != len(expected) or _attribute_changes(expected, neg_labels) != 1:
        problems.append(f"negative {neg!r} does not change exactly one attribute of one object")
    problems += _background_problems(scene, neg)
    return problems


def _background_problems(scene: Scene, text: str) -> list[str]:
    found = [b.lower() for b in _BACKGROUND_RE.findall(text)]
    return [] if found == [scene.background] else [f"{text!r} names background(s) {found}"]


def _caption_problems(scene: Scene, text: str) -> list[str]:
    expected = [(_label(obj), obj.cell) for obj in _reading_order(scene)]
    placed = _placed_in(text)
    problems = [] if placed == expected else [f"caption {text!r} does not list {expected}"]
    if len(_labels_in(text)) != len(placed):
        problems.append(f"caption {text!r} names an object without its cell")
    return problems + _background_problems(scene, text)


def _check_retrieval(scene: Scene, qry: Sequence[str], pos: str, neg: str) -> list[str]:
    problems = _caption_problems(scene, pos)
    placed, neg_placed = _placed_in(pos), _placed_in(neg)
    same_cells = [c for _, c in placed] == [c for _, c in neg_placed]
    if (
        not same_cells
        or _attribute_changes([x for x, _ in placed], [x for x, _ in neg_placed]) != 1
    ):
        problems.append(f"negative {neg!r} does not change exactly one attribute of one object")
    return problems + _background_problems(scene, neg)


_CHECKERS: dict[int, Callable[[Scene, Sequence[str], str, str], list[str]]] = {
    TurnType.CLASSIFICATION: _check_classification,
    TurnType.GLOBAL_VQA_1: _check_count,
    TurnType.GLOBAL_VQA_2: _check_background,
    TurnType.LOCAL_VQA_1: _check_object_colour,
    TurnType.LOCAL_VQA_2: _check_local,
    TurnType.CREATIVE_VQA: _check_creative,
    TurnType.RETRIEVAL: _check_retrieval,
}


def _form_problems(content: M3TContent) -> list[str]:
    """Shape-level rules every turn follows, whatever the scene."""
    problems = []
    for i, (qry, pos, sentence, neg) in enumerate(
        zip(content.qry, content.pos_text, content.pos_sentence, content.neg_text, strict=True)
    ):
        if len(set(qry)) != len(qry):
            problems.append(f"turn {i}: repeated query paraphrases")
        for query in qry:
            prefix, _, text = query.partition("\n")
            if prefix != IMAGE_PLACEHOLDER or not text.strip():
                problems.append(f"turn {i}: query {query!r} is empty or lacks the placeholder")
        if not pos.strip() or not neg.strip():
            problems.append(f"turn {i}: empty positive or negative")
        if pos.lower() == neg.lower():
            problems.append(f"turn {i}: negative equals the positive {pos!r}")
        if pos.rstrip(".").lower() not in sentence.lower():
            problems.append(f"turn {i}: sentence {sentence!r} does not state {pos!r}")
    return problems


def _held_out_problems(scene: Scene, content: M3TContent) -> list[str]:
    if _allows_held_out(scene):
        return []
    texts = [q for qry in content.qry for q in qry]
    texts += [*content.pos_text, *content.pos_sentence, *content.neg_text, content.qry_sentence]
    return [
        f"{text!r} names the held-out pair {label[1]} {label[2]}"
        for text in texts
        for label in _labels_in(text)
        if _is_held_out(label)
    ]


def check_content(scene: Scene, content: M3TContent) -> list[str]:
    """Re-derive every answer from ``scene``; the problems found, empty when ``content`` is right.

    Checks the turn types, the form of every turn (placeholder, distinct paraphrases, negative
    unlike the positive, sentence stating the answer), each answer against the scene graph
    (cells and shapes are parsed back from the queries), that each hard negative is wrong for
    this scene while changing one thing only, that the description lists exactly the scene's
    objects, and that no held-out (colour, shape) pair appears outside "test_unseen".
    """
    k = content.turns
    if not 1 <= k <= MAX_TURNS or content.turn_types != M3T_TURN_TYPES[:k]:
        return [f"turn types {content.turn_types} are not the first turns of {M3T_TURN_TYPES}"]
    problems = _form_problems(content)
    for i, turn_type in enumerate(content.turn_types):
        found = _CHECKERS[turn_type](
            scene, content.qry[i], content.pos_text[i], content.neg_text[i]
        )
        problems += [f"turn {i}: {problem}" for problem in found]
    problems += [f"qry_sentence: {p}" for p in _caption_problems(scene, content.qry_sentence)]
    return problems + _held_out_problems(scene, content)
