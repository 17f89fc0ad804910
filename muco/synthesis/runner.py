"""The synthesis run: pool images in, M3T record shards and counted rejections out.

Every input image ends as exactly one record or one rejection. Outcomes are cached as soon as
each image finishes, so a killed run resumes where it stopped and a re-run generates only for
images it has not seen; transient failures are reported but not cached, so the next run retries
them. Records are assembled in manifest order, so the shards do not depend on the order in which
a concurrent generator finished.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from muco.config import SynthesizeConfig, params_hash
from muco.images.decode import sha256_bytes
from muco.images.pool import read_manifest
from muco.io import atomic_directory, atomic_write_json
from muco.provenance import provenance
from muco.records import M3TRecord, record_id, write_shards
from muco.synthesis.cache import SynthesisCache
from muco.synthesis.generators.base import Generator, Outcome, Rejection, SynthesisInput

REJECTIONS = "rejections.parquet"
PROVENANCE = "provenance.json"
REJECTIONS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("image_sha256", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("transient", pa.bool_()),
    ]
)
CODE = ("synthesis", "records.py", "config.py", "io.py")


@dataclass
class SynthesisReport:
    """What a run produced. ``metrics()`` is the stage's DVC metrics (no wall-clock time)."""

    images: int = 0
    records: int = 0
    turns: int = 0
    duplicate_images: int = 0
    from_cache: int = 0
    generated: int = 0
    rejections_by_reason: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        return sum(self.rejections_by_reason.values())

    def metrics(self) -> dict:
        return {
            "images": self.images,
            "records": self.records,
            "turns": self.turns,
            "duplicate_images": self.duplicate_images,
            "rejected": self.rejected,
            "rejections_by_reason": dict(sorted(self.rejections_by_reason.items())),
        }

    def timings(self) -> dict:
        """Run-specific numbers kept out of DVC: cache use and throughput."""
        return {
            "seconds": round(self.seconds, 3),
            "from_cache": self.from_cache,
            "generated": self.generated,
            "generated_per_second": round(self.generated / self.seconds, 3) if self.seconds else 0,
        }


def load_inputs(pool_dir: Path, splits: Sequence[str]) -> list[SynthesisInput]:
    """The pool images of the given splits, in manifest order."""
    pool_dir = Path(pool_dir).resolve()
    rows = read_manifest(pool_dir).to_pylist()
    return [
        SynthesisInput(
            image_id=row["image_id"],
            sha256=row["sha256"],
            path=pool_dir / row["path"],
            scene_graph=pool_dir / row["scene_graph"] if row["scene_graph"] else None,
        )
        for row in rows
        if row["split"] in splits
    ]


def unique_by_content(inputs: Sequence[SynthesisInput]) -> list[SynthesisInput]:
    """The first input of each content hash, in order.

    Records are content-addressed (their id derives from the image's sha256), so two pool
    images with the same bytes (across splits, or from a source that does not deduplicate)
    are one image to synthesis: it is generated, cached and written once.
    """
    seen: set[str] = set()
    unique = []
    for item in inputs:
        if item.sha256 not in seen:
            seen.add(item.sha256)
            unique.append(item)
    return unique


def synthesize(
    pool_dir: Path,
    out_dir: Path,
    cfg: SynthesizeConfig,
    generator: Generator,
    cache_root: Path,
    *,
    progress: bool = False,
) -> SynthesisReport:
    """Generate (or take from the cache) one outcome per pool image and write ``out_dir``."""
    started = time.perf_counter()
    image_root = str(pool_dir)  # as given (e.g. data/images): provenance must not hold /home/...
    pool_dir = Path(pool_dir).resolve()
    listed = load_inputs(pool_dir, cfg.splits)
    inputs = unique_by_content(listed)
    identity = generator.identity()
    cache = SynthesisCache(cache_root / identity["generator"], identity)
    report = SynthesisReport(images=len(listed), duplicate_images=len(listed) - len(inputs))

    outcomes: dict[str, tuple[Outcome, datetime]] = {}
    pending: list[SynthesisInput] = []
    for item in inputs:
        entry = cache.get(item.sha256)
        if entry is None:
            pending.append(item)
        else:
            outcomes[item.sha256] = (entry.outcome, entry.created_at)
    report.from_cache = len(inputs) - len(pending)

    bar = tqdm(total=len(pending), desc="synthesize", unit="img", disable=not progress)
    rejected_now = Counter[str]()

    def on_result(item: SynthesisInput, outcome: Outcome) -> None:
        if item.sha256 in outcomes:
            raise RuntimeError(f"generator returned {item.image_id} twice")
        created_at = datetime.now(UTC)
        cache.put(item.sha256, outcome, created_at)
        outcomes[item.sha256] = (outcome, created_at)
        report.generated += 1
        bar.update()
        if isinstance(outcome, Rejection):
            rejected_now[outcome.reason] += 1
            bar.set_postfix(rejected_now)

    try:
        if pending:
            generator.generate(pending, on_result)
    finally:
        bar.close()
    lost = [item.image_id for item in pending if item.sha256 not in outcomes]
    if lost:
        raise RuntimeError(f"generator returned no outcome for {len(lost)} image(s): {lost[:5]}")

    records: list[M3TRecord] = []
    rejections: list[dict] = []
    for item in inputs:
        outcome, created_at = outcomes[item.sha256]
        if isinstance(outcome, Rejection):
            report.rejections_by_reason[outcome.reason] += 1
            rejections.append(
                {
                    "image_id": item.image_id,
                    "image_sha256": item.sha256,
                    "reason": outcome.reason,
                    "detail": outcome.detail,
                    "transient": not outcome.cacheable,
                }
            )
            continue
        records.append(
            M3TRecord(
                record_id=record_id(item.sha256, identity),
                image_sha256=item.sha256,
                qry_image_path=item.path.relative_to(pool_dir).as_posix(),
                content=outcome,
                generator=identity["generator"],
                generator_model=identity["model"],
                prompt_version=identity["prompt_version"],
                sampling=identity["sampling"],
                created_at=created_at,
            )
        )
        report.turns += outcome.turns
    report.records = len(records)

    with atomic_directory(out_dir) as tmp:
        write_shards(records, tmp, cfg.shard_size)
        pq.write_table(pa.Table.from_pylist(rejections, schema=REJECTIONS_SCHEMA), tmp / REJECTIONS)
        atomic_write_json(
            tmp / PROVENANCE,
            provenance(
                "synthesize",
                params_hash(cfg),
                CODE,
                generator=identity,
                image_root=image_root,
                pool_manifest_sha256=sha256_bytes((pool_dir / "manifest.parquet").read_bytes()),
            ),
        )
    report.seconds = time.perf_counter() - started
    return report
