"""The types every method shares: Model, CompressContext, the registry, chains, identity."""
