"""`compbench list`: what can go into a matrix, with each compressor's parameters."""

from __future__ import annotations

from bench.config.matrix import KNOWN_TASKS, shipped_matrices


def print_listing(what: str = "all") -> None:
    sections = ("models", "datasets", "tasks", "compressors", "matrices") if what == "all" else (what,)
    for section in sections:
        print(f"{section}:")
        for line in _lines(section):
            print(f"  {line}")
        print()


def _lines(section: str) -> list[str]:
    if section == "models":
        from bench.zoo.lookup import known_models

        return [f"{name:16} {text}" for name, text in known_models().items()] + [
            f"{'hf:<id>':16} any Hugging Face model (needs the network)",
            f"{'<directory>':16} a model saved with save_pretrained"]
    if section == "datasets":
        from bench.zoo.data import known_datasets
        from bench.zoo.vectors import known_vector_datasets

        named = {**known_datasets(), **{name: f"{text}; the task of the same name, with an mlp-* model"
                                        for name, text in known_vector_datasets().items()}}
        return [f"{name:16} {text}" for name, text in named.items()] + [
            f"{'<file>.txt':16} text for language modelling (paragraphs split on blank lines)",
            f"{'<file>.csv':16} classification data with 'text' and 'label' columns (also .jsonl)"]
    if section == "tasks":
        return [f"{name:16} {spec['type']} on {spec['dataset']}" for name, spec in KNOWN_TASKS.items()] + [
            f"{'<any name>':16} with type = 'classification' | 'causal-lm' and dataset = ..."]
    if section == "compressors":
        from compressors import available, describe

        lines = []
        for name, cls in available().items():
            summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            lines.append(f"{name:16} {summary}")
            for param, kind, default in describe(name):
                lines.append(f"{'':18}{param}: {kind} = {default!r}")
        return lines
    return shipped_matrices()
