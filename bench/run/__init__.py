"""Running a matrix: cells, their worker processes, executors, caches built before, provenance."""
