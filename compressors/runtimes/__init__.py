"""Runtimes other than eager torch a compressed model can run on (ONNX Runtime today)."""
