"""Matrices and budgets: the TOML a run is described by, loaded and validated."""
