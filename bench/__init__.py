"""Everything that measures: zoo, tasks, metrics, runner, results, reports."""

import logging

# torchao (imported by transformers when installed) tries to load its CUDA-only kernel
# libraries and logs a warning per file on CPU machines, and torch logs deprecations for
# torchao's enum registrations; both are harmless and would bury the progress output.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
