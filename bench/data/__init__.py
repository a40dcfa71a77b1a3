"""Tasks: a dataset, its splits and how its predictions are scored."""
