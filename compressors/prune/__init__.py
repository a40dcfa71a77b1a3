"""Pruning methods, one per module."""
