"""Large contrastive batches through feature caching over micro-batches (METHODS.md §1).

The contrastive loss couples every query with every target of the global batch, so it cannot be
split into independent micro-batch losses. Feature caching (the GradCache idea, used by MuCo's
reference) splits the step in three:

1. encode every chunk without a graph, keeping only the embeddings;
2. compute the loss on the concatenated embeddings as autograd leaves and take
   d loss / d embedding for every row;
3. re-encode each chunk with a graph and backpropagate that cached gradient into it.

By the chain rule the parameter gradients equal those of one graph over the whole batch, while
activation memory is that of a single chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

QueryChunk = TypeVar("QueryChunk")
TargetChunk = TypeVar("TargetChunk")
Chunk = TypeVar("Chunk")


@dataclass(frozen=True)
class _RngState:
    """The CPU and (initialised) CUDA generator states before a chunk's first forward."""

    cpu: Tensor
    cuda: list[Tensor]

    @classmethod
    def capture(cls) -> _RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state, then put the generators back where they were."""
        with torch.random.fork_rng(devices=range(len(self.cuda)), device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def _encode_without_graph(
    encode: Callable[[Chunk], Tensor], chunks: Sequence[Chunk]
) -> tuple[list[Tensor], list[_RngState]]:
    """Step 1 for one side: embeddings ``(n_c, D)`` per chunk and the RNG state before each."""
    embeddings, states = [], []
    for chunk in chunks:
        states.append(_RngState.capture())
        with torch.no_grad():
            embeddings.append(encode(chunk))
    return embeddings, states


def _reencode_with_graph(
    encode: Callable[[Chunk], Tensor],
    chunks: Sequence[Chunk],
    states: Sequence[_RngState],
    grad: Tensor,
    backward: Callable[[Tensor], None],
) -> None:
    """Step 3 for one side: backpropagate each chunk's rows of ``grad`` ``(N, D)`` into it."""
    start = 0
    for chunk, state in zip(chunks, states, strict=True):
        # Dropout must draw the same numbers as in step 1, or the re-run computes a different
        # function from the one whose gradient was cached.
        with state.replay():
            embedding = encode(chunk)
        chunk_grad = grad[start : start + embedding.shape[0]]
        start += embedding.shape[0]
        # d/dθ of sum(e · g) with g fixed is J_eᵀ g, the chunk's share of d loss / dθ.
        backward((embedding * chunk_grad).sum())


def cached_backward(
    encode_query: Callable[[QueryChunk], Tensor],
    encode_target: Callable[[TargetChunk], Tensor],
    query_chunks: Sequence[QueryChunk],
    target_chunks: Sequence[TargetChunk],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> Tensor:
    """Accumulate parameter gradients of ``loss_fn`` over all chunks, one chunk graph at a time.

    Args:
        encode_query: maps a query chunk to its embeddings ``(n_c, D)``.
        encode_target: maps a target chunk to its embeddings ``(m_c, D)``.
        query_chunks: micro-batches of queries; their embeddings concatenate to ``(Nq, D)``.
        target_chunks: micro-batches of targets; their embeddings concatenate to ``(Nt, D)``.
        loss_fn: ``(Nq, D), (Nt, D) -> scalar``, e.g. :func:`muco.training.losses.muco_loss`
            (it may all-gather with :func:`muco.training.distributed.gather_with_grad`).
        backward: how to backpropagate a chunk's scalar surrogate; a DeepSpeed loop passes
            ``engine.backward`` so that its hooks and loss scaling apply.

    Returns:
        The loss, detached.

    The gradients match a computation that encodes the same chunks with a graph, queries first
    and then targets, in order: each chunk's CPU and CUDA RNG state is saved before its no-grad
    pass and restored for its re-run, so dropout draws identical masks. On return the RNG
    continues from where the no-grad pass left it. Gradients accumulate into ``.grad``; the
    caller zeroes them.
    """
    query_embeddings, query_states = _encode_without_graph(encode_query, query_chunks)
    target_embeddings, target_states = _encode_without_graph(encode_target, target_chunks)

    queries = torch.cat(query_embeddings).requires_grad_()
    targets = torch.cat(target_embeddings).requires_grad_()
    loss = loss_fn(queries, targets)
    # Rows that do not reach the loss get a zero gradient rather than None.
    query_grad, target_grad = torch.autograd.grad(
        loss, (queries, targets), allow_unused=True, materialize_grads=True
    )

    _reencode_with_graph(encode_query, query_chunks, query_states, query_grad, backward)
    _reencode_with_graph(encode_target, target_chunks, target_states, target_grad, backward)
    return loss.detach()
