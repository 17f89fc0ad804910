"""The interface every M3T generator implements.

A generator turns images of the pool into :class:`M3TContent` or a :class:`Rejection`, calling
``on_result`` exactly once per input, in any order, as soon as that input is done, so the
runner can cache each result immediately and an interrupted run loses at most the results in
flight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from muco.config import SamplingConfig
from muco.synthesis.content import M3TContent
from muco.synthesis.prompts import PROMPT_VERSION


@dataclass(frozen=True)
class SynthesisInput:
    """One image of the pool (a row of ``data/images/manifest.parquet``)."""

    image_id: str
    sha256: str  # content hash of the image bytes
    path: Path  # absolute path of the image file
    scene_graph: Path | None = None  # the scene-graph JSON, for rendered scenes only


@dataclass(frozen=True)
class Rejection:
    """Why an image produced no record.

    ``reason`` is a short code (``invalid_json``, ``wrong_turn_count``, ``http_429`` ...),
    ``detail`` says what exactly was wrong. ``cacheable`` is False for transient failures
    (network errors, server overload after all retries): a re-run tries those images again,
    whereas a malformed answer to a fixed prompt and sampling seed is cached like a success.
    """

    reason: str
    detail: str
    cacheable: bool = True


Outcome = M3TContent | Rejection
ResultCallback = Callable[[SynthesisInput, Outcome], None]


class Generator(ABC):
    """Produces M3T content for images; see the module docstring for the calling contract."""

    kind: str  # "scene_graph" | "transformers" | "openai"

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Everything that determines the output besides the image, JSON-able.

        Keys: ``generator`` (the kind), ``model``, ``prompt_version``, ``sampling`` (a dict).
        It is part of the cache key and recorded as provenance on every record.
        """

    @abstractmethod
    def generate(self, inputs: Sequence[SynthesisInput], on_result: ResultCallback) -> None:
        """Call ``on_result(input, outcome)`` exactly once for every input."""


def mllm_identity(
    kind: str,
    model: str,
    sampling: SamplingConfig,
    turns: int,
    paraphrases: int,
    **extra: Any,
) -> dict[str, Any]:
    """The identity of a generator that prompts an MLLM with the versioned M3T prompt.

    ``extra`` adds settings that change the output for that generator kind only (such as a
    server's response format); never endpoints or keys, which do not.
    """
    return {
        "generator": kind,
        "model": model,
        "prompt_version": PROMPT_VERSION,
        "sampling": {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens,
            "seed": sampling.seed,
            "turns": turns,
            "paraphrases": paraphrases,
            **extra,
        },
    }
