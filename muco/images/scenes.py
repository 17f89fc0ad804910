"""The scene world: a deterministic procedural renderer of images with known scene graphs.

A scene is a square image split into a 3×3 grid of cells. Each occupied cell holds one
coloured shape of one of three sizes on a plain neutral background. The scene graph
(:class:`Scene`) stores everything rendering needs, including each object's jittered centre
and rotation, so :func:`render_scene` is a pure function of the graph and the image size.

Scenes are the offline image pool of the default profile and the ground truth of the
compositional-generalisation benchmark: a fixed set of (colour, shape) pairs
(:func:`held_out_pairs`) never appears in the "train" or "test" splits, and every
"test_unseen" scene contains at least one of them.

Coordinates: object centres are fractions of the image side, x to the right and y down.
Pixel boxes are ``(left, top, right, bottom)`` with right/bottom exclusive, as
:meth:`PIL.Image.Image.crop` expects.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from muco.io import atomic_write_bytes

SCHEMA_VERSION = 1

RGB = tuple[int, int, int]

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "cross",
    "ring",
    "semicircle",
)

# Saturated hues spaced around the colour wheel; each pair is far apart in RGB so a person
# (and a 112 px thumbnail) tells them apart without ambiguity.
COLOURS: Mapping[str, RGB] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (30, 170, 50),
        "blue": (30, 70, 220),
        "yellow": (250, 225, 30),
        "purple": (130, 50, 180),
        "orange": (250, 135, 0),
        "cyan": (20, 200, 210),
        "pink": (240, 90, 170),
    }
)

# Neutrals only, so no background can be mistaken for an object colour.
BACKGROUNDS: Mapping[str, RGB] = MappingProxyType(
    {
        "white": (245, 245, 245),
        "light grey": (190, 190, 190),
        "dark grey": (70, 70, 70),
        "black": (15, 15, 15),
    }
)

# Object diameter (extent of its drawn outline) as a fraction of the grid cell side.
SIZES: Mapping[str, float] = MappingProxyType({"small": 0.44, "medium": 0.64, "large": 0.84})

GRID_SIDE = 3

# Cell names by (row, col); row 0 is the top row, col 0 the left column.
CELL_NAMES: Mapping[tuple[int, int], str] = MappingProxyType(
    {
        (0, 0): "top left",
        (0, 1): "top",
        (0, 2): "top right",
        (1, 0): "left",
        (1, 1): "center",
        (1, 2): "right",
        (2, 0): "bottom left",
        (2, 1): "bottom",
        (2, 2): "bottom right",
    }
)
CELL_POSITIONS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {name: pos for pos, name in CELL_NAMES.items()}
)

SPLITS: tuple[str, ...] = ("train", "test", "test_unseen")

PREDICATES: tuple[str, ...] = ("left of", "right of", "above", "below")

# One pair per shape and one per colour (a permutation), so every shape and every colour is
# still seen in training with seven other partners: 8 of 64 combinations (12.5%).
_HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "star"),
    ("blue", "circle"),
    ("yellow", "ring"),
    ("purple", "square"),
    ("orange", "cross"),
    ("cyan", "diamond"),
    ("pink", "semicircle"),
)

# Gap kept between an object's outline and its cell border, as a fraction of the cell side;
# at least one pixel for images of 48 px and up, which keeps every bbox inside its cell.
_CELL_MARGIN = 0.08
# Rotation stays small so a square never turns into a diamond and a triangle stays upright.
_MAX_ROTATION_DEG = 15.0
# Ring stroke width as a fraction of its outer radius.
_RING_WIDTH = 0.3
_ELLIPSE_SHAPES = frozenset({"circle", "ring"})


def held_out_pairs() -> frozenset[tuple[str, str]]:
    """The (colour, shape) combinations reserved for the "test_unseen" split.

    A fixed permutation pairing each of the 8 colours with exactly one of the 8 shapes:
    red triangle, green star, blue circle, yellow ring, purple square, orange cross,
    cyan diamond, pink semicircle.
    """
    return frozenset(_HELD_OUT)


@dataclass(frozen=True)
class SceneObject:
    """One shape in one grid cell.

    ``center_x``/``center_y`` are fractions of the image side (0..1, y down) and lie in the
    object's cell; ``rotation_deg`` turns the shape clockwise on screen.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    center_x: float
    center_y: float
    rotation_deg: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        if (self.row, self.col) not in CELL_NAMES:
            raise ValueError(f"cell ({self.row}, {self.col}) is outside the grid")
        in_col = self.col <= self.center_x * GRID_SIDE < self.col + 1
        in_row = self.row <= self.center_y * GRID_SIDE < self.row + 1
        if not (in_col and in_row):
            raise ValueError(f"centre ({self.center_x}, {self.center_y}) is not in its cell")

    @property
    def cell(self) -> str:
        """Human-readable cell name, e.g. "top left"."""
        return CELL_NAMES[(self.row, self.col)]


@dataclass(frozen=True)
class Scene:
    """A scene graph: background plus 1..9 objects, at most one per cell."""

    scene_id: str
    split: str
    background: str
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}")
        if not isinstance(self.objects, tuple) or not self.objects:
            raise ValueError("objects must be a non-empty tuple")
        cells = [(obj.row, obj.col) for obj in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError("two objects share a cell")


def describe_object(obj: SceneObject) -> str:
    """Short label such as "large red circle" (debugging and grounding crops)."""
    return f"{obj.size} {obj.colour} {obj.shape}"


# --- generation ------------------------------------------------------------------------------


def _allowed_pairs(held_out: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held_out]


def _place_object(
    rng: np.random.Generator, pair: tuple[str, str], row: int, col: int
) -> SceneObject:
    colour, shape = pair
    size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
    # Largest offset of the centre from the cell middle that keeps the outline plus margin
    # inside the cell, in cell-side units.
    slack = 0.5 - SIZES[size] / 2 - _CELL_MARGIN
    dx, dy = rng.uniform(-slack, slack, size=2)
    rotation = rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG)
    # Rounded so the JSON stays readable; the error (< 1e-4 of the side) is far below the margin.
    return SceneObject(
        shape=shape,
        colour=colour,
        size=size,
        row=row,
        col=col,
        center_x=round((col + 0.5 + float(dx)) / GRID_SIDE, 4),
        center_y=round((row + 0.5 + float(dy)) / GRID_SIDE, 4),
        rotation_deg=round(float(rotation), 1),
    )


def generate_scene(
    seed: int, split: str, index: int, min_objects: int = 1, max_objects: int = 5
) -> Scene:
    """Scene number ``index`` of ``split``, a pure function of (seed, split, index).

    Each scene draws from its own random stream, so how many scenes a split has never
    changes any other scene. "train" and "test" never use a held-out (colour, shape) pair;
    "test_unseen" puts one in a random object and draws the others freely.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 1 <= min_objects <= max_objects <= len(CELL_NAMES):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(CELL_NAMES)}")
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])

    count = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(len(CELL_NAMES), size=count, replace=False))
    background = tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]

    held_out = held_out_pairs()
    seen = _allowed_pairs(held_out)
    everything = _allowed_pairs(frozenset())
    unseen = sorted(held_out)
    forced = int(rng.integers(count)) if split == "test_unseen" else -1

    objects = []
    for slot, cell in enumerate(cells):
        if slot == forced:
            pool = unseen
        elif split == "test_unseen":
            pool = everything
        else:
            pool = seen
        pair = pool[int(rng.integers(len(pool)))]
        objects.append(_place_object(rng, pair, *divmod(cell, GRID_SIDE)))
    return Scene(
        scene_id=f"{split}-{index:06d}",
        split=split,
        background=background,
        objects=tuple(objects),
    )


def generate_scenes(
    seed: int, counts: Mapping[str, int], min_objects: int = 1, max_objects: int = 5
) -> list[Scene]:
    """Scenes 0..counts[split]-1 of every split named in ``counts``, in :data:`SPLITS` order."""
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected a subset of {SPLITS}")
    return [
        generate_scene(seed, split, index, min_objects, max_objects)
        for split in SPLITS
        for index in range(counts.get(split, 0))
    ]


# --- geometry and rendering ------------------------------------------------------------------


def _normalised(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Scale a polygon so its farthest vertex is at distance 1 from the origin."""
    radius = max(math.hypot(x, y) for x, y in points)
    return tuple((x / radius, y / radius) for x, y in points)


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    vertices = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        vertices.append((radius * math.cos(angle), radius * math.sin(angle)))
    return vertices


def _cross(half_width: float) -> list[tuple[float, float]]:
    w = half_width
    return [
        (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
        (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
    ]  # fmt: skip


def _semicircle(steps: int) -> list[tuple[float, float]]:
    # Dome up, flat edge down, shifted so its bounding box is centred on the origin.
    return [
        (math.cos(math.pi + math.pi * k / steps), math.sin(math.pi + math.pi * k / steps) + 0.5)
        for k in range(steps + 1)
    ]


# Unit polygons (farthest vertex at radius 1, y down) for every non-ellipse shape.
_UNIT_POLYGONS: Mapping[str, tuple[tuple[float, float], ...]] = MappingProxyType(
    {
        "square": _normalised([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
        "triangle": _normalised(
            [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        ),
        "star": _normalised(_star(5, 0.45)),
        "diamond": _normalised([(0, -1), (0.65, 0), (0, 1), (-0.65, 0)]),
        "cross": _normalised(_cross(0.32)),
        "semicircle": _normalised(_semicircle(24)),
    }
)


def _pixel_radius(obj: SceneObject, image_size: int) -> float:
    return SIZES[obj.size] * image_size / GRID_SIDE / 2


def _pixel_vertices(obj: SceneObject, image_size: int) -> list[tuple[int, int]]:
    """Integer polygon vertices; floor maps a continuous coordinate to the pixel holding it."""
    cx, cy = obj.center_x * image_size, obj.center_y * image_size
    radius = _pixel_radius(obj, image_size)
    cos_t = math.cos(math.radians(obj.rotation_deg))
    sin_t = math.sin(math.radians(obj.rotation_deg))
    return [
        (
            math.floor(cx + radius * (x * cos_t - y * sin_t)),
            math.floor(cy + radius * (x * sin_t + y * cos_t)),
        )
        for x, y in _UNIT_POLYGONS[obj.shape]
    ]


def _ellipse_box(obj: SceneObject, image_size: int) -> tuple[int, int, int, int]:
    """Inclusive integer box PIL draws a circle or ring into."""
    cx, cy = obj.center_x * image_size, obj.center_y * image_size
    radius = _pixel_radius(obj, image_size)
    return (
        math.floor(cx - radius),
        math.floor(cy - radius),
        math.floor(cx + radius),
        math.floor(cy + radius),
    )


def object_bbox(obj: SceneObject, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)``, right/bottom exclusive, holding the drawn object.

    Lies inside the object's :func:`cell_box` for images of 48 px and larger.
    """
    if obj.shape in _ELLIPSE_SHAPES:
        x0, y0, x1, y1 = _ellipse_box(obj, image_size)
    else:
        vertices = _pixel_vertices(obj, image_size)
        xs, ys = [x for x, _ in vertices], [y for _, y in vertices]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    return x0, y0, x1 + 1, y1 + 1


def cell_box(row: int, col: int, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)``, right/bottom exclusive, of a grid cell."""
    return (
        col * image_size // GRID_SIDE,
        row * image_size // GRID_SIDE,
        (col + 1) * image_size // GRID_SIDE,
        (row + 1) * image_size // GRID_SIDE,
    )


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Render ``scene`` as an RGB image of ``image_size`` × ``image_size`` pixels.

    Deterministic to the byte: integer coordinates, no anti-aliasing, no randomness.
    """
    if image_size < 1:
        raise ValueError("image_size must be positive")
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(_ellipse_box(obj, image_size), fill=fill)
        elif obj.shape == "ring":
            width = max(2, round(_RING_WIDTH * _pixel_radius(obj, image_size)))
            draw.ellipse(_ellipse_box(obj, image_size), outline=fill, width=width)
        else:
            draw.polygon(_pixel_vertices(obj, image_size), fill=fill)
    return image


# --- relations and serialisation -------------------------------------------------------------


def relations(scene: Scene) -> list[tuple[int, str, int]]:
    """Spatial relations ``(subject, predicate, object)`` between object indices.

    Derived from cells only: "left of"/"right of" for objects in different columns,
    "above"/"below" for objects in different rows. Ordered by subject, then object.
    """
    found = []
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            if i == j:
                continue
            if a.col != b.col:
                found.append((i, "left of" if a.col < b.col else "right of", j))
            if a.row != b.row:
                found.append((i, "above" if a.row < b.row else "below", j))
    return found


def scene_to_dict(scene: Scene, image_size: int) -> dict[str, Any]:
    """JSON-ready scene record with vocabulary names, cells, pixel bboxes and relations.

    Keys are sorted at every level; bboxes follow :func:`object_bbox` for ``image_size``.
    """
    objects = [
        {
            "bbox": list(object_bbox(obj, image_size)),
            "cell": obj.cell,
            "center_x": obj.center_x,
            "center_y": obj.center_y,
            "col": obj.col,
            "colour": obj.colour,
            "colour_rgb": list(COLOURS[obj.colour]),
            "index": index,
            "label": describe_object(obj),
            "rotation_deg": obj.rotation_deg,
            "row": obj.row,
            "shape": obj.shape,
            "size": obj.size,
        }
        for index, obj in enumerate(scene.objects)
    ]
    return {
        "background": scene.background,
        "background_rgb": list(BACKGROUNDS[scene.background]),
        "image_size": image_size,
        "objects": objects,
        "relations": [
            {"object": j, "predicate": predicate, "subject": i}
            for i, predicate, j in relations(scene)
        ],
        "scene_id": scene.scene_id,
        "schema_version": SCHEMA_VERSION,
        "split": scene.split,
    }


def scene_from_dict(record: Mapping[str, Any]) -> Scene:
    """Rebuild a :class:`Scene` from :func:`scene_to_dict` output (derived fields are ignored)."""
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"scene schema_version {record.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return Scene(
        scene_id=record["scene_id"],
        split=record["split"],
        background=record["background"],
        objects=tuple(
            SceneObject(
                shape=obj["shape"],
                colour=obj["colour"],
                size=obj["size"],
                row=obj["row"],
                col=obj["col"],
                center_x=obj["center_x"],
                center_y=obj["center_y"],
                rotation_deg=obj["rotation_deg"],
            )
            for obj in record["objects"]
        ),
    )


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as PNG with fixed parameters, so equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_scene(
    scene: Scene, image_size: int, out_dir: Path, png: bytes | None = None
) -> tuple[Path, Path]:
    """Write ``{out_dir}/{split}/{scene_id}.png`` and ``.json``; returns (png, json) paths.

    ``png``: the scene already rendered and encoded by :func:`png_bytes` (rendered here when
    None). The PNG goes first, so a present JSON file means the pair is complete.
    """
    split_dir = Path(out_dir) / scene.split
    split_dir.mkdir(parents=True, exist_ok=True)
    png_path = split_dir / f"{scene.scene_id}.png"
    json_path = split_dir / f"{scene.scene_id}.json"
    if png is None:
        png = png_bytes(render_scene(scene, image_size))
    atomic_write_bytes(png_path, png)
    record = json.dumps(scene_to_dict(scene, image_size), sort_keys=True, indent=2)
    atomic_write_bytes(json_path, (record + "\n").encode("utf-8"))
    return png_path, json_path
