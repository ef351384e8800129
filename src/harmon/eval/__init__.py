"""Evaluation: the shapes world (exact scores); field formats live beside it."""
