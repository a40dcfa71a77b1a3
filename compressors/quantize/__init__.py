"""Quantization methods, one per module."""
