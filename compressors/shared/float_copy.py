"""The float copy a calibrated torch compressor works on, and the checks that come before it.

GPTQ, AWQ and SmoothQuant each read activations of calibration batches through hooks on a torch
module and then change its weights: they need a torch model (not an exported graph), the task's
train split, and a private fp32 copy on the compression device so the input model (the baseline
and the teacher) stays untouched.
"""

from __future__ import annotations

from torch import nn

from compressors.core.base import CompressContext, CompressorUnavailable, Model, TorchModel


def require_torch(model: Model, method: str) -> TorchModel:
    """`model`, checked to be a torch model.

    Raises:
        CompressorUnavailable: `model` runs on another runtime (an exported graph has no modules to hook).
    """
    if not isinstance(model, TorchModel):
        raise CompressorUnavailable(f"{method} needs a torch model, got runtime {model.runtime!r}")
    return model


def calibration_copy(model: Model, ctx: CompressContext, method: str) -> nn.Module:
    """An fp32 copy of `model`'s module on `ctx.device`, in eval mode, once the model and the context
    are known to fit a calibrated method (a torch model; calibration data in the context).

    Raises:
        CompressorUnavailable: `model` is not a torch model, or the context has no calibration data.
    """
    torch_model = require_torch(model, method)
    if ctx.data is None:
        raise CompressorUnavailable(f"{method} needs calibration data (the task's train split)")
    return torch_model.clone_module().to(ctx.device).float().eval()
