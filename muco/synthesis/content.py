"""What a generator produces for one image: the k turns of an M3T record (METHODS.md §2).

Provenance (record id, image hash, generator, model, prompt version, sampling, creation time) is
added by the synthesis runner when the content becomes a :class:`muco.records.M3TRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

# MMEB's image placeholder; query texts carry it where the image belongs.
IMAGE_PLACEHOLDER = "<|image_1|>"


class TurnType(IntEnum):
    """The seven turn kinds of M3T, in M3T's order (turn i of a 7-turn record has type i)."""

    CLASSIFICATION = 0
    GLOBAL_VQA_1 = 1
    GLOBAL_VQA_2 = 2
    LOCAL_VQA_1 = 3
    LOCAL_VQA_2 = 4
    CREATIVE_VQA = 5
    RETRIEVAL = 6


M3T_TURN_TYPES: tuple[int, ...] = tuple(int(t) for t in TurnType)


@dataclass(frozen=True)
class M3TContent:
    """k turns about one image. Every per-turn field has length k, in turn order.

    - ``qry[i]``: one or more paraphrases of the query of turn i (each mentions the image with
      :data:`IMAGE_PLACEHOLDER` where the image belongs);
    - ``pos_text[i]``: the target text (a short answer, label or caption);
    - ``pos_sentence[i]``: the target as one full sentence;
    - ``neg_text[i]``: a hard negative target: plausible, but wrong for this image;
    - ``qry_sentence``: a description of the whole image;
    - ``turn_types[i]``: the :class:`TurnType` of turn i.
    """

    qry: tuple[tuple[str, ...], ...]
    pos_text: tuple[str, ...]
    pos_sentence: tuple[str, ...]
    neg_text: tuple[str, ...]
    qry_sentence: str
    turn_types: tuple[int, ...]

    def __post_init__(self) -> None:
        k = len(self.turn_types)
        for name in ("qry", "pos_text", "pos_sentence", "neg_text"):
            if len(getattr(self, name)) != k:
                raise ValueError(f"{name} has {len(getattr(self, name))} turns, expected {k}")
        if any(not paraphrases for paraphrases in self.qry):
            raise ValueError("every turn needs at least one query paraphrase")

    @property
    def turns(self) -> int:
        return len(self.turn_types)

    def to_dict(self) -> dict:
        """Plain JSON-able form (lists), as stored in the synthesis cache."""
        return {
            "qry": [list(p) for p in self.qry],
            "pos_text": list(self.pos_text),
            "pos_sentence": list(self.pos_sentence),
            "neg_text": list(self.neg_text),
            "qry_sentence": self.qry_sentence,
            "turn_types": list(self.turn_types),
        }

    @classmethod
    def from_dict(cls, data: dict) -> M3TContent:
        """Inverse of :meth:`to_dict`."""
        return cls(
            qry=tuple(tuple(p) for p in data["qry"]),
            pos_text=tuple(data["pos_text"]),
            pos_sentence=tuple(data["pos_sentence"]),
            neg_text=tuple(data["neg_text"]),
            qry_sentence=data["qry_sentence"],
            turn_types=tuple(int(t) for t in data["turn_types"]),
        )
