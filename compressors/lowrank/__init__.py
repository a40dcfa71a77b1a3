"""Low-rank decompositions, one per module."""
