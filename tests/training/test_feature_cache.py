"""Feature caching gives the loss and parameter gradients of the uncached computation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from muco.training.feature_cache import cached_backward_sides
from muco.training.losses import muco_loss

N, D_IN, D_OUT, K = 10, 6, 4, 2
IMAGE_IDS = [f"img{i // K}" for i in range(N)]


def _encoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(D_IN, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, D_OUT)
    ).double()


def _encode(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda chunk: F.normalize(model(chunk), dim=-1)


def _loss(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return muco_loss(queries, targets, IMAGE_IDS, IMAGE_IDS, temperature=0.05)


def _chunks(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x.split(3))  # 3 + 3 + 3 + 1


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(N, D_IN, generator=generator, dtype=torch.float64)
    return queries, torch.randn(N, D_IN, generator=generator, dtype=torch.float64)


def _gradients(*models: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for model in models for p in model.parameters()]


def _assert_same(cached: list[torch.Tensor], reference: list[torch.Tensor]) -> None:
    assert len(cached) == len(reference)
    for got, want in zip(cached, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_matches_chunkwise_graph_with_dropout() -> None:
    queries, targets = _inputs()
    query_model, target_model = _encoder(2), _encoder(3)

    # Reference: one graph over the batch, encoded in the same chunks and order, so dropout
    # draws the same numbers as the cached run.
    torch.manual_seed(0)
    query_emb = torch.cat([_encode(query_model)(c) for c in _chunks(queries)])
    target_emb = torch.cat([_encode(target_model)(c) for c in _chunks(targets)])
    reference_loss = _loss(query_emb, target_emb)
    reference_loss.backward()
    reference_grads = _gradients(query_model, target_model)
    reference_next = torch.rand(1)
    for model in (query_model, target_model):
        model.zero_grad()

    torch.manual_seed(0)
    loss = cached_backward_sides(
        [_encode(query_model), _encode(target_model)], [_chunks(queries), _chunks(targets)], _loss
    )
    assert not loss.requires_grad
    torch.testing.assert_close(loss, reference_loss.detach(), atol=1e-10, rtol=0)
    _assert_same(_gradients(query_model, target_model), reference_grads)
    # The RNG continues as after the no-grad pass, i.e. as after the reference's forward.
    torch.testing.assert_close(torch.rand(1), reference_next)


def test_matches_single_full_batch_forward_without_dropout() -> None:
    queries, targets = _inputs()
    model = _encoder(4).eval()  # one shared encoder for both sides

    _loss(_encode(model)(queries), _encode(model)(targets)).backward()
    reference_grads = _gradients(model)
    model.zero_grad()

    cached_backward_sides([_encode(model)] * 2, [_chunks(queries), _chunks(targets)], _loss)
    _assert_same(_gradients(model), reference_grads)


def test_dropout_really_differs_between_chunks() -> None:
    # Guards the first test: with dropout active, re-running a chunk from a different RNG state
    # changes its output, so a cache without RNG replay would not match.
    model = _encoder(5)
    x = _inputs()[0]
    torch.manual_seed(0)
    first = model(x)
    assert not torch.allclose(first, model(x))
