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


def cached_backward_sides(
    encoders: Sequence[Callable[[Chunk], Tensor]],
    chunk_lists: Sequence[Sequence[Chunk]],
    loss_fn: Callable[..., Tensor],
    backward: Callable[[Tensor], None] = Tensor.backward,
) -> Tensor:
    """Accumulate parameter gradients of ``loss_fn`` over all chunks, one chunk graph at a time.

    A side is one kind of sequence the loss compares: queries and targets in MuCo stage 1, plus
    hard negatives when they are on and in stage 2.

    Args:
        encoders: one per side, mapping a chunk to its embeddings ``(n_c, D)``.
        chunk_lists: one per side, that side's micro-batches (sides may differ in count); their
            embeddings concatenate to ``(N_s, D)``.
        loss_fn: ``(N_1, D), ..., (N_s, D) -> scalar``, the sides' concatenated embeddings in
            side order, e.g. :func:`muco.training.losses.muco_loss` (it may all-gather with
            :func:`muco.training.distributed.gather_with_grad`).
        backward: how to backpropagate a chunk's scalar surrogate; a DeepSpeed loop passes
            ``engine.backward`` so that its hooks and loss scaling apply.

    Returns:
        The loss, detached. Sides are encoded in order, each chunk in order, in both passes.

    The gradients match a computation that encodes the same chunks with a graph, side by side
    and chunk by chunk in order: each chunk's CPU and CUDA RNG state is saved before its no-grad
    pass and restored for its re-run, so dropout draws identical masks. On return the RNG
    continues from where the no-grad pass left it. Gradients accumulate into ``.grad``; the
    caller zeroes them.
    """
    if len(encoders) != len(chunk_lists):
        raise ValueError(f"{len(encoders)} encoders but {len(chunk_lists)} chunk lists")
    passes = [
        _encode_without_graph(encode, chunks)
        for encode, chunks in zip(encoders, chunk_lists, strict=True)
    ]
    leaves = [torch.cat(embeddings).requires_grad_() for embeddings, _ in passes]
    loss = loss_fn(*leaves)
    # Rows that do not reach the loss get a zero gradient rather than None.
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    for encode, chunks, (_, states), grad in zip(encoders, chunk_lists, passes, grads, strict=True):
        _reencode_with_graph(encode, chunks, states, grad, backward)
    return loss.detach()
