"""Analyses that work on any model: GradCAM++ and integrated gradients on the shared encoder, concept probes
(the shapes world's own analyses live in :mod:`harmon.world.analyses`)."""
