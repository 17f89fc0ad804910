"""`muco embed`: texts, images and JSON lines in; a float32 (N, D) .npy out; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from muco.cli import main as cli_main
from muco.config import BackboneConfig, TinyBackboneConfig
from muco.model.backbone import prepare_backbone
from muco.model.embedder import Embedder, EmbedInput
from muco.stages import embed as embed_stage

PIXELS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
PIXEL_ARGS = ["--min-pixels", str(PIXELS["min_pixels"]), "--max-pixels", str(PIXELS["max_pixels"])]
HIDDEN = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = BackboneConfig(tiny=TinyBackboneConfig(hidden_size=HIDDEN, vocab_size=512), **PIXELS)
    return prepare_backbone(cfg, tmp_path_factory.mktemp("model"))


def _write_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return path


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _embed(model_dir: Path, *args: str) -> int:
    return embed_stage.main(["--model", str(model_dir), *PIXEL_ARGS, *args])


def test_texts_images_and_jsonl_give_one_row_each_in_order(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _write_image(tmp_path / "a.png", 1)
    (tmp_path / "sub").mkdir()
    _write_image(tmp_path / "sub" / "b.png", 2)
    inputs = _jsonl(
        tmp_path / "inputs.jsonl",
        [
            json.dumps({"text": "a caption"}),
            "",
            json.dumps({"image": "sub/b.png"}),
            json.dumps({"text": "what is this?", "image": str(image.resolve())}),
        ],
    )
    out = tmp_path / "out" / "emb.npy"
    args = ["--text", "one", "--text", "two", "--image", str(image), "--inputs", str(inputs)]
    assert _embed(model_dir, *args, "--out", str(out), "--batch-size", "2") == 0
    assert "(6, 32) float32" in capsys.readouterr().out
    rows = np.load(out, allow_pickle=False)
    assert rows.shape == (6, HIDDEN) and rows.dtype == np.float32
    expected = Embedder.from_pretrained(model_dir, **PIXELS).encode(
        [
            EmbedInput(text="one"),
            EmbedInput(text="two"),
            EmbedInput(image=image),
            EmbedInput(text="a caption"),
            EmbedInput(image=tmp_path / "sub" / "b.png"),
            EmbedInput(text="what is this?", image=image),
        ]
    )
    np.testing.assert_allclose(rows, expected, atol=1e-5)


def test_muco_embed_command_is_registered(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npy"
    assert cli_main(["embed", "--model", str(model_dir), "--text", "hi", "--out", str(out)]) == 0
    assert np.load(out).shape == (1, HIDDEN)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', '{"image": "missing.png"}'], "inputs.jsonl:2: image not found"),
        (['{"text": "ok"}', "", "{not json"], "inputs.jsonl:3: not valid JSON"),
        (['{"txt": "typo"}'], 'inputs.jsonl:1: expected an object with keys "text"'),
        (['{"text": ""}'], "inputs.jsonl:1: neither text nor image"),
        (['{"text": 3}'], 'inputs.jsonl:1: "text" and "image" must be strings'),
        ([""], "inputs.jsonl: no inputs"),
    ],
)
def test_bad_jsonl_exits_2_naming_file_and_line(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    lines: list[str],
    message: str,
) -> None:
    inputs = _jsonl(tmp_path / "inputs.jsonl", lines)
    out = tmp_path / "e.npy"
    assert _embed(model_dir, "--inputs", str(inputs), "--out", str(out)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no inputs: give --text, --image or --inputs"),
        (["--image", "nowhere.png"], "--image: image not found: nowhere.png"),
        (["--inputs", "absent.jsonl"], "--inputs: file not found: absent.jsonl"),
        (["--text", "x", "--batch-size", "0"], "--batch-size must be positive"),
    ],
)
def test_bad_arguments_exit_2(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert _embed(model_dir, *args, "--out", str(tmp_path / "e.npy")) == 2
    assert message in capsys.readouterr().err


def test_missing_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "model"
    args = ["--model", str(missing), "--text", "x", "--out", str(tmp_path / "e.npy")]
    assert embed_stage.main(args) == 2
    assert "backbone directory not found" in capsys.readouterr().err
