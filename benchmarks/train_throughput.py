"""Training throughput of MuCo (k turns per sequence) against single-turn, and peak memory per
ZeRO stage.

MuCo packs one record (one image, k = 7 query/target pairs) into one query and one target
sequence; the single-turn baseline packs each pair into its own two sequences, so it repeats the
system prompt, the chat scaffolding and, above all, the image k times. Both modes here train the
same backbone on the same records, and both process the same number of query/target pairs per
optimizer step:

- MuCo: ``G`` records per step in micro-batches of ``m`` records (``G · k`` pairs);
- single-turn: ``G · k`` samples per step in micro-batches of ``m · k`` samples (one pair each),
  so a micro-batch holds the same pairs (and images' worth of text) in both modes.

The contrastive matrix is therefore the same size in both, and what differs is only how many
tokens the model runs to produce those pairs. The issue's requirement: the measured speed-up
(pairs/s of MuCo over single-turn) reaches at least 80% of the token ratio (tokens per pair of
single-turn over MuCo, counted with the training collator over the same records).

Each configuration runs the real train stage (``python -m muco.stages.train``) in its own
process, as DVC runs it, with ``log_every_steps: 1`` and no checkpoint before the last step. The
stage logs cumulative pairs/s and tokens/s since the loop started, so the time at the end of
step i is ``pairs_i / pairs_per_s_i`` and the steady-state rate is taken over steps 2..N: step 1
(first allocations, lazy initialisation inside DeepSpeed and torch) is discarded, as are process
start-up, model loading and the final checkpoint/export.

Peak memory per ZeRO stage (0-3, MuCo, same batch) is the child's own peak RSS on CPU and
``torch.cuda.max_memory_allocated`` on a GPU, both written by a small wrapper at the child's
exit. All runs are one process: ZeRO 1-3 shard optimizer state, gradients and parameters across
processes, so with one process they save nothing and the column shows each stage's fixed
overhead (buckets, partition bookkeeping), not the memory a multi-GPU run would save.

    .venv/bin/python benchmarks/train_throughput.py                 # tiny backbone, CPU
    .venv/bin/python benchmarks/train_throughput.py --size 2b       # Qwen2-VL-2B shape, GPU

``--size 2b`` builds a backbone with Qwen2-VL-2B's shapes and random weights (the tokenizer and
its small vocabulary stay the tiny one's), renders 448-pixel scenes under the reference's pixel
limits (256 visual tokens each) and trains it the reference way (LoRA, frozen vision tower,
bf16, gradient checkpointing); it needs CUDA. Results go to
``benchmarks/results/train_throughput.json`` (or ``train_throughput_2b.json``). The exit code is
0 whatever the verdict: this is a measurement, and the verdict is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import yaml

from muco.config import (
    BackboneConfig,
    ImagesConfig,
    SynthesizeConfig,
    TinyBackboneConfig,
    load_params,
)

REPO = Path(__file__).resolve().parents[1]
REQUIRED_FRACTION = 0.8
TURNS = 7
ZERO_STAGES = (0, 1, 2, 3)
# The throughput comparison runs at the stage's default ZeRO stage; that MuCo run doubles as the
# memory table's row for the same stage.
THROUGHPUT_ZERO = 2

# Qwen2-VL-2B-Instruct's language model and vision tower shapes (its config.json): hidden 1536,
# 28 layers, 12 query heads over 2 key/value heads, MLP 8960; ViT of depth 32, width 1280,
# 16 heads, MLP ratio 4, merged into the language model's width.
QWEN2_VL_2B = TinyBackboneConfig(
    family="qwen2_vl",
    seed=0,
    vocab_size=1024,
    hidden_size=1536,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    intermediate_size=8960,
    vision_depth=32,
    vision_embed_dim=1280,
    vision_num_heads=16,
    vision_mlp_ratio=4,
)
# The reference's image processor limits (METHODS.md §1): 256 to 1280 patches of 28 x 28 pixels.
# A 448-pixel scene is exactly the minimum, 256 visual tokens, as real training images give at
# least; the tiny profile's 112-pixel scenes and 16 tokens would understate the image's share.
# The weights are stored and loaded in bf16, as the reference loads its backbone.
REFERENCE_2B = {"min_pixels": 256 * 28 * 28, "max_pixels": 1280 * 28 * 28, "dtype": "bfloat16"}
DEFAULT_IMAGE_SIZE = {"tiny": 112, "2b": 448}

# Runs inside each measured child: reports the child's own peak memory at exit (a parent's
# RUSAGE_CHILDREN is the maximum over every child so far, so it cannot separate the runs).
_WRAPPER = """
import atexit, json, os, resource, runpy, sys

def _report():
    peak = {"max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    with open(os.environ["MUCO_BENCH_PEAK_FILE"], "w") as handle:
        json.dump(peak, handle)

atexit.register(_report)
sys.argv = ["muco.stages.train", *sys.argv[1:]]
runpy.run_module("muco.stages.train", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class RunSpec:
    """One training run: its objective, batch (in samples), micro-batch and ZeRO stage."""

    name: str
    stage: str  # "muco" or "single_turn"
    global_batch: int
    micro_batch: int
    zero_stage: int


# --------------------------------------------------------------------------- workspace


def build_workspace(root: Path, scenes: int, image_size: int, size: str) -> BackboneConfig:
    """Scenes pool, scene-graph records and the backbone under ``root``; the backbone section."""
    from muco.images.pool import build_pool
    from muco.model.backbone import prepare_backbone
    from muco.synthesis.generators import build_generator
    from muco.synthesis.runner import synthesize

    images = ImagesConfig.model_validate(
        {
            "source": {
                "kind": "scenes",
                "image_size": image_size,
                "counts": {"train": scenes, "test": 0, "test_unseen": 0},
            }
        }
    )
    build_pool(images, root / "images")
    synth = SynthesizeConfig()
    synthesize(root / "images", root / "m3t", synth, build_generator(synth), root / "cache")
    backbone = load_params(REPO / "params.yaml").backbone
    if size == "2b":
        backbone = backbone.model_copy(update={"tiny": QWEN2_VL_2B, **REFERENCE_2B})
    prepare_backbone(backbone, root / "backbone")
    return backbone


def count_parameters(backbone_dir: Path) -> int:
    """Parameters of the saved backbone, from its safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    for shard in sorted(backbone_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                total += math.prod(handle.get_slice(name).get_shape())
    return total


def tokens_per_pair(
    root: Path, backbone: BackboneConfig, records_per_step: int, micro_records: int
) -> dict[str, dict[str, float]]:
    """Tokens per pair of each packing mode over one epoch of the workspace's records.

    ``tokens`` are what :func:`count_tokens` counts (non-padding, both sides, image tokens
    included); ``padded_tokens`` are the tensor sizes the model actually runs when the epoch
    is cut into the benchmark's steps and micro-batches (the same batches the runs draw).
    """
    from transformers import AutoTokenizer

    from muco.model.processor import ImageOnlyQwen2VLProcessor, build_image_processor
    from muco.training.collate import Collator, count_tokens
    from muco.training.loop import batch_records
    from muco.training.packing import PackedDataset

    tokenizer = AutoTokenizer.from_pretrained(root / "backbone")
    processor = ImageOnlyQwen2VLProcessor(
        build_image_processor(backbone.min_pixels, backbone.max_pixels),
        tokenizer,
        chat_template=tokenizer.chat_template,
    )
    collator = Collator(processor)
    counts = {}
    for mode, per_record in (("multi_turn", 1), ("single_turn", TURNS)):
        dataset = PackedDataset(root / "m3t", root / "images", mode=mode, turns=TURNS, seed=0)
        batch, micro = records_per_step * per_record, micro_records * per_record
        tokens = padded = pairs = 0
        for step in range(len(dataset) // batch):
            _, indices = batch_records(len(dataset), batch, 0, step)  # one epoch: epoch 0
            samples = [dataset[int(i)] for i in indices]
            for start in range(0, batch, micro):
                chunk = collator(samples[start : start + micro])
                tokens += count_tokens(chunk)
                padded += chunk.query["input_ids"].numel() + chunk.target["input_ids"].numel()
                pairs += chunk.pairs
        counts[mode] = {
            "pairs": pairs,
            "tokens": tokens,
            "padded_tokens": padded,
            "tokens_per_pair": tokens / pairs,
            "padded_tokens_per_pair": padded / pairs,
        }
    return counts


# --------------------------------------------------------------------------- runs


def train_params(
    base: dict[str, Any], backbone: BackboneConfig, spec: RunSpec, steps: int, size: str
) -> dict[str, Any]:
    """The params.yaml of one run: the repository's train section with the run's overrides."""
    train = {
        **base,
        "stages": [spec.stage],
        "turns": TURNS,
        "global_batch_size": spec.global_batch,
        "micro_batch_size": spec.micro_batch,
        "max_steps": steps,
        "warmup_steps": 1,
        "log_every_steps": 1,
        "checkpoint": {"every_steps": 10**6, "keep_last": 1},
        "deepspeed": {**base.get("deepspeed", {}), "zero_stage": spec.zero_stage},
        "distributed": {"launcher": "none", "nproc_per_node": 1},
    }
    if size == "2b":  # the reference's training set-up (METHODS.md §1)
        train.update(
            precision="bf16",
            gradient_checkpointing=True,
            finetune={"mode": "lora", "freeze_vision": True},
        )
    return {"backbone": backbone.model_dump(mode="json"), "train": train}


def run_training(
    root: Path,
    backbone: BackboneConfig,
    base: dict[str, Any],
    spec: RunSpec,
    steps: int,
    size: str,
    threads: int | None,
) -> dict[str, Any]:
    """Run the train stage for ``spec`` in a child process; its log, timings and peak memory.

    ``threads`` (when given) caps the child's OpenMP / MKL threads.
    """
    run_dir = root / "runs" / spec.name
    # A fresh folder: a checkpoint left by an earlier run would be resumed instead of trained.
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    params = run_dir / "params.yaml"
    params.write_text(yaml.safe_dump(train_params(base, backbone, spec, steps, size)))
    peak_file = run_dir / "peak.json"
    command = [
        sys.executable,
        "-c",
        _WRAPPER,
        "--params",
        str(params),
        "--data",
        str(root / "m3t"),
        "--images",
        str(root / "images"),
        "--backbone",
        str(root / "backbone"),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # The repository first, then whatever the caller had on PYTHONPATH (an environment's
    # extra site folder, say).
    python_path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(PYTHONPATH=python_path, MUCO_BENCH_PEAK_FILE=str(peak_file))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    # Run in the run's folder: every output the stage writes (model, checkpoints, metrics, log,
    # timings) goes to its default path under it.
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=run_dir)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"train run {spec.name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
        )
    # The run's final checkpoint is never resumed here, and at 2B it is gigabytes per run.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    with (run_dir / "metrics" / "train_log.csv").open() as handle:
        log = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return {
        "log": log,
        "timings": json.loads((run_dir / "metrics" / "timings" / "train.json").read_text()),
        "peak": json.loads(peak_file.read_text()),
        "wall_s": wall,
    }


def steady_rates(logs: list[list[dict[str, float]]], pairs_per_step: int) -> dict[str, Any]:
    """Pairs/s and tokens/s over steps 2..N of one or more runs' cumulative per-step logs.

    Row i of a log holds ``pairs_per_s = P_i / t_i`` and ``tokens_per_s = T_i / t_i`` with
    ``P_i``, ``T_i`` the pairs and tokens of steps 1..i and ``t_i`` the seconds since the loop
    started; every step has ``pairs_per_step`` pairs, so ``t_i = P_i / pairs_per_s`` and
    ``T_i = tokens_per_s · t_i``. Step 1 of each run is dropped. The rates divide the pairs and
    tokens of an average step by the median step time pooled over the runs: a step slowed by
    another process on a shared machine does not move the median, while the mean (also
    returned) takes every such spike in.
    """
    step_seconds: list[float] = []
    first_steps: list[float] = []
    tokens = seconds = 0.0
    for log in logs:
        if len(log) < 2:
            raise ValueError("need at least 2 logged steps to discard the first")
        ends = []
        for row in log:
            elapsed = row["step"] * pairs_per_step / row["pairs_per_s"]
            ends.append((elapsed, row["tokens_per_s"] * elapsed))
        step_seconds += [later[0] - earlier[0] for earlier, later in pairwise(ends)]
        first_steps.append(ends[0][0])
        seconds += ends[-1][0] - ends[0][0]
        tokens += ends[-1][1] - ends[0][1]
    steps = len(step_seconds)
    median = statistics.median(step_seconds)
    return {
        "steps_timed": steps,
        "first_step_s": first_steps,
        "step_seconds": step_seconds,
        "median_step_s": median,
        "pairs_per_s": pairs_per_step / median,
        "tokens_per_s": tokens / steps / median,
        "mean_pairs_per_s": steps * pairs_per_step / seconds,
        "tokens_per_pair": tokens / (steps * pairs_per_step),
    }


def peak_mib(peak: dict[str, float]) -> tuple[str, float]:
    """Which peak applies (CUDA allocated on a GPU, else RSS) and its value in MiB."""
    if "cuda_max_allocated_mib" in peak:
        return "cuda_max_allocated", peak["cuda_max_allocated_mib"]
    return "max_rss", peak["max_rss_mib"]


# --------------------------------------------------------------------------- report


def run_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    started = time.perf_counter()
    backbone = build_workspace(root, args.scenes, args.image_size, args.size)
    base = load_params(REPO / "params.yaml").train.model_dump(mode="json")
    records, micro = args.records_per_step, args.micro_records
    counts = tokens_per_pair(root, backbone, records, micro)
    pairs_per_step = records * TURNS
    specs = [
        RunSpec("single_turn", "single_turn", records * TURNS, micro * TURNS, THROUGHPUT_ZERO),
        *(RunSpec(f"muco_zero{z}", "muco", records, micro, z) for z in ZERO_STAGES),
    ]
    by_name = {spec.name: spec for spec in specs}
    pair = ["single_turn", f"muco_zero{THROUGHPUT_ZERO}"]
    others = [f"muco_zero{z}" for z in ZERO_STAGES if z != THROUGHPUT_ZERO]
    # The compared pair runs `repeats` times in alternating order (A B, other stages, B A, ...)
    # so a slow period of a shared machine, or a drift, hits both modes alike.
    order = []
    for repeat in range(args.repeats):
        order += pair if repeat % 2 == 0 else pair[::-1]
        if repeat == 0:
            order += others
    runs: dict[str, dict[str, Any]] = {}
    for name in order:
        run = run_training(root, backbone, base, by_name[name], args.steps, args.size, args.threads)
        entry = runs.setdefault(name, {"logs": [], "timings": [], "peaks": []})
        entry["logs"].append(run["log"])
        entry["timings"].append(run["timings"])
        entry["peaks"].append(run["peak"])
    for entry in runs.values():
        entry["rates"] = steady_rates(entry["logs"], pairs_per_step)
        entry["peak"] = {
            key: max(peak[key] for peak in entry["peaks"]) for key in entry["peaks"][0]
        }

    modes = []
    for name, label, mode, spec in (
        (f"muco_zero{THROUGHPUT_ZERO}", "muco", "multi_turn", specs[THROUGHPUT_ZERO + 1]),
        ("single_turn", "single_turn", "single_turn", specs[0]),
    ):
        rates = runs[name]["rates"]
        modes.append(
            {
                "mode": label,
                "samples_per_step": spec.global_batch,
                "micro_batch_samples": spec.micro_batch,
                "pairs_per_step": pairs_per_step,
                "pairs_per_s": round(rates["pairs_per_s"], 3),
                "tokens_per_s": round(rates["tokens_per_s"], 1),
                "tokens_per_pair_run": round(rates["tokens_per_pair"], 2),
                "tokens_per_pair_data": round(counts[mode]["tokens_per_pair"], 2),
                "padded_tokens_per_pair_data": round(counts[mode]["padded_tokens_per_pair"], 2),
                "runs": len(runs[name]["logs"]),
                "first_step_s": [round(t, 3) for t in rates["first_step_s"]],
                "median_step_s": round(rates["median_step_s"], 3),
                "mean_pairs_per_s": round(rates["mean_pairs_per_s"], 3),
                "step_seconds": [round(t, 3) for t in rates["step_seconds"]],
                "steps_timed": rates["steps_timed"],
                "whole_run_pairs_per_s": [t["pairs_per_s"] for t in runs[name]["timings"]],
            }
        )
    muco, single = modes
    speedup = muco["pairs_per_s"] / single["pairs_per_s"]
    token_ratio = counts["single_turn"]["tokens_per_pair"] / counts["multi_turn"]["tokens_per_pair"]
    padded_ratio = (
        counts["single_turn"]["padded_tokens_per_pair"]
        / counts["multi_turn"]["padded_tokens_per_pair"]
    )
    zero_rows = []
    for stage in ZERO_STAGES:
        run = runs[f"muco_zero{stage}"]
        kind, mib = peak_mib(run["peak"])
        zero_rows.append(
            {
                "zero_stage": stage,
                "peak_kind": kind,
                "peak_mib": round(mib, 1),
                "max_rss_mib": round(run["peak"]["max_rss_mib"], 1),
                "pairs_per_s": round(run["rates"]["pairs_per_s"], 3),
                "mean_pairs_per_s": round(run["rates"]["mean_pairs_per_s"], 3),
            }
        )
    return {
        "size": args.size,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "child_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "backbone": {
            **backbone.tiny.model_dump(mode="json"),
            "parameters": count_parameters(root / "backbone"),
            "min_pixels": backbone.min_pixels,
            "max_pixels": backbone.max_pixels,
        },
        "data": {
            "scenes": args.scenes,
            "image_size": args.image_size,
            "records": args.scenes,
            "turns": TURNS,
            "tokens_counted": counts,
        },
        "steps": args.steps,
        "repeats": args.repeats,
        "modes": modes,
        "speedup": round(speedup, 3),
        "token_ratio": round(token_ratio, 3),
        "padded_token_ratio": round(padded_ratio, 3),
        "required_fraction": REQUIRED_FRACTION,
        "fraction_of_token_ratio": round(speedup / token_ratio, 3),
        "passed": speedup >= REQUIRED_FRACTION * token_ratio,
        "zero": zero_rows,
        "seconds_total": round(time.perf_counter() - started, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "deepspeed": _version("deepspeed"),
            "transformers": _version("transformers"),
        },
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def print_table(result: dict[str, Any]) -> None:
    backbone, data = result["backbone"], result["data"]
    print(
        f"backbone {result['size']} ({backbone['parameters'] / 1e6:.1f} M parameters, hidden "
        f"{backbone['hidden_size']}, {backbone['num_layers']} layers) on {result['device']}; "
        f"{data['records']} records x {data['turns']} turns at {data['image_size']} px; "
        f"{result['steps']} steps x {result['repeats']} runs per mode, median step time of steps "
        f"2..{result['steps']}"
    )
    print(
        f"{'mode':<12} {'samples/step':>12} {'pairs/step':>10} {'pairs/s':>9} "
        f"{'tokens/s':>10} {'tokens/pair':>11} {'with padding':>12}"
    )
    for row in result["modes"]:
        print(
            f"{row['mode']:<12} {row['samples_per_step']:>12} {row['pairs_per_step']:>10} "
            f"{row['pairs_per_s']:>9.2f} {row['tokens_per_s']:>10.1f} "
            f"{row['tokens_per_pair_data']:>11.2f} {row['padded_tokens_per_pair_data']:>12.2f}"
        )
    verdict = "yes" if result["passed"] else "NO"
    print(f"speed-up (pairs/s MuCo / single-turn):            {result['speedup']:.2f}x")
    print(
        f"token ratio (tokens per pair single-turn / MuCo): {result['token_ratio']:.2f}x "
        f"(with padding {result['padded_token_ratio']:.2f}x)"
    )
    print(
        f"speed-up >= {REQUIRED_FRACTION:.0%} of token ratio: {verdict} "
        f"(speed-up is {result['fraction_of_token_ratio']:.0%} of the token ratio)"
    )
    kind = result["zero"][0]["peak_kind"]
    print(f"{'ZeRO stage':>10} {'peak ' + kind + ' (MiB)':>28} {'pairs/s':>9}   (MuCo, 1 process)")
    for row in result["zero"]:
        print(f"{row['zero_stage']:>10} {row['peak_mib']:>28.1f} {row['pairs_per_s']:>9.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "2b"), default="tiny", help="backbone shape")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (10 tiny, 8 2b)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OpenMP threads per training process (default 1 on CPU, torch's choice on a GPU)",
    )
    parser.add_argument("--scenes", type=int, default=64, help="training scenes (= records)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="scene side in pixels (112 tiny, 448 2b)"
    )
    parser.add_argument(
        "--records-per-step", type=int, default=8, help="MuCo global batch in records (G)"
    )
    parser.add_argument(
        "--micro-records", type=int, default=4, help="MuCo micro-batch in records (m)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each compared mode, alternating"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the workspace here")
    parser.add_argument("--out", type=Path, default=None, help="result JSON")
    args = parser.parse_args()
    if args.size == "2b" and not torch.cuda.is_available():
        parser.error("--size 2b needs a CUDA GPU (torch.cuda.is_available() is false)")
    args.steps = args.steps or (8 if args.size == "2b" else 10)
    args.image_size = args.image_size or DEFAULT_IMAGE_SIZE[args.size]
    if args.threads is None and not torch.cuda.is_available():
        args.threads = 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.steps < 2:
        parser.error("--steps must be at least 2 (step 1 is discarded as warm-up)")
    if args.records_per_step % args.micro_records:
        parser.error("--records-per-step must be a multiple of --micro-records")
    if args.records_per_step > args.scenes:
        parser.error("--records-per-step cannot exceed --scenes")
    name = "train_throughput_2b.json" if args.size == "2b" else "train_throughput.json"
    out = args.out or REPO / "benchmarks" / "results" / name
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run_benchmark(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="muco-throughput-") as folder:
            result = run_benchmark(args, Path(folder))
    result["command"] = " ".join(["benchmarks/train_throughput.py", *sys.argv[1:]])
    print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
