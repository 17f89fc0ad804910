"""Generators of M3T content behind one interface: scene graph, transformers, OpenAI-compatible."""

from __future__ import annotations

from muco.config import (
    BackboneConfig,
    OpenAIGenerator,
    SceneGraphGenerator,
    SynthesizeConfig,
    TransformersGenerator,
)
from muco.synthesis.generators.base import Generator


def build_generator(cfg: SynthesizeConfig, backbone: BackboneConfig | None = None) -> Generator:
    """The generator ``synthesize.generator`` selects.

    Imports are local so the offline scene-graph path never loads torch or an HTTP stack.
    """
    generator = cfg.generator
    if isinstance(generator, SceneGraphGenerator):
        from muco.synthesis.generators.scene_graph import SceneGraphM3TGenerator

        return SceneGraphM3TGenerator(generator.seed, cfg.paraphrases, cfg.turns)
    if isinstance(generator, TransformersGenerator):
        from muco.synthesis.generators.local_model import LocalMLLMGenerator

        return LocalMLLMGenerator(
            generator, cfg.turns, cfg.paraphrases, backbone=backbone or BackboneConfig()
        )
    if isinstance(generator, OpenAIGenerator):
        from muco.synthesis.generators.openai_client import OpenAIChatGenerator

        return OpenAIChatGenerator(generator, cfg.turns, cfg.paraphrases)
    raise TypeError(f"unknown generator config {type(generator).__name__}")
