"""Packing M3T records: MuCo's multi-turn sequences and the single-turn baseline (METHODS.md §1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from muco.model import templates
from muco.model.special_tokens import EMB_TOKEN, IMAGE_PLACEHOLDER, MMEB_IMAGE_PLACEHOLDER
from muco.records import M3TRecord, write_shards
from muco.synthesis.content import M3TContent
from muco.training.packing import PackedDataset, pack_multi_turn, pack_single_turn

ROOT = Path("/images")
USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)


def _record(tag: str, turns: int = 7, pos_image_path: str = "") -> M3TRecord:
    # Markers Q{i} / A{i} tie each query turn to its positive; two paraphrases per turn.
    content = M3TContent(
        qry=tuple((f"{MMEB_IMAGE_PLACEHOLDER}\nQ{i} first", f"Q{i} second") for i in range(turns)),
        pos_text=tuple(f"A{i} {tag}" for i in range(turns)),
        pos_sentence=tuple(f"The answer is A{i}." for i in range(turns)),
        neg_text=tuple(f"N{i}" for i in range(turns)),
        qry_sentence=f"image {tag}",
        turn_types=tuple(range(turns)),
    )
    return M3TRecord(
        record_id=f"rec-{tag}",
        image_sha256=f"sha-{tag}",
        qry_image_path=f"scenes/{tag}.png",
        content=content,
        generator="scene_graph",
        generator_model="m",
        prompt_version="v",
        sampling={},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        pos_image_path=pos_image_path,
    )


def _markers(text: str, letter: str) -> list[int]:
    return [int(m) for turn in USER_TURN.findall(text) for m in re.findall(rf"{letter}(\d)", turn)]


def _chosen_paraphrases(row: dict[str, Any], query_text: str, order: tuple[int, ...]) -> list[str]:
    turns = USER_TURN.findall(query_text)
    chosen = []
    for position, turn in enumerate(order):
        first, second = row["qry"][turn]
        chosen.append(second if "second" in turns[position] else first)
    return chosen


def test_multi_turn_has_k_embeddings_per_side_and_the_image_once_in_the_first_turn() -> None:
    sample = pack_multi_turn(_record("a").to_row(), ROOT, 7, np.random.default_rng(0))
    assert sample.query_text.count(EMB_TOKEN) == 7
    assert sample.target_text.count(EMB_TOKEN) == 7
    assert sample.query_text.count(IMAGE_PLACEHOLDER) == 1
    assert MMEB_IMAGE_PLACEHOLDER not in sample.query_text
    assert IMAGE_PLACEHOLDER in USER_TURN.findall(sample.query_text)[0]
    assert IMAGE_PLACEHOLDER not in sample.target_text
    assert sample.query_image == ROOT / "scenes/a.png"
    assert sample.target_image is None
    assert (sample.image_id, sample.turns) == ("sha-a", 7)


def test_one_permutation_applies_to_both_sides_and_text_matches_the_template() -> None:
    row = _record("a").to_row()
    sample = pack_multi_turn(row, ROOT, 7, np.random.default_rng(1))
    order = list(sample.turn_order)
    assert sorted(order) == list(range(7)) and order != list(range(7))
    assert _markers(sample.query_text, "Q") == order
    assert _markers(sample.target_text, "A") == order
    positives = tuple(row["pos_text"][i] for i in order)
    assert sample.target_texts == positives
    queries = _chosen_paraphrases(row, sample.query_text, sample.turn_order)
    assert sample.query_text == templates.multi_turn(queries, has_image=True)
    assert sample.target_text == templates.multi_turn(positives, has_image=False)


def test_paraphrases_are_drawn_per_turn() -> None:
    row = _record("a").to_row()
    texts = {
        pack_multi_turn(row, ROOT, 7, np.random.default_rng(seed)).query_text for seed in range(5)
    }
    joined = "".join(texts)
    assert "first" in joined and "second" in joined


def test_target_image_sits_in_the_first_target_turn() -> None:
    row = _record("a", pos_image_path="targets/a.png").to_row()
    sample = pack_multi_turn(row, ROOT, 7, np.random.default_rng(0))
    assert sample.target_image == ROOT / "targets/a.png"
    assert sample.target_text.count(IMAGE_PLACEHOLDER) == 1
    assert USER_TURN.findall(sample.target_text)[0].startswith(IMAGE_PLACEHOLDER)


def test_record_with_more_turns_is_sub_sampled_then_shuffled() -> None:
    row = _record("a").to_row()
    subsets = set()
    for seed in range(20):
        sample = pack_multi_turn(row, ROOT, 3, np.random.default_rng(seed))
        assert sample.query_text.count(EMB_TOKEN) == 3 == sample.target_text.count(EMB_TOKEN)
        assert len(set(sample.turn_order)) == 3 and set(sample.turn_order) <= set(range(7))
        assert _markers(sample.target_text, "A") == list(sample.turn_order)
        subsets.add(frozenset(sample.turn_order))
    assert len(subsets) > 5


def test_record_with_fewer_turns_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="record rec-short has 3 turns, 7 needed"):
        pack_multi_turn(_record("short", turns=3).to_row(), ROOT, 7, np.random.default_rng(0))
    write_shards([_record("a"), _record("short", turns=3)], tmp_path, shard_size=10)
    with pytest.raises(ValueError, match="record rec-short with 3"):
        PackedDataset(tmp_path, ROOT, turns=7)


def test_public_record_without_hash_uses_its_image_path_as_identity() -> None:
    row = {**_record("a").to_row(), "image_sha256": None, "record_id": None}
    assert pack_multi_turn(row, ROOT, 7, np.random.default_rng(0)).image_id == ("path:scenes/a.png")
    with pytest.raises(ValueError, match=r"record with image scenes/a\.png has 7 turns"):
        pack_multi_turn(row, ROOT, 8, np.random.default_rng(0))


def test_dataset_is_deterministic_per_seed_epoch_and_index(tmp_path: Path) -> None:
    write_shards([_record(str(i)) for i in range(4)], tmp_path, shard_size=3)
    first = PackedDataset(tmp_path, ROOT, seed=5)
    second = PackedDataset(tmp_path, ROOT, seed=5)
    assert len(first) == 4
    assert [first[i] for i in range(4)] == [second[i] for i in range(4)]
    assert [first[i].image_id for i in range(4)] == [f"sha-{i}" for i in range(4)]
    assert len({first[i].turn_order for i in range(4)}) > 1
    orders = set()
    for epoch in range(4):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        assert first[0] == second[0]
        orders.add(first[0].turn_order)
    assert len(orders) > 1
    assert PackedDataset(tmp_path, ROOT, seed=6)[0] != PackedDataset(tmp_path, ROOT, seed=5)[0]
    with pytest.raises(IndexError):
        first[4]


def test_single_turn_packs_each_pair_in_the_single_turn_template() -> None:
    row = _record("a").to_row()
    samples = pack_single_turn(row, ROOT, np.random.default_rng(0))
    assert len(samples) == 7
    for turn, sample in enumerate(samples):
        assert (sample.turn_order, sample.turns, sample.image_id) == ((turn,), 1, "sha-a")
        assert sample.target_texts == (row["pos_text"][turn],)
        assert sample.query_text in {
            templates.single_turn(paraphrase, has_image=True) for paraphrase in row["qry"][turn]
        }
        assert sample.target_text == templates.single_turn(row["pos_text"][turn], has_image=False)
        assert sample.query_text.count(EMB_TOKEN) == 1 == sample.query_text.count(IMAGE_PLACEHOLDER)


def test_single_turn_dataset_has_one_sample_per_record_and_turn(tmp_path: Path) -> None:
    write_shards([_record("a"), _record("b")], tmp_path, shard_size=10)
    dataset = PackedDataset(tmp_path, ROOT, mode="single_turn", turns=7, seed=0)
    assert len(dataset) == 14
    pairs = [(dataset[i].image_id, dataset[i].turn_order) for i in range(14)]
    assert pairs == [(f"sha-{tag}", (turn,)) for tag in "ab" for turn in range(7)]


def test_single_turn_dataset_sub_samples_distinct_turns_per_record(tmp_path: Path) -> None:
    write_shards([_record("a"), _record("b")], tmp_path, shard_size=10)
    dataset = PackedDataset(tmp_path, ROOT, mode="single_turn", turns=3, seed=0)
    assert len(dataset) == 6
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for record in range(2):
            turns = [dataset[record * 3 + t].turn_order[0] for t in range(3)]
            assert len(set(turns)) == 3 and set(turns) <= set(range(7))


def test_unknown_mode_is_rejected(tmp_path: Path) -> None:
    write_shards([_record("a")], tmp_path, shard_size=10)
    with pytest.raises(ValueError, match="unknown packing mode 'pairs'"):
        PackedDataset(tmp_path, ROOT, mode="pairs")  # type: ignore[arg-type]


def test_hard_negatives_follow_the_turn_order_of_the_targets() -> None:
    row = _record("a").to_row()
    plain = pack_multi_turn(row, ROOT, 7, np.random.default_rng(1))
    sample = pack_multi_turn(row, ROOT, 7, np.random.default_rng(1), negatives=True)
    # The same draws: packing negatives changes nothing else about the sample.
    assert (sample.query_text, sample.target_text) == (plain.query_text, plain.target_text)
    assert plain.negative_text is None and plain.negative_texts == ()
    order = list(sample.turn_order)
    assert _markers(sample.negative_text, "N") == order
    assert sample.negative_texts == tuple(f"N{i}" for i in order)
    negatives = [f"N{i}" for i in order]
    assert sample.negative_text == templates.multi_turn(negatives, has_image=False)


def test_single_turn_hard_negative_is_its_turns_negative() -> None:
    samples = pack_single_turn(_record("a").to_row(), ROOT, np.random.default_rng(0), True)
    for turn, sample in enumerate(samples):
        assert sample.negative_texts == (f"N{turn}",)
        assert sample.negative_text == templates.single_turn(f"N{turn}", has_image=False)


def test_a_missing_hard_negative_names_the_record_and_turn(tmp_path: Path) -> None:
    row = _record("a").to_row()
    row["neg_text"] = [*row["neg_text"][:3], "", *row["neg_text"][4:]]
    # All 7 turns are packed, so turn 3 is among them whatever the order.
    with pytest.raises(ValueError, match=r"record rec-a has no hard negative .* turn 3"):
        pack_multi_turn(row, ROOT, 7, np.random.default_rng(0), negatives=True)
    assert pack_multi_turn(row, ROOT, 7, np.random.default_rng(0)).negative_text is None
    write_shards([_record("b")], tmp_path, shard_size=10)
    dataset = PackedDataset(tmp_path, ROOT, mode="single_turn", turns=7, negatives=True)
    assert [dataset[i].negative_texts for i in range(7)] == [(f"N{i}",) for i in range(7)]
