"""Packing M3T records into query/target sequences for contrastive training (METHODS.md §1, §2).

MuCo stage 1 packs one record (one image, k turns) into two sequences: a query holding the image
once and k user turns, and a target holding the k positive texts; each turn is answered by
``<|emb|><|im_end|>``, so each sequence yields k embeddings. The single-turn baseline
(VLM2Vec-style) packs each turn into its own pair of sequences instead (k = 1).

Randomness (turn order, sub-sampled turns, which query paraphrase) comes from a generator the
caller passes; :class:`PackedDataset` derives it from ``(seed, epoch, index)`` so a sample is
reproducible whatever the worker or process that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
import torch.utils.data

from muco.model import templates
from muco.records import read_records

PackingMode = Literal["multi_turn", "single_turn"]


@dataclass(frozen=True)
class PackedSample:
    """One query sequence and its target sequence, each holding ``turns`` embeddings.

    ``turn_order[i]`` is the record turn placed at position i on both sides, and
    ``target_texts[i]`` its raw positive text; the i-th ``<|emb|>`` of the query is the positive
    of the i-th ``<|emb|>`` of the target. ``image_id`` is the query image's content hash: the
    loss masks all targets of the same image, not only those of the same sample (METHODS.md §1).
    With hard negatives packed, ``negative_text`` holds the turns' ``neg_text`` in the same
    order and template as the target (text only) and ``negative_texts`` the raw texts.
    """

    query_text: str
    target_text: str
    query_image: Path | None
    target_image: Path | None
    image_id: str
    turn_order: tuple[int, ...]
    target_texts: tuple[str, ...]
    turns: int
    negative_text: str | None = None
    negative_texts: tuple[str, ...] = ()


def pack_multi_turn(
    record: dict[str, Any],
    image_root: Path,
    turns: int,
    rng: np.random.Generator,
    negatives: bool = False,
) -> PackedSample:
    """MuCo stage-1 packing of one record (a row of :data:`muco.records.RECORD_SCHEMA`).

    Picks ``turns`` of the record's turns in random order (a random subset when it has more),
    one random query paraphrase per turn, and applies the same order to the positive texts (and
    with ``negatives`` to the hard-negative texts). Raises ``ValueError`` naming the record when
    it has fewer than ``turns`` turns, or a turn lacks its negative.
    """
    available = len(record["pos_text"])
    if available < turns:
        raise ValueError(f"record {_name(record)} has {available} turns, {turns} needed")
    # The first `turns` entries of a random permutation: a uniform random subset, already shuffled.
    order = tuple(int(i) for i in rng.permutation(available)[:turns])
    queries = [_paraphrase(record["qry"][i], rng) for i in order]
    positives = tuple(record["pos_text"][i] for i in order)
    query_image = _image(record["qry_image_path"], image_root)
    target_image = _image(record["pos_image_path"], image_root)
    hard = tuple(_negative(record, i) for i in order) if negatives else ()
    return PackedSample(
        query_text=templates.multi_turn(queries, has_image=query_image is not None),
        target_text=templates.multi_turn(positives, has_image=target_image is not None),
        query_image=query_image,
        target_image=target_image,
        image_id=_image_id(record),
        turn_order=order,
        target_texts=positives,
        turns=turns,
        negative_text=templates.multi_turn(hard, has_image=False) if negatives else None,
        negative_texts=hard,
    )


def pack_single_turn(
    record: dict[str, Any], image_root: Path, rng: np.random.Generator, negatives: bool = False
) -> list[PackedSample]:
    """The single-turn baseline: each turn of the record as its own sample, in record order.

    Each query is one random paraphrase of its turn in the single-turn template (with the
    image); each target is the positive text in the single-turn template, and so is each hard
    negative with ``negatives``.
    """
    query_image = _image(record["qry_image_path"], image_root)
    target_image = _image(record["pos_image_path"], image_root)
    image_id = _image_id(record)
    samples = []
    for turn, (paraphrases, positive) in enumerate(
        zip(record["qry"], record["pos_text"], strict=True)
    ):
        query = _paraphrase(paraphrases, rng)
        hard = (_negative(record, turn),) if negatives else ()
        samples.append(
            PackedSample(
                query_text=templates.single_turn(query, has_image=query_image is not None),
                target_text=templates.single_turn(positive, has_image=target_image is not None),
                query_image=query_image,
                target_image=target_image,
                image_id=image_id,
                turn_order=(turn,),
                target_texts=(positive,),
                turns=1,
                negative_text=templates.single_turn(hard[0], has_image=False) if hard else None,
                negative_texts=hard,
            )
        )
    return samples


class PackedDataset(torch.utils.data.Dataset[PackedSample]):
    """Packed samples over a records directory, reproducible from ``(seed, epoch, index)``.

    ``multi_turn``: one sample per record, ``turns`` embeddings each. ``single_turn``: one sample
    per (record, turn), index ``record * turns + turn``; a record with more than ``turns`` turns
    contributes a random subset of them, drawn once per (seed, epoch, record) so that its
    ``turns`` indices cover distinct turns. Every record must have at least ``turns`` turns
    (checked on construction; validation guarantees it). ``negatives`` packs each turn's
    ``neg_text`` as well (:class:`PackedSample`).
    """

    def __init__(
        self,
        records: Path,
        image_root: Path,
        mode: PackingMode = "multi_turn",
        turns: int = 7,
        seed: int = 0,
        negatives: bool = False,
    ) -> None:
        if mode not in ("multi_turn", "single_turn"):
            raise ValueError(f"unknown packing mode {mode!r}")
        if turns < 1:
            raise ValueError(f"turns must be positive, got {turns}")
        self.table = read_records(records)
        self.image_root = Path(image_root)
        self.mode = mode
        self.turns = turns
        self.seed = seed
        self.negatives = negatives
        self.epoch = 0
        self._check_turn_counts()

    def set_epoch(self, epoch: int) -> None:
        """Draw new turn orders and paraphrases: call at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        per_record = 1 if self.mode == "multi_turn" else self.turns
        return self.table.num_rows * per_record

    def __getitem__(self, index: int) -> PackedSample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.mode == "multi_turn":
            record = self._record(index)
            return pack_multi_turn(record, self.image_root, self.turns, rng, self.negatives)
        record_index, position = divmod(index, self.turns)
        record = self._record(record_index)
        available = len(record["pos_text"])
        if available == self.turns:
            turn = position
        else:
            # A per-record stream (the extra seed word keeps it apart from the per-sample one),
            # so the record's `turns` samples agree on the subset.
            subset_rng = np.random.default_rng([self.seed, self.epoch, record_index, 1])
            turn = int(np.sort(subset_rng.choice(available, self.turns, replace=False))[position])
        return pack_single_turn(record, self.image_root, rng, self.negatives)[turn]

    def _record(self, index: int) -> dict[str, Any]:
        # Slicing the Arrow table keeps memory flat: a million-row M3T file is never expanded
        # into Python objects all at once.
        return self.table.slice(index, 1).to_pylist()[0]

    def _check_turn_counts(self) -> None:
        counts = pc.list_value_length(self.table["pos_text"]).to_numpy(zero_copy_only=False)
        short = np.flatnonzero(counts < self.turns)
        if short.size:
            record = self._record(int(short[0]))
            raise ValueError(
                f"{short.size} record(s) have fewer than {self.turns} turns, first: record "
                f"{_name(record)} with {counts[short[0]]}"
            )


def _paraphrase(paraphrases: list[str], rng: np.random.Generator) -> str:
    return paraphrases[int(rng.integers(len(paraphrases)))]


def _negative(record: dict[str, Any], turn: int) -> str:
    negatives = record.get("neg_text") or []
    text = negatives[turn] if turn < len(negatives) else None
    if not text:
        raise ValueError(
            f"record {_name(record)} has no hard negative (neg_text) for turn {turn}; "
            "train with hard_negatives: false or synthesise negatives"
        )
    return text


def _image(relative: str | None, image_root: Path) -> Path | None:
    # Records store "" (or null in hand-made files) when a side has no image.
    return image_root / relative if relative else None


def _image_id(record: dict[str, Any]) -> str:
    # The public M3T file has no content hash; its image path is the next best identity (two
    # copies of one image under different paths are then not masked, as in the reference).
    return record.get("image_sha256") or f"path:{record['qry_image_path']}"


def _name(record: dict[str, Any]) -> str:
    return record.get("record_id") or f"with image {record['qry_image_path']}"
