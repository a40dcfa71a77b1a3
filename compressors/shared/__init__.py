"""Pieces several methods use: the training loop, calibration statistics, surgery, artifacts."""
