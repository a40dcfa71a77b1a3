"""The built-in zoo: the packaged and tiny models, registered in the order listings show them.

Each source module defines its entries; registering them all here, in one place, keeps the
order fixed (encoders first, then causal LMs) whichever module a program imports first.
`bench.zoo.registry` imports this module before it registers anything else.
"""

from __future__ import annotations

from bench.zoo.minilm import MINILM_L3, MINILM_L6
from bench.zoo.registry import register_model
from bench.zoo.smollm import SMOLLM2
from bench.zoo.tiny import TINY_BERT, TINY_GPT2, TINY_LLAMA

for _entry in (MINILM_L6, MINILM_L3, TINY_BERT, SMOLLM2, TINY_GPT2, TINY_LLAMA):
    register_model(_entry)
