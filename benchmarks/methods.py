"""Peer methods at equal training compute on the default profile, scored on scenes-bench.

Six methods train the same backbone on the same records with the same seed and the rest of
``params.yaml``'s ``train`` section, each through the real train stage
(``python -m muco.stages.train``, as DVC runs it) with a params file this script writes:

=============  ================================================  ==================
method         stages (METHODS.md)                               readout at eval
=============  ================================================  ==================
single_turn    single_turn (§1, the VLM2Vec-style baseline)      ``<|emb|>``
muco           muco (§1 stage 1)                                 ``<|emb|>``
muco+stage2    muco, then muco_stage2 (§1 stage 2)               ``<|emb|>``
unime          unime_distill, then unime_hard_negative (§3)      ``<|emb|>``
coma           coma_compress, then coma_contrastive (§4)         compression mean
cocoa          cocoa_reconstruct, then cocoa_contrastive (§5)    ``<|emb|>``
=============  ================================================  ==================

**Equal training compute** means the same training signal per method: every method runs ``S``
optimizer steps (``--steps``, default ``train.max_steps``), and every step draws
``P = G · k`` query/positive pairs of the same records, with ``G`` = ``train.global_batch_size``
records and ``k`` = ``train.turns``. A stage whose item is a record (``muco``: one record's k
turns packed into one sequence; ``coma_compress``: one record's image and k Q/A turns) takes G
records per step; a stage whose item is a pair (everything else) takes G · k pairs. Micro-batches
scale the same way (``train.micro_batch_size`` records, or that times k pairs), so they only
bound memory. A two-stage method splits its S steps evenly between its stages (the second gets
the odd one), so that no method sees more data or takes more optimizer steps than another.

What this does *not* equalise is the arithmetic: a method may spend more tokens on the same
pairs (single-turn repeats the image and the chat scaffolding for every pair, MuCo stage 2
encodes three sides, CoCoA stage 1 spells the input out again). That difference is the point of
MuCo's efficiency claim, so it is measured rather than hidden: each row reports the tokens the
model ran (non-padding, every side, image tokens included, as the loop counts them), the
training loop's seconds (without building the objectives, e.g. UniME's teacher pass) and the
whole run's wall clock (process start, DeepSpeed, teacher, checkpoints and export included).

Each trained model is then scored with :func:`muco.evaluation.run.evaluate` on scenes-bench
(METHODS.md §6) from the scene pool's ``test`` and ``test_unseen`` splits, embedding with the
readout its export records (``muco_embedding.json``): CoMa with the compression prompt and the
mean of its compression tokens, every other method with the single-turn ``<|emb|>``.

    .venv/bin/python benchmarks/methods.py                          # every method
    .venv/bin/python benchmarks/methods.py --steps 40 --methods muco coma --work /tmp/methods

On a CPU every training process and the scoring use one thread unless ``--threads`` says
otherwise: on the 2-core machine shared with other work, torch's default (a thread per core)
made both ten times slower.

It needs the default profile's scene pool (``data/images``), validated records
(``data/m3t_valid``) and backbone (``models/backbone``): ``make run`` builds them. Results go to
``benchmarks/results/methods.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from muco.config import Params, ScenesBenchmark, TrainConfig, load_params, params_hash
from muco.evaluation.model_spec import ModelSpec
from muco.evaluation.run import LoadedBenchmark, evaluate, load_benchmark
from muco.model.embedder import Readout

REPO = Path(__file__).resolve().parents[1]

# Each compared method: its stages in training order (METHODS.md §1, §3-5).
METHODS: dict[str, tuple[str, ...]] = {
    "single_turn": ("single_turn",),
    "muco": ("muco",),
    "muco+stage2": ("muco", "muco_stage2"),
    "unime": ("unime_distill", "unime_hard_negative"),
    "coma": ("coma_compress", "coma_contrastive"),
    "cocoa": ("cocoa_reconstruct", "cocoa_contrastive"),
}
# Stages whose training item is a record of k turns; every other stage's item is one pair.
RECORD_STAGES = frozenset({"muco", "coma_compress"})
SPLITS = ("test", "test_unseen")
# scenes-bench's meta-tasks (METHODS.md §6) and their column labels in the printed table.
META_TASKS = {"classification": "class.", "vqa": "vqa", "retrieval": "retr.", "grounding": "ground"}


@dataclass(frozen=True)
class Workspace:
    """What every method trains and is scored on: a scene pool (with its held-out splits),
    validated M3T records of its train split, and a backbone directory."""

    images: Path
    records: Path
    backbone: Path

    def missing(self) -> list[str]:
        """One line per input that is not there."""
        checks = (
            (self.images / "manifest.parquet", "the scene pool"),
            (self.records, "the validated records"),
            (self.backbone / "config.json", "the backbone"),
        )
        lines = [f"{path} ({what})" for path, what in checks if not path.exists()]
        if self.records.is_dir() and not any(self.records.glob("*.parquet")):
            lines.append(f"{self.records} holds no parquet shard (the validated records)")
        return lines


# --------------------------------------------------------------------------- plans


def split_steps(steps: int, stages: int) -> list[int]:
    """``steps`` spread evenly over ``stages``; later stages take the remainder."""
    if steps < stages:
        raise ValueError(f"{steps} steps cannot be split over {stages} stages")
    base, extra = divmod(steps, stages)
    return [base + (1 if index >= stages - extra else 0) for index in range(stages)]


def stage_entries(method: str, steps: int, train: TrainConfig) -> list[dict[str, Any]]:
    """The ``train.stages`` of ``method`` at equal compute (module docstring): its stages'
    step shares, and per step G records or G · k pairs."""
    stages = METHODS[method]
    k = train.turns
    entries = []
    for stage, stage_steps in zip(stages, split_steps(steps, len(stages)), strict=True):
        per_item = 1 if stage in RECORD_STAGES else k
        entries.append(
            {
                "method": stage,
                "max_steps": stage_steps,
                "global_batch_size": train.global_batch_size * per_item,
                "micro_batch_size": train.micro_batch_size * per_item,
            }
        )
    return entries


def run_params(params: Params, method: str, steps: int) -> dict[str, Any]:
    """The params file of one method's run: the profile's backbone and train sections with
    the method's stages; checkpoints only where a stage ends (the loop always writes those)."""
    train = params.train.model_dump(mode="json")
    train.update(
        stages=stage_entries(method, steps, params.train),
        checkpoint={"every_steps": steps, "keep_last": 1},
        distributed={"launcher": "none", "nproc_per_node": 1},
    )
    return {"backbone": params.backbone.model_dump(mode="json"), "train": train}


# --------------------------------------------------------------------------- runs


def train_method(
    run_dir: Path, workspace: Workspace, run: dict[str, Any], cache: Path, threads: int | None
) -> dict[str, Any]:
    """Train one method through the train stage in a child process; its measured cost.

    ``threads`` (when given) caps the child's OpenMP / MKL threads.
    """
    run_dir.mkdir(parents=True)
    params_file = run_dir / "params.yaml"
    params_file.write_text(yaml.safe_dump(run, sort_keys=False))
    command = [sys.executable, "-m", "muco.stages.train", "--params", str(params_file)]
    for flag, value in {
        "--data": workspace.records,
        "--images": workspace.images,
        "--backbone": workspace.backbone,
        "--out": run_dir / "model",
        "--checkpoints": run_dir / "checkpoints",
        "--metrics": run_dir / "train.json",
        "--history": run_dir / "train_log.csv",
        "--tensorboard": run_dir / "tensorboard",
        "--timings": run_dir / "timings.json",
    }.items():
        command += [flag, str(value)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # The teacher's cache (UniME) stays in the benchmark's folder, not the user's.
    env.update(PYTHONPATH=str(REPO), MUCO_CACHE_DIR=str(cache))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"training {run_dir.name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"
        )
    timings = json.loads((run_dir / "timings.json").read_text())
    metrics = json.loads((run_dir / "train.json").read_text())
    return {
        "train_seconds": timings["seconds"],
        "wall_seconds": round(wall, 1),
        # The loop reports a rate over its own seconds; their product is its token count.
        "tokens": round(timings["tokens_per_s"] * timings["seconds"]),
        "steps": timings["steps_run"],
        "final_loss": metrics["final_loss"],
    }


def score_model(
    model: Path, params: Params, bench: LoadedBenchmark, batch_size: int
) -> dict[str, Any]:
    """scenes-bench scores of an exported model, embedded by the readout it records."""
    backbone = params.backbone
    spec = ModelSpec(
        model=str(model),
        min_pixels=backbone.min_pixels,
        max_pixels=backbone.max_pixels,
        dtype=backbone.dtype,
        attn_implementation=backbone.attn_implementation,
    )
    (result,), stats = evaluate([bench], spec, batch_size=batch_size)
    return {
        "readout": Readout.of_checkpoint(model).to_json(),
        "summary": result.summary,
        "data_hash": result.data_hash,
        "eval_seconds": round(stats.seconds, 1),
    }


def method_row(
    method: str,
    run: dict[str, Any],
    trained: dict[str, Any],
    scored: dict[str, Any],
    pairs: int,
) -> dict[str, Any]:
    """One result row: the method's stages, its cost and its scores (hit@1, %)."""
    return {
        "method": method,
        "stages": [
            {key: entry[key] for key in ("method", "max_steps", "global_batch_size")}
            for entry in run["train"]["stages"]
        ],
        "pairs": pairs,
        **trained,
        "readout": scored["readout"],
        "eval_seconds": scored["eval_seconds"],
        "scores": {
            key: round(value, 2)
            for key, value in scored["summary"].items()
            if not key.endswith(("/chance", "/datasets"))
        },
    }


def chance_levels(summary: dict[str, float | int]) -> dict[str, float]:
    """The chance levels in a scenes-bench summary, by the key they qualify."""
    return {
        key.removesuffix("/chance"): round(float(value), 2)
        for key, value in summary.items()
        if key.endswith("/chance")
    }


def run_methods(
    methods: Sequence[str],
    steps: int,
    params: Params,
    workspace: Workspace,
    work: Path,
    threads: int | None,
) -> dict[str, Any]:
    """Train and score every method of ``methods`` under ``work``; the result record (rows in
    ``methods`` order). ``work/runs/<method>`` is replaced, never resumed. ``threads`` (when
    given) is the number of CPU threads of each training process and of the scoring."""
    started = time.perf_counter()
    bench = load_benchmark(ScenesBenchmark(data=workspace.images, splits=SPLITS))
    pairs_per_step = params.train.global_batch_size * params.train.turns
    rows: list[dict[str, Any]] = []
    scenes = {"name": bench.name, "protocol_version": bench.protocol_version}
    for method in methods:
        run_dir = work / "runs" / method
        # A leftover checkpoint would be resumed, and its steps would not be timed.
        shutil.rmtree(run_dir, ignore_errors=True)
        run = run_params(params, method, steps)
        _progress(f"{method}: training (steps x items per step) {_describe(run)}")
        trained = train_method(run_dir, workspace, run, work / "cache", threads)
        _progress(f"{method}: {trained['train_seconds']:.0f} s in the training loop; scoring")
        with _torch_threads(threads):
            scored = score_model(run_dir / "model", params, bench, params.evaluate.batch_size)
        # The same for every model: chance depends on the candidate lists, the hash on the data.
        scenes.update(data_hash=scored["data_hash"], chance=chance_levels(scored["summary"]))
        rows.append(method_row(method, run, trained, scored, steps * pairs_per_step))
    return {
        "machine": {**_machine(), "threads_per_run": threads},
        "settings": {
            "steps": steps,
            "records_per_step": params.train.global_batch_size,
            "turns": params.train.turns,
            "pairs_per_step": pairs_per_step,
            "micro_batch_records": params.train.micro_batch_size,
            "seed": params.train.seed,
            "stage_split": "even, the last stages take the remainder",
            "train_params_sha256": params_hash(params.train),
            "backbone": params.backbone.model_dump(mode="json"),
            "data": {
                "images": str(workspace.images),
                "records": str(workspace.records),
                "backbone": str(workspace.backbone),
            },
        },
        "benchmark": {**scenes, "splits": list(SPLITS)},
        "rows": rows,
        "seconds_total": round(time.perf_counter() - started, 1),
    }


def _describe(run: dict[str, Any]) -> str:
    """``stage steps x items per step`` for each stage of a run."""
    return " + ".join(
        f"{entry['method']} {entry['max_steps']} x {entry['global_batch_size']}"
        for entry in run["train"]["stages"]
    )


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (unchanged when None), then restore."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


# --------------------------------------------------------------------------- report


def print_table(result: dict[str, Any]) -> None:
    """One line per method: scenes-bench hit@1 (%), then its training cost."""
    settings, machine = result["settings"], result["machine"]
    print(
        f"{settings['steps']} steps x {settings['pairs_per_step']} pairs "
        f"({settings['records_per_step']} records x {settings['turns']} turns) per method on "
        f"{machine['device_name']} ({machine['cpu_count']} CPUs); scenes-bench hit@1 (%)"
    )
    columns = ("test", *META_TASKS.values(), "unseen")
    print(
        f"{'method':<12} "
        + " ".join(f"{name:>6}" for name in columns)
        + f" {'train s':>8} {'wall s':>8} {'tokens':>11}"
    )
    keys = ("test/overall", *(f"test/{task}" for task in META_TASKS), "test_unseen/overall")
    for row in result["rows"]:
        scores = row["scores"]
        print(
            f"{row['method']:<12} "
            + " ".join(f"{scores[key]:>6.1f}" for key in keys)
            + f" {row['train_seconds']:>8.1f} {row['wall_seconds']:>8.1f} {row['tokens']:>11,}"
        )
    chance = result["benchmark"]["chance"]
    print(f"{'chance':<12} " + " ".join(f"{chance[key]:>6.1f}" for key in keys))


def parse_args(argv: Sequence[str], params: Params) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=params.train.max_steps,
        help="optimizer steps per method, split over its stages (default: train.max_steps)",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="a subset"
    )
    parser.add_argument("--work", type=Path, default=None, help="keep the runs in this folder")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per training process and for scoring (default 1 on CPU, torch's "
        "choice on a GPU)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "results" / "methods.json",
        help="result JSON",
    )
    args = parser.parse_args(argv)
    most_stages = max(len(METHODS[method]) for method in args.methods)
    if args.steps < most_stages:
        parser.error(f"--steps must be at least {most_stages}: one step per stage")
    if args.threads is None and not torch.cuda.is_available():
        # Measured on the 2-core CPU shared with other work: torch's default of one thread per
        # core oversubscribes it and ran the training loop and the scoring 10x slower.
        args.threads = 1
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def default_workspace() -> Workspace:
    """The default profile's outputs, as ``make run`` (``dvc repro``) leaves them."""
    return Workspace(
        images=REPO / "data" / "images",
        records=REPO / "data" / "m3t_valid",
        backbone=REPO / "models" / "backbone",
    )


def benchmark(
    methods: Sequence[str],
    steps: int,
    params: Params,
    workspace: Workspace,
    work: Path | None,
    out: Path,
    command: str,
    threads: int | None,
) -> dict[str, Any]:
    """Run :func:`run_methods` (in ``work``, or a temporary folder), print the table and write
    the result JSON to ``out``; returns the result."""
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        result = run_methods(methods, steps, params, workspace, work, threads)
    else:
        with tempfile.TemporaryDirectory(prefix="muco-methods-") as folder:
            result = run_methods(methods, steps, params, workspace, Path(folder), threads)
    result = {"command": command, **result}
    print_table(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    params = load_params(REPO / "params.yaml")
    args = parse_args(arguments, params)
    workspace = default_workspace()
    missing = workspace.missing()
    if missing:
        raise SystemExit(
            "benchmarks/methods.py trains on the default profile's data and backbone, and "
            "these are missing:\n  "
            + "\n  ".join(missing)
            + "\nBuild them with `make run` (dvc repro: images, synthesize, validate, backbone)."
        )
    command = shlex.join([".venv/bin/python", "benchmarks/methods.py", *arguments])
    benchmark(
        args.methods, args.steps, params, workspace, args.work, args.out, command, args.threads
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
