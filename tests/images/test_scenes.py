"""Tests for the procedural scene world (muco.images.scenes)."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from muco.images import scenes as sw

SEED = 1234


@pytest.fixture(scope="module")
def seen_scenes() -> list[sw.Scene]:
    return sw.generate_scenes(SEED, {"train": 1000, "test": 1000})


@pytest.fixture(scope="module")
def unseen_scenes() -> list[sw.Scene]:
    return sw.generate_scenes(SEED, {"test_unseen": 500})


def _probe(obj: sw.SceneObject, image_size: int) -> tuple[int, int]:
    """A pixel that must carry the object's colour: the centre, or a ring's stroke."""
    if obj.shape == "ring":
        left, top, _, bottom = sw.object_bbox(obj, image_size)
        return left + 1, (top + bottom - 1) // 2
    return math.floor(obj.center_x * image_size), math.floor(obj.center_y * image_size)


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


# --- vocabulary --------------------------------------------------------------------------------


def test_vocabulary_sizes_and_names() -> None:
    assert len(sw.SHAPES) >= 6 and len(set(sw.SHAPES)) == len(sw.SHAPES)
    assert len(sw.COLOURS) >= 8
    assert list(sw.SIZES) == ["small", "medium", "large"]
    assert sw.SIZES["small"] < sw.SIZES["medium"] < sw.SIZES["large"] < 1
    assert len(sw.BACKGROUNDS) >= 4
    assert sorted(sw.CELL_NAMES) == [(r, c) for r in range(3) for c in range(3)]
    assert sw.CELL_NAMES[(1, 1)] == "center"
    assert sw.CELL_POSITIONS["bottom left"] == (2, 0)


def test_colours_are_distinguishable() -> None:
    for a, b in itertools.combinations(sw.COLOURS.values(), 2):
        assert _distance(a, b) >= 80
    for background in sw.BACKGROUNDS.values():
        for colour in sw.COLOURS.values():
            assert _distance(background, colour) >= 100


# --- determinism -------------------------------------------------------------------------------


def test_same_inputs_give_equal_scene_and_png_bytes() -> None:
    for split in sw.SPLITS:
        a = sw.generate_scene(SEED, split, 7)
        b = sw.generate_scene(SEED, split, 7)
        assert a == b
        assert a.scene_id == f"{split}-000007"
        assert sw.png_bytes(sw.render_scene(a, 112)) == sw.png_bytes(sw.render_scene(b, 112))


def test_different_seeds_differ() -> None:
    a = [sw.generate_scene(SEED, "train", i) for i in range(20)]
    b = [sw.generate_scene(SEED + 1, "train", i) for i in range(20)]
    assert a != b


def test_scene_independent_of_split_count() -> None:
    small = sw.generate_scenes(SEED, {"train": 10})
    large = sw.generate_scenes(SEED, {"train": 100, "test": 5})
    assert small == large[:10]
    # Splits draw from separate streams: the same index gives different scenes.
    assert sw.generate_scene(SEED, "train", 3).objects != sw.generate_scene(SEED, "test", 3).objects


def test_generate_scenes_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown splits"):
        sw.generate_scenes(SEED, {"validation": 3})


# --- held-out combinations ---------------------------------------------------------------------


def test_held_out_pairs_cover_vocabulary() -> None:
    pairs = sw.held_out_pairs()
    everything = set(itertools.product(sw.COLOURS, sw.SHAPES))
    assert pairs < everything
    assert {shape for _, shape in pairs} == set(sw.SHAPES)
    assert {colour for colour, _ in pairs} == set(sw.COLOURS)
    assert 0.10 <= len(pairs) / len(everything) <= 0.15
    assert sw.held_out_pairs() == pairs


def test_seen_splits_never_use_held_out_pairs(seen_scenes: list[sw.Scene]) -> None:
    held_out = sw.held_out_pairs()
    for scene in seen_scenes:
        assert scene.split in {"train", "test"}
        assert all((obj.colour, obj.shape) not in held_out for obj in scene.objects)


def test_unseen_split_always_uses_a_held_out_pair(unseen_scenes: list[sw.Scene]) -> None:
    held_out = sw.held_out_pairs()
    used = Counter()
    for scene in unseen_scenes:
        pairs = {(obj.colour, obj.shape) for obj in scene.objects} & held_out
        assert pairs, scene.scene_id
        used.update(pairs)
    assert set(used) == held_out


# --- scene validity ----------------------------------------------------------------------------


def test_object_counts_cells_and_vocabulary_coverage(seen_scenes: list[sw.Scene]) -> None:
    sample = seen_scenes[:300]
    counts = Counter(len(scene.objects) for scene in sample)
    assert set(counts) == {1, 2, 3, 4, 5}
    for scene in sample:
        cells = [(obj.row, obj.col) for obj in scene.objects]
        assert len(set(cells)) == len(cells)
    objects = [obj for scene in sample for obj in scene.objects]
    assert {obj.shape for obj in objects} == set(sw.SHAPES)
    assert {obj.colour for obj in objects} == set(sw.COLOURS)
    assert {obj.size for obj in objects} == set(sw.SIZES)
    assert {scene.background for scene in sample} == set(sw.BACKGROUNDS)


def test_object_count_bounds_are_parameters() -> None:
    for index in range(100):
        scene = sw.generate_scene(SEED, "test_unseen", index, min_objects=2, max_objects=3)
        assert 2 <= len(scene.objects) <= 3
    with pytest.raises(ValueError):
        sw.generate_scene(SEED, "train", 0, min_objects=3, max_objects=2)


@pytest.mark.parametrize("image_size", [48, 112, 224])
def test_objects_stay_inside_their_cell(seen_scenes: list[sw.Scene], image_size: int) -> None:
    for scene in seen_scenes[:400]:
        for obj in scene.objects:
            left, top, right, bottom = sw.object_bbox(obj, image_size)
            c_left, c_top, c_right, c_bottom = sw.cell_box(obj.row, obj.col, image_size)
            assert c_left <= left < right <= c_right
            assert c_top <= top < bottom <= c_bottom


def test_scene_rejects_shared_cells() -> None:
    obj = sw.SceneObject("circle", "red", "small", 0, 0, 0.15, 0.15, 0.0)
    with pytest.raises(ValueError, match="share a cell"):
        sw.Scene("train-000000", "train", "white", (obj, obj))


# --- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [64, 112])
def test_rendered_pixels_match_the_scene_graph(
    seen_scenes: list[sw.Scene], unseen_scenes: list[sw.Scene], image_size: int
) -> None:
    for scene in seen_scenes[:150] + unseen_scenes[:150]:
        image = sw.render_scene(scene, image_size)
        assert image.mode == "RGB" and image.size == (image_size, image_size)
        background = sw.BACKGROUNDS[scene.background]
        for obj in scene.objects:
            assert image.getpixel(_probe(obj, image_size)) == sw.COLOURS[obj.colour], (
                scene.scene_id,
                sw.describe_object(obj),
            )
        occupied = {(obj.row, obj.col) for obj in scene.objects}
        for row, col in set(sw.CELL_NAMES) - occupied:
            left, top, _, _ = sw.cell_box(row, col, image_size)
            assert image.getpixel((left, top)) == background


def test_drawn_pixels_lie_inside_bbox(seen_scenes: list[sw.Scene]) -> None:
    image_size = 112
    for scene in seen_scenes[:150]:
        image = sw.render_scene(scene, image_size)
        background = Image.new("RGB", image.size, sw.BACKGROUNDS[scene.background])
        for obj in scene.objects:
            # Each cell holds one object, so the non-background pixels of a cell are its own.
            cell = sw.cell_box(obj.row, obj.col, image_size)
            drawn = ImageChops.difference(image.crop(cell), background.crop(cell)).getbbox()
            assert drawn is not None
            x0, y0, x1, y1 = drawn
            left, top, right, bottom = sw.object_bbox(obj, image_size)
            assert left <= cell[0] + x0 and top <= cell[1] + y0
            assert cell[0] + x1 <= right and cell[1] + y1 <= bottom


# --- relations ---------------------------------------------------------------------------------


def test_relations_of_hand_made_scene() -> None:
    top_left = sw.SceneObject("circle", "red", "medium", 0, 0, 0.5 / 3, 0.5 / 3, 0.0)
    right = sw.SceneObject("square", "blue", "small", 1, 2, 2.5 / 3, 1.5 / 3, 5.0)
    top = sw.SceneObject("star", "green", "large", 0, 1, 1.5 / 3, 0.5 / 3, -5.0)
    scene = sw.Scene("test-000000", "test", "black", (top_left, right))
    assert sw.relations(scene) == [
        (0, "left of", 1),
        (0, "above", 1),
        (1, "right of", 0),
        (1, "below", 0),
    ]
    assert {predicate for _, predicate, _ in sw.relations(scene)} == set(sw.PREDICATES)
    same_row = sw.Scene("test-000001", "test", "black", (top_left, top))
    assert sw.relations(same_row) == [(0, "left of", 1), (1, "right of", 0)]


def test_describe_object() -> None:
    obj = sw.SceneObject("circle", "red", "large", 1, 1, 0.5, 0.5, 0.0)
    assert sw.describe_object(obj) == "large red circle"
    assert obj.cell == "center"


# --- serialisation -----------------------------------------------------------------------------


def test_json_round_trip_is_exact(
    seen_scenes: list[sw.Scene], unseen_scenes: list[sw.Scene]
) -> None:
    for scene in seen_scenes[:50] + unseen_scenes[:50]:
        record = sw.scene_to_dict(scene, 112)
        assert list(record) == sorted(record)
        assert record["schema_version"] == sw.SCHEMA_VERSION
        assert len(record["objects"]) == len(scene.objects)
        for obj_record, obj in zip(record["objects"], scene.objects, strict=True):
            assert list(obj_record) == sorted(obj_record)
            assert obj_record["cell"] == sw.CELL_NAMES[(obj.row, obj.col)]
            assert tuple(obj_record["bbox"]) == sw.object_bbox(obj, 112)
        assert sw.scene_from_dict(json.loads(json.dumps(record))) == scene


def test_scene_from_dict_rejects_other_schema_version() -> None:
    record = sw.scene_to_dict(sw.generate_scene(SEED, "train", 0), 112)
    record["schema_version"] = sw.SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema_version"):
        sw.scene_from_dict(record)


def test_write_scene_is_byte_stable(tmp_path: Path) -> None:
    scene = sw.generate_scene(SEED, "test_unseen", 42)
    png_path, json_path = sw.write_scene(scene, 112, tmp_path)
    assert png_path == tmp_path / "test_unseen" / "test_unseen-000042.png"
    assert json_path == tmp_path / "test_unseen" / "test_unseen-000042.json"
    first = (png_path.read_bytes(), json_path.read_bytes())
    sw.write_scene(scene, 112, tmp_path)
    assert (png_path.read_bytes(), json_path.read_bytes()) == first
    assert sorted(p.name for p in (tmp_path / "test_unseen").iterdir()) == [
        json_path.name,
        png_path.name,
    ]
    with Image.open(png_path) as image:
        assert image.size == (112, 112)
        assert image.convert("RGB").tobytes() == sw.render_scene(scene, 112).tobytes()
    assert sw.scene_from_dict(json.loads(json_path.read_text())) == scene
