"""Does a trained model answer the question, or match the scene its sibling targets describe?

MuCo stage 1 encodes an image's k targets in one causal sequence (METHODS.md §1), so target j
also reads targets < j; a caption among them names every object. A model can then score a
colour question against "red" by recognising the *scene* in the target's context instead of
the colour in the image, and evaluation, which embeds "red" alone, exposes that. This script
measures it on M3T records: per turn type, each query is ranked among the same-type targets of
all ``--records`` records (a hit when the top target's text equals the positive's, so repeated
short answers are not misses), with

- ``in-context``: queries and targets packed as in training, targets causal;
- ``bare``: the same multi-turn queries, each target alone in the single-turn template (what
  ``target_turns: isolated`` trains against);
- ``single-turn``: query and target each alone in the single-turn template, as evaluated.

    .venv/bin/python benchmarks/target_context.py --model models/muco [MODEL ...] \\
        --records data/m3t_valid --images data/images

Results, one entry per model, go to ``benchmarks/results/target_context.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from muco.config import BackboneConfig
from muco.model.embedder import Embedder, EmbedInput
from muco.synthesis.content import M3T_TURN_TYPES, TurnType
from muco.training.collate import Collator
from muco.training.packing import PackedDataset, PackedSample

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("in-context", "bare", "single-turn")


def hits_by_turn(
    queries: np.ndarray, targets: np.ndarray, texts: Sequence[str], turns: np.ndarray
) -> dict[int, float]:
    """hit@1 (%) per turn type: each query against the targets of its own turn type.

    Args:
        queries, targets: ``(N, D)`` L2-normalised rows, row i of each the same pair.
        texts: the positive text of each row (N).
        turns: ``(N,)`` the turn type of each row.
    """
    result = {}
    for turn in np.unique(turns):
        rows = np.flatnonzero(turns == turn)
        best = rows[np.argmax(queries[rows] @ targets[rows].T, axis=1)]
        result[int(turn)] = 100.0 * float(
            np.mean([texts[b] == texts[r] for b, r in zip(best, rows, strict=True)])
        )
    return result


def packed_embeddings(
    embedder: Embedder, samples: Sequence[PackedSample], batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Query and causal-target embeddings ``(N·k, D)`` of packed samples, as in training."""
    collator = Collator(embedder.backbone.processor)
    queries, targets = [], []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            batch = collator(samples[start : start + batch_size])
            queries.append(
                embedder.forward_embeddings(batch.query.to(embedder.backbone.model.device))
            )
            targets.append(
                embedder.forward_embeddings(batch.target.to(embedder.backbone.model.device))
            )
    return torch.cat(queries).cpu().numpy(), torch.cat(targets).cpu().numpy()


def measure(
    model: Path,
    records: Path,
    images: Path,
    *,
    count: int,
    seed: int,
    batch_size: int,
    pixels: dict[str, int],
) -> dict[str, Any]:
    """hit@1 per turn type and setting (module docstring) for ``count`` records; single-turn
    queries use each turn's first paraphrase."""
    embedder = Embedder.from_pretrained(model, **pixels)
    embedder.backbone.model.eval()
    dataset = PackedDataset(records, images, turns=len(M3T_TURN_TYPES), seed=seed)
    samples = [dataset[index] for index in range(min(count, len(dataset)))]
    texts = [text for sample in samples for text in sample.target_texts]
    turns = np.array([turn for sample in samples for turn in sample.turn_order])
    queries, in_context = packed_embeddings(embedder, samples, batch_size)
    bare = embedder.encode([EmbedInput(text=text) for text in texts], batch_size=batch_size)
    single_queries = embedder.encode(
        [
            EmbedInput(text=dataset.table["qry"][index].as_py()[turn][0], image=sample.query_image)
            for index, sample in enumerate(samples)
            for turn in sample.turn_order
        ],
        batch_size=batch_size,
    )
    table = {
        "in-context": hits_by_turn(queries, in_context, texts, turns),
        "bare": hits_by_turn(queries, bare, texts, turns),
        "single-turn": hits_by_turn(single_queries, bare, texts, turns),
    }
    # M3T records hold their turns in M3T's order, so a turn's index is its type.
    return {
        "model": str(model),
        "records": len(samples),
        "seed": seed,
        "hit_at_1": {
            setting: {TurnType(t).name.lower(): round(v, 1) for t, v in hits.items()}
            for setting, hits in table.items()
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="checkpoints")
    parser.add_argument("--records", type=Path, required=True, help="M3T records directory")
    parser.add_argument("--images", type=Path, required=True, help="the records' image root")
    parser.add_argument("--count", type=int, default=256, help="records to pack")
    parser.add_argument("--seed", type=int, default=1, help="packing seed (turn order)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-pixels", type=int, default=BackboneConfig().min_pixels)
    parser.add_argument("--max-pixels", type=int, default=BackboneConfig().max_pixels)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/target_context.json")
    args = parser.parse_args(argv)
    pixels = {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels}
    models = [
        measure(
            model,
            args.records,
            args.images,
            count=args.count,
            seed=args.seed,
            batch_size=args.batch_size,
            pixels=pixels,
        )
        for model in args.model
    ]
    for result in models:
        print(f"{result['model']}: {result['records']} records, hit@1 (%) of each query among")
        print("the targets of its turn type")
        print(f"{'turn type':22s}" + "".join(f"{s:>13s}" for s in SETTINGS))
        for turn_type in result["hit_at_1"]["bare"]:
            hits = (result["hit_at_1"][setting][turn_type] for setting in SETTINGS)
            print(f"{turn_type:22s}" + "".join(f"{value:13.1f}" for value in hits))
    command = ["benchmarks/target_context.py", *(sys.argv[1:] if argv is None else argv)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"command": " ".join(command), "models": models}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
