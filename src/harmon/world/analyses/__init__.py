"""Analyses of a model on the shapes world: probes, concept localisation, word binding, codec round trips,
the generator's use of context, the joint-training (synergy) study, and the report that gathers them."""
