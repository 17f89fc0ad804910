"""Which model encodes, with which settings, and the fingerprint that names its embeddings.

The fingerprint keys the embedding cache and is stored with every result: it covers the
model's files (weights, config, tokenizer) and every setting that changes an embedding (pixel
limits, dtype, attention implementation, the prompt template). Batch size and device do not
change embeddings beyond rounding and are recorded with results, not in the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from muco.config import BackboneConfig
from muco.model.embedder import Embedder, Readout

# Files that define a checkpoint's behaviour; large weights are hashed in 1 MiB blocks.
_MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """A checkpoint directory or hub id plus the settings it is loaded with."""

    model: str
    min_pixels: int = BackboneConfig().min_pixels
    max_pixels: int = BackboneConfig().max_pixels
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    device: str = "auto"

    def resolved_device(self) -> str:
        """``auto`` means the first GPU when there is one, else the CPU."""
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self) -> Embedder:
        """The :class:`Embedder`, in eval mode on :meth:`resolved_device`."""
        embedder = Embedder.from_pretrained(
            self.model,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
        )
        embedder.backbone.model.to(self.resolved_device()).eval()
        return embedder

    def settings(self) -> dict[str, Any]:
        """Every setting of the spec, for results and reports, with the readout the checkpoint
        records (its kind and the prompt template version it embeds with)."""
        readout = Readout.of_checkpoint(self.model)
        return {**asdict(self), "readout": readout.kind, "template": readout.template_version}

    def fingerprint(self) -> str:
        """sha256 (hex) of the model's files and the settings that change embeddings.

        A hub id that is not a local directory is fingerprinted by its name: pin a revision
        (or download it and pass the directory) for results that stay comparable.
        """
        digest = hashlib.sha256()
        settings = {
            key: value for key, value in self.settings().items() if key not in ("model", "device")
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        directory = Path(self.model)
        if not directory.is_dir():
            digest.update(f"hub:{self.model}".encode())
            return digest.hexdigest()
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix in _MODEL_FILE_SUFFIXES:
                digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
                digest.update(file_sha256(path).encode())
        return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
