"""Tests for the scene-graph M3T generator (muco.synthesis.generators.scene_graph)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from muco.images import scenes
from muco.synthesis.content import IMAGE_PLACEHOLDER, M3T_TURN_TYPES, M3TContent
from muco.synthesis.generators.base import Outcome, Rejection, SynthesisInput
from muco.synthesis.generators.scene_graph import (
    TEMPLATE_VERSION,
    SceneGraphM3TGenerator,
    check_content,
    content_for_scene,
)

# The default profile's pool.
POOL_COUNTS = {"train": 600, "test": 100, "test_unseen": 100}


@pytest.fixture(scope="module")
def pool() -> list[scenes.Scene]:
    return scenes.generate_scenes(0, POOL_COUNTS)


@pytest.fixture(scope="module")
def contents(pool: list[scenes.Scene]) -> list[M3TContent]:
    return [content_for_scene(scene, seed=0, paraphrases=3) for scene in pool]


def _with_turn(content: M3TContent, field: str, turn: int, value: object) -> M3TContent:
    values = list(getattr(content, field))
    values[turn] = value
    return dataclasses.replace(content, **{field: tuple(values)})


# --- the acceptance test: every record of the pool is right ------------------------------------


def test_every_record_of_the_pool_is_right(
    pool: list[scenes.Scene], contents: list[M3TContent]
) -> None:
    assert len(pool) == sum(POOL_COUNTS.values())
    for scene, content in zip(pool, contents, strict=True):
        assert content.turn_types == (0, 1, 2, 3, 4, 5, 6)
        assert check_content(scene, content) == [], scene.scene_id


def test_every_record_is_right_with_the_most_paraphrases(pool: list[scenes.Scene]) -> None:
    for scene in pool[::10]:
        content = content_for_scene(scene, seed=5, paraphrases=8)
        assert check_content(scene, content) == [], scene.scene_id
        assert all(len(set(qry)) == 8 for qry in content.qry)


# --- check_content can fail --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(pool: list[scenes.Scene], contents: list[M3TContent]) -> tuple[scenes.Scene, M3TContent]:
    # A scene with several objects, so removing one from the caption leaves a caption.
    index = next(i for i, scene in enumerate(pool) if len(scene.objects) >= 3)
    return pool[index], contents[index]


def test_check_catches_a_wrong_count(sample: tuple[scenes.Scene, M3TContent]) -> None:
    scene, content = sample
    wrong = "nine" if len(scene.objects) != 9 else "eight"
    problems = check_content(scene, _with_turn(content, "pos_text", 1, wrong))
    assert any(p.startswith("turn 1:") for p in problems)


def test_check_catches_a_wrong_colour(sample: tuple[scenes.Scene, M3TContent]) -> None:
    scene, content = sample
    wrong = next(c for c in scenes.COLOURS if c not in (content.pos_text[3], content.neg_text[3]))
    problems = check_content(scene, _with_turn(content, "pos_text", 3, wrong))
    assert any(p.startswith("turn 3:") and "expected" in p for p in problems)


def test_check_catches_a_caption_missing_an_object(
    sample: tuple[scenes.Scene, M3TContent],
) -> None:
    scene, content = sample
    first = scenes.describe_object(min(scene.objects, key=lambda o: (o.row, o.col)))
    caption = content.pos_text[6]
    start = caption.lower().index(first)
    end = caption.index(", ", start) + 2
    shortened = caption[:start] + caption[end:]
    assert first not in shortened.lower()
    problems = check_content(scene, _with_turn(content, "pos_text", 6, shortened))
    assert any(p.startswith("turn 6:") for p in problems)
    problems = check_content(scene, dataclasses.replace(content, qry_sentence=shortened))
    assert any(p.startswith("qry_sentence:") for p in problems)


def test_check_catches_a_negative_equal_to_the_positive(
    sample: tuple[scenes.Scene, M3TContent],
) -> None:
    scene, content = sample
    for turn in range(7):
        planted = _with_turn(content, "neg_text", turn, content.pos_text[turn].upper())
        assert any(p.startswith(f"turn {turn}:") for p in check_content(scene, planted)), turn


def test_check_catches_a_wrong_background_and_a_missing_placeholder(
    sample: tuple[scenes.Scene, M3TContent],
) -> None:
    scene, content = sample
    other = next(b for b in scenes.BACKGROUNDS if b != scene.background)
    assert check_content(scene, _with_turn(content, "pos_text", 2, other))
    bare = tuple(q.removeprefix(f"{IMAGE_PLACEHOLDER}\n") for q in content.qry[0])
    assert check_content(scene, _with_turn(content, "qry", 0, bare))


def test_check_catches_content_for_another_scene(
    pool: list[scenes.Scene], contents: list[M3TContent]
) -> None:
    assert all(check_content(pool[i + 1], contents[i]) for i in range(50))


# --- determinism and identity ------------------------------------------------------------------


def test_same_scene_and_seed_give_identical_content(
    pool: list[scenes.Scene], contents: list[M3TContent]
) -> None:
    for scene, content in zip(pool[:50], contents[:50], strict=True):
        assert content_for_scene(scene, seed=0, paraphrases=3) == content


def test_another_seed_changes_the_phrasing(
    pool: list[scenes.Scene], contents: list[M3TContent]
) -> None:
    others = [content_for_scene(scene, seed=1, paraphrases=3) for scene in pool[:50]]
    changed = sum(a.qry != b.qry for a, b in zip(contents[:50], others, strict=True))
    assert changed > 25


def test_fewer_turns_are_the_first_turns(pool: list[scenes.Scene]) -> None:
    scene = pool[7]
    full = content_for_scene(scene, seed=0, paraphrases=3)
    for turns in range(1, 7):
        part = content_for_scene(scene, seed=0, paraphrases=3, turns=turns)
        assert part.turn_types == M3T_TURN_TYPES[:turns]
        assert part.qry == full.qry[:turns]
        assert part.pos_text == full.pos_text[:turns]
        assert part.neg_text == full.neg_text[:turns]
        assert part.qry_sentence == full.qry_sentence
        assert check_content(scene, part) == []


@pytest.mark.parametrize(("paraphrases", "turns"), [(0, 7), (9, 7), (3, 0), (3, 8)])
def test_out_of_range_arguments_are_refused(
    pool: list[scenes.Scene], paraphrases: int, turns: int
) -> None:
    with pytest.raises(ValueError):
        content_for_scene(pool[0], seed=0, paraphrases=paraphrases, turns=turns)
    with pytest.raises(ValueError):
        SceneGraphM3TGenerator(0, paraphrases, turns)


def test_identity() -> None:
    generator = SceneGraphM3TGenerator(seed=4, paraphrases=2)
    assert generator.kind == "scene_graph"
    assert generator.identity() == {
        "generator": "scene_graph",
        "model": f"scene-graph-{TEMPLATE_VERSION}",
        "prompt_version": TEMPLATE_VERSION,
        "sampling": {"seed": 4, "paraphrases": 2},
    }
    json.dumps(generator.identity())


# --- form and diversity ------------------------------------------------------------------------


def test_form_of_every_turn(contents: list[M3TContent]) -> None:
    for content in contents:
        assert content.qry_sentence.strip()
        for qry, pos, sentence, neg in zip(
            content.qry, content.pos_text, content.pos_sentence, content.neg_text, strict=True
        ):
            assert len(qry) == 3
            assert len(set(qry)) == 3
            assert all(q.startswith(f"{IMAGE_PLACEHOLDER}\n") for q in qry)
            assert all(q.removeprefix(f"{IMAGE_PLACEHOLDER}\n").strip() for q in qry)
            assert pos.strip() and sentence.strip() and neg.strip()
            assert pos.lower() != neg.lower()


def _turn4_kind(content: M3TContent) -> str:
    query = content.qry[4][0]
    if any(p in query for p in ("to the left of", "to the right of", "above", "below")):
        return "relation"
    return "shape" if content.pos_text[4] in scenes.SHAPES else "object"


def test_answers_and_templates_vary_across_the_pool(contents: list[M3TContent]) -> None:
    assert len({c.pos_text[0] for c in contents}) > 50
    assert len({c.pos_text[1] for c in contents}) == 5  # 1..5 objects per scene
    assert {c.pos_text[2] for c in contents} == set(scenes.BACKGROUNDS)
    assert {c.pos_text[3] for c in contents} == set(scenes.COLOURS)
    kinds = Counter(_turn4_kind(c) for c in contents)
    assert set(kinds) == {"relation", "shape", "object"}
    assert min(kinds.values()) > 100
    creative = Counter(c.pos_text[5].split(" ")[1] for c in contents)
    assert len(creative) >= 4  # title, guests, family, verse
    # Captions identify the image: only scenes with equal graphs (rare one-object ones) share one.
    assert len({c.pos_text[6] for c in contents}) > 0.98 * len(contents)
    # Every turn uses more than three distinct first phrasings across the pool.
    for turn in (0, 1, 2, 6):
        assert len({c.qry[turn][0] for c in contents}) > 3


def test_classification_negatives_change_every_kind_of_attribute(
    contents: list[M3TContent],
) -> None:
    changed = Counter()
    for content in contents:
        pos, neg = content.pos_text[0].split(), content.neg_text[0].split()
        changed.update(i for i, (a, b) in enumerate(zip(pos, neg, strict=True)) if a != b)
    assert set(changed) == {0, 1, 2}  # size, colour, shape


# --- generate() end to end ---------------------------------------------------------------------


def test_generate_end_to_end(tmp_path: Path, pool: list[scenes.Scene]) -> None:
    inputs = []
    for scene in pool[:3]:
        png, graph = scenes.write_scene(scene, 48, tmp_path)
        inputs.append(SynthesisInput(scene.scene_id, "0" * 64, png, graph))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json", encoding="utf-8")
    wrong_schema = tmp_path / "wrong.json"
    wrong_schema.write_text(json.dumps({"schema_version": 99}), encoding="utf-8")
    missing = tmp_path / "absent.json"
    inputs += [
        SynthesisInput("corrupt", "1" * 64, tmp_path / "corrupt.png", corrupt),
        SynthesisInput("wrong", "2" * 64, tmp_path / "wrong.png", wrong_schema),
        SynthesisInput("missing", "3" * 64, tmp_path / "absent.png", missing),
        SynthesisInput("no-graph", "4" * 64, tmp_path / "photo.jpg", None),
    ]
    results: list[tuple[SynthesisInput, Outcome]] = []
    SceneGraphM3TGenerator(seed=0, paraphrases=3).generate(
        inputs, lambda item, outcome: results.append((item, outcome))
    )

    assert [item for item, _ in results] == inputs
    for scene, (_, outcome) in zip(pool[:3], results[:3], strict=True):
        assert outcome == content_for_scene(scene, seed=0, paraphrases=3)
    reasons = [(o.reason, o.detail) for _, o in results[3:] if isinstance(o, Rejection)]
    assert [reason for reason, _ in reasons] == [
        "invalid_scene_graph",
        "invalid_scene_graph",
        "missing_scene_graph",
        "missing_scene_graph",
    ]
    assert "corrupt.json" in reasons[0][1]
    assert "wrong.json" in reasons[1][1]
    assert "absent.json" in reasons[2][1]
    assert "no-graph" in reasons[3][1]
