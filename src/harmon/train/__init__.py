"""Training: typed configs, recipes, data mixture, DDP/FSDP2, exact resume (see docs/training.md)."""
