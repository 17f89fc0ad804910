"""Contrastive losses of MuCo (METHODS.md §1), as pure functions of embeddings.

All embeddings are L2-normalised ``(N, D)`` rows; similarities are dot products divided by a fixed
temperature (τ = 0.02 in MuCo). Logit masks are boolean with True meaning "not a negative":
the logit is set to −∞ so the target leaves the softmax entirely, as if its column were deleted.
Gathering across ranks is the caller's job (:mod:`muco.training.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MUCO_TEMPERATURE = 0.02

ImageIds = Sequence[str] | Tensor


def info_nce(
    queries: Tensor,
    targets: Tensor,
    positive_index: Tensor,
    temperature: float,
    mask: Tensor | None = None,
) -> Tensor:
    """InfoNCE: cross-entropy of each query's softmax over targets against its positive.

    Args:
        queries: ``(Nq, D)``, L2-normalised.
        targets: ``(Nt, D)``, L2-normalised.
        positive_index: ``(Nq,)`` long, the column of each query's positive in ``targets``.
        temperature: τ; logits are ``queries @ targets.T / τ``.
        mask: optional ``(Nq, Nt)`` bool, True removes the target from that query's softmax.

    Returns:
        Scalar, the mean over queries.

    Raises:
        ValueError: on a shape mismatch or when a query's positive is masked.
    """
    if positive_index.shape != (queries.shape[0],):
        raise ValueError(
            f"positive_index has shape {tuple(positive_index.shape)}, "
            f"expected ({queries.shape[0]},)"
        )
    # bf16 carries ~3 significant digits; at τ = 0.02 logits reach ±50, where that is an error
    # of ±0.2 per logit, so similarities are taken in at least float32.
    dtype = torch.promote_types(queries.dtype, torch.float32)
    logits = queries.to(dtype) @ targets.to(dtype).T / temperature
    if mask is not None:
        if mask.shape != logits.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(logits.shape)}")
        if mask.gather(1, positive_index[:, None]).any():
            raise ValueError("mask removes a query's own positive")
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, positive_index)


def _codes(query_ids: ImageIds, target_ids: ImageIds) -> tuple[Tensor, Tensor]:
    """Both id lists as long tensors; strings map to ints through one shared vocabulary."""
    if isinstance(query_ids, Tensor) and isinstance(target_ids, Tensor):
        return query_ids, target_ids
    if isinstance(query_ids, Tensor) or isinstance(target_ids, Tensor):
        raise TypeError("query and target ids must both be tensors or both be strings")
    vocabulary: dict[str, int] = {}
    query_codes = [vocabulary.setdefault(i, len(vocabulary)) for i in query_ids]
    target_codes = [vocabulary.setdefault(i, len(vocabulary)) for i in target_ids]
    return torch.tensor(query_codes, dtype=torch.long), torch.tensor(target_codes, dtype=torch.long)


def _keep_positives(mask: Tensor, positive_index: Tensor) -> Tensor:
    """``mask`` with each query's positive column unmasked."""
    rows = torch.arange(mask.shape[0], device=mask.device)
    mask[rows, positive_index] = False
    return mask


def same_image_mask(
    query_image_ids: ImageIds, target_image_ids: ImageIds, positive_index: Tensor
) -> Tensor:
    """MuCo's logit mask: targets from the query's own image that are not its positive.

    The other k−1 turns of an image are siblings, not negatives. The reference masks by sample
    index; here identity is the image content hash, so the same image in another record is
    masked as well instead of becoming a false negative.

    Args:
        query_image_ids: ``Nq`` content-hash strings, or an ``(Nq,)`` long tensor.
        target_image_ids: ``Nt`` ids of the image each target belongs to, same kind as above.
        positive_index: ``(Nq,)`` long, each query's positive column.

    Returns:
        ``(Nq, Nt)`` bool on ``positive_index``'s device, True = masked.
    """
    query_codes, target_codes = _codes(query_image_ids, target_image_ids)
    device = positive_index.device
    mask = query_codes.to(device)[:, None] == target_codes.to(device)[None, :]
    return _keep_positives(mask, positive_index)


def _normalise_text(text: str) -> str:
    return " ".join(text.lower().split())


def duplicate_text_mask(target_texts: Sequence[str], positive_index: Tensor) -> Tensor:
    """Mask targets whose text equals the query's positive text (a project addition).

    Short answers such as "red" or "three" recur across images; another image's "red" is then
    indistinguishable from the positive and would be a false negative. Texts compare after
    lowercasing and collapsing whitespace. MuCo's reference does not do this: callers switch it
    on through configuration and combine it with :func:`same_image_mask` via ``extra_mask``.

    Args:
        target_texts: ``Nt`` target texts.
        positive_index: ``(Nq,)`` long, each query's positive column.

    Returns:
        ``(Nq, Nt)`` bool on ``positive_index``'s device, True = masked.
    """
    vocabulary: dict[str, int] = {}
    codes = [vocabulary.setdefault(_normalise_text(t), len(vocabulary)) for t in target_texts]
    target_codes = torch.tensor(codes, dtype=torch.long, device=positive_index.device)
    mask = target_codes[positive_index][:, None] == target_codes[None, :]
    return _keep_positives(mask, positive_index)


def muco_loss(
    query_emb: Tensor,
    target_emb: Tensor,
    query_image_ids: ImageIds,
    target_image_ids: ImageIds,
    temperature: float = MUCO_TEMPERATURE,
    symmetric: bool = False,
    extra_mask: Tensor | None = None,
) -> Tensor:
    """MuCo stage-1 multi-turn InfoNCE (METHODS.md §1).

    Query ``i``'s positive is target ``i``: the caller lays both sides out in the same order,
    image-major and turn-minor, so ``N = images × k``. Targets of the query's own image other
    than the positive are masked (:func:`same_image_mask`). The single-turn (VLM2Vec-style)
    baseline is this loss with k = 1, where nothing is masked unless an image repeats.

    Args:
        query_emb: ``(N, D)`` L2-normalised query embeddings (gathered over ranks, if any).
        target_emb: ``(N, D)`` L2-normalised target embeddings, same order.
        query_image_ids: ``N`` image ids (content hashes or an ``(N,)`` long tensor).
        target_image_ids: ``N`` ids of the image each target belongs to.
        temperature: τ, fixed at 0.02 in MuCo.
        symmetric: also add the target→query term with the transposed mask and return
            ``(L_qt + L_tq) / 2``; the reference is query→target only (the default).
        extra_mask: optional ``(N, N)`` bool, OR-ed into the mask (for instance
            :func:`duplicate_text_mask`).

    Returns:
        Scalar loss.
    """
    if query_emb.shape[0] != target_emb.shape[0]:
        raise ValueError(
            f"{query_emb.shape[0]} queries but {target_emb.shape[0]} targets; "
            "muco_loss pairs query i with target i"
        )
    positives = torch.arange(query_emb.shape[0], device=query_emb.device)
    mask = same_image_mask(query_image_ids, target_image_ids, positives)
    if extra_mask is not None:
        mask = mask | extra_mask.to(mask.device)
    loss = info_nce(query_emb, target_emb, positives, temperature, mask)
    if not symmetric:
        return loss
    reverse = info_nce(target_emb, query_emb, positives, temperature, mask.T)
    return (loss + reverse) / 2


def muco_stage2_loss(
    q: Tensor,
    q_aux: Tensor,
    t: Tensor,
    t_aux: Tensor,
    hard_negatives: Tensor,
    temperature: float = MUCO_TEMPERATURE,
) -> Tensor:
    """MuCo stage-2 loss with guided in-context reconstruction (METHODS.md §1).

    Each sequence yields two embeddings: the first ``<|emb|>`` (``q``, ``t``) and the one after
    the reconstruction turn (``q_aux``, ``t_aux``). The loss is the sum of four InfoNCE terms,
    (q, t), (q, t_aux), (q_aux, t), (q_aux, t_aux), each over the candidates
    ``cat(target side, hard_negatives)`` with sample ``i``'s positive at column ``i``.

    Args:
        q, q_aux: ``(N, D)`` L2-normalised query embeddings.
        t, t_aux: ``(N, D)`` L2-normalised target embeddings, row ``i`` pairs with query ``i``.
        hard_negatives: ``(M, D)`` L2-normalised, one per sample (``M = N``) in MuCo, embedded
            with the single-turn template.
        temperature: τ, fixed at 0.02 in MuCo.

    Returns:
        Scalar, the sum of the four mean cross-entropies.
    """
    if not q.shape[0] == q_aux.shape[0] == t.shape[0] == t_aux.shape[0]:
        raise ValueError("q, q_aux, t and t_aux must have the same number of rows")
    positives = torch.arange(q.shape[0], device=q.device)
    terms = [
        info_nce(query, torch.cat([target, hard_negatives]), positives, temperature)
        for query in (q, q_aux)
        for target in (t, t_aux)
    ]
    return torch.stack(terms).sum()
