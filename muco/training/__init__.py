"""Training: packing, collation, losses, feature caching, DeepSpeed loop, checkpoints, export."""
