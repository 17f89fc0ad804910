"""Losses of MuCo (METHODS.md §1) and its peers UniME, CoMa, CoCoA (§3-5), as pure functions.

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
    hard_negatives: Tensor | None = None,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """MuCo stage-1 multi-turn InfoNCE (METHODS.md §1).

    Query ``i``'s positive is target ``i``: the caller lays both sides out in the same order,
    image-major and turn-minor, so ``N = images × k``. Targets of the query's own image other
    than the positive are masked (:func:`same_image_mask`). The single-turn (VLM2Vec-style)
    baseline is this loss with k = 1, where nothing is masked unless an image repeats.

    With ``hard_negatives`` (a project addition: the reference's stage 1 uses none) each query's
    softmax runs over ``cat(targets, hard_negatives)``; the negatives of the query's own image
    stay in it (they are wrong answers about that image, the point of having them), unless
    ``negative_mask`` removes them.

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
        hard_negatives: optional ``(M, D)`` L2-normalised extra candidates for every query.
        negative_mask: optional ``(N, M)`` bool, True removes a negative from that query's
            softmax (for instance one whose text equals the query's positive).

    Returns:
        Scalar loss. The symmetric term, if on, runs over the targets only.
    """
    if query_emb.shape[0] != target_emb.shape[0]:
        raise ValueError(
            f"{query_emb.shape[0]} queries but {target_emb.shape[0]} targets; "
            "muco_loss pairs query i with target i"
        )
    if negative_mask is not None and hard_negatives is None:
        raise ValueError("negative_mask given without hard_negatives")
    positives = torch.arange(query_emb.shape[0], device=query_emb.device)
    mask = same_image_mask(query_image_ids, target_image_ids, positives)
    if extra_mask is not None:
        mask = mask | extra_mask.to(mask.device)
    if hard_negatives is None:
        loss = info_nce(query_emb, target_emb, positives, temperature, mask)
    else:
        if negative_mask is None:
            negative_mask = mask.new_zeros((mask.shape[0], hard_negatives.shape[0]))
        candidates = torch.cat([target_emb, hard_negatives])
        full_mask = torch.cat([mask, negative_mask.to(mask.device)], dim=1)
        loss = info_nce(query_emb, candidates, positives, temperature, full_mask)
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
    mask: Tensor | None = None,
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
        mask: optional ``(N, N + M)`` bool, True removes a candidate from a query's softmax in
            all four terms (siblings from the same image, duplicate texts); not the positive.

    Returns:
        Scalar, the sum of the four mean cross-entropies.
    """
    if not q.shape[0] == q_aux.shape[0] == t.shape[0] == t_aux.shape[0]:
        raise ValueError("q, q_aux, t and t_aux must have the same number of rows")
    positives = torch.arange(q.shape[0], device=q.device)
    terms = [
        info_nce(query, torch.cat([target, hard_negatives]), positives, temperature, mask)
        for query in (q, q_aux)
        for target in (t, t_aux)
    ]
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------- UniME (§3)

UNIME_TEMPERATURE = 0.02
UNIME_MARGIN = 0.1
UNIME_HARD_NEGATIVES = 8


def _similarities(queries: Tensor, targets: Tensor) -> Tensor:
    dtype = torch.promote_types(queries.dtype, torch.float32)
    return queries.to(dtype) @ targets.to(dtype).T


def distillation_loss(
    student_queries: Tensor,
    student_targets: Tensor,
    teacher_queries: Tensor,
    teacher_targets: Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> Tensor:
    """UniME stage 1: KL(teacher ‖ student) of row-wise softmaxes of in-batch similarities.

    METHODS.md §3: a text-embedding teacher embeds the same text pairs; for each anchor ``i``
    both models give a distribution over the batch's positives ``j``,
    ``P_i = softmax_j(sim(q_i, t_j) / τ)``, and the loss is ``mean_i KL(P_teacher,i ‖ P_student,i)``
    (``F.kl_div`` with ``reduction="batchmean"``). The teacher side is a constant.

    Args:
        student_queries, student_targets: ``(N, D_s)`` L2-normalised student embeddings, row
            ``i`` of both from pair ``i``.
        teacher_queries, teacher_targets: ``(N, D_t)`` L2-normalised teacher embeddings of
            the same texts, same order (``D_t`` may differ from ``D_s``).
        student_temperature, teacher_temperature: τ of each side's softmax.

    Returns:
        Scalar, the mean over anchors of the KL divergence (nats).
    """
    if not (
        student_queries.shape[0]
        == student_targets.shape[0]
        == teacher_queries.shape[0]
        == teacher_targets.shape[0]
    ):
        raise ValueError("student and teacher embeddings must have the same number of rows")
    student = _similarities(student_queries, student_targets) / student_temperature
    with torch.no_grad():
        teacher = _similarities(teacher_queries, teacher_targets) / teacher_temperature
    teacher = teacher.to(student.dtype)
    log_student = F.log_softmax(student, dim=1)
    log_teacher = F.log_softmax(teacher, dim=1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean()


def select_hard_negatives(
    similarities: Tensor,
    positive_index: Tensor,
    margin: float = UNIME_MARGIN,
    k: int = UNIME_HARD_NEGATIVES,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """UniME stage 2's candidate selection: false-negative filter, then the k hardest.

    METHODS.md §3: a candidate ``j`` (not the positive, not masked) is a *false negative* and
    dropped when ``s_ij > s_i,pos + margin``; of the remaining ones the ``k`` most similar are
    kept. When fewer than ``k`` remain, all of them are used; a dropped candidate is never
    re-admitted to fill the ``k`` slots. With every candidate dropped, a row has no negative.
    Ties are broken by column order (the lower index first).

    Args:
        similarities: ``(N, M)`` query-candidate similarities (cosines, before τ).
        positive_index: ``(N,)`` long, each query's positive column.
        margin: α, 0.1 in UniME.
        k: how many hard negatives per query, 8 in UniME.
        mask: optional ``(N, M)`` bool, True = never a candidate (e.g. the same image).

    Returns:
        ``(indices, valid)``: ``(N, k)`` long columns, hardest first, and ``(N, k)`` bool; an
        invalid slot (fewer than ``k`` left) holds index 0 and must be ignored.
    """
    n, m = similarities.shape
    if positive_index.shape != (n,):
        raise ValueError(f"positive_index has shape {tuple(positive_index.shape)}, expected ({n},)")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    with torch.no_grad():
        scores = similarities.detach().clone()
        rows = torch.arange(n, device=scores.device)
        positive = scores[rows, positive_index]
        excluded = scores > positive[:, None] + margin
        excluded[rows, positive_index] = True
        if mask is not None:
            excluded |= mask.to(excluded.device)
        scores = scores.masked_fill(excluded, float("-inf"))
        # A stable descending sort: equal similarities keep column order.
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : min(k, m)]
        valid = torch.isfinite(scores.gather(1, order))
        if order.shape[1] < k:
            pad = k - order.shape[1]
            order = F.pad(order, (0, pad), value=0)
            valid = F.pad(valid, (0, pad), value=False)
        order = order.masked_fill(~valid, 0)
    return order, valid


def hard_negative_loss(
    queries: Tensor,
    targets: Tensor,
    positive_index: Tensor,
    temperature: float = UNIME_TEMPERATURE,
    margin: float = UNIME_MARGIN,
    k: int = UNIME_HARD_NEGATIVES,
    mask: Tensor | None = None,
) -> Tensor:
    """UniME stage 2: cross-entropy over [positive, k hard negatives] (METHODS.md §3).

    The negatives come from :func:`select_hard_negatives` on the in-batch similarities
    (gathered over ranks by the caller); the selection is discrete and carries no gradient,
    the selected logits do. A row left with fewer than ``k`` negatives uses what remains; a
    row with none (all filtered) has the single logit of its positive, so its cross-entropy
    is exactly 0 with zero gradient: it still counts in the mean over queries.

    Args:
        queries: ``(N, D)`` L2-normalised.
        targets: ``(M, D)`` L2-normalised candidates (the global batch's targets).
        positive_index: ``(N,)`` long.
        temperature: τ, 0.02 in UniME.
        margin, k: see :func:`select_hard_negatives`.
        mask: optional ``(N, M)`` bool, True = never a negative.

    Returns:
        Scalar, the mean over queries.
    """
    similarities = _similarities(queries, targets)
    indices, valid = select_hard_negatives(similarities, positive_index, margin, k, mask)
    rows = torch.arange(queries.shape[0], device=similarities.device)
    positive = similarities[rows, positive_index][:, None]
    negatives = similarities.gather(1, indices).masked_fill(~valid, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature
    labels = torch.zeros(queries.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------- next-token (§4, §5)


def next_token_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Where a next-token loss applies: position ``p`` predicts the label at ``p + 1``.

    Args:
        labels: ``(B, L)`` long, the token to predict at each position or −100 for none.

    Returns:
        ``(positions, targets)``: ``(B, L)`` bool, True at the positions whose *next* token is
        labelled (the last position never is), and the ``(T,)`` long targets in row-major order.
    """
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != -100
    return positions, labels[:, 1:][labels[:, 1:] != -100]


def next_token_loss_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed next-token cross-entropy (nats) of ``(T, V)`` logits against ``(T,)`` targets.

    A sum, not a mean: the caller divides by the token count of the whole step, so micro-
    batches of different sizes weigh their tokens equally (CoMa and CoCoA stage 1).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype), targets, reduction="sum")
