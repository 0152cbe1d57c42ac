"""Evaluations: each task measured with its paper's metrics."""
