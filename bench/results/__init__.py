"""The one long table: rows, manifests and per-example scores on disk."""
