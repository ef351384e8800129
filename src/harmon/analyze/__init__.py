"""Analyses of a trained model: GradCAM++ on the shared encoder, linear probes of its features."""
