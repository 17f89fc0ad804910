"""The training methods as objectives of the one DeepSpeed loop (METHODS.md §1, §3-5).

Each objective knows its data (which items a step draws), how to turn items into micro-batches,
and how one optimizer step's gradients are computed from them; the loop in
:mod:`muco.training.loop` runs the configured stages in order through the same engine,
checkpoints and export. :func:`muco.training.objectives.registry.build_objective` makes one.
"""
