"""Inference matmuls of the RWKV network through oneDNN on the CPU (docs/benchmark.md,
"Session 15: the matmuls through oneDNN").

PyTorch sends a float32 `F.linear` or `torch.mm` on the CPU to MKL's sgemm, and MKL runs its
AVX2 kernels on AMD processors whatever they support: 100-110 GFLOP/s on one core of this
project's AMD EPYC machine, against 230-250 for oneDNN's AVX-512 kernels on the network's shapes
(MKL_ENABLE_INSTRUCTIONS does not change it). Convolutions already go to oneDNN, so the UNet had
the fast kernels and the RWKV network, whose work is mostly matmuls, did not. oneDNN computes the
same float32 products (another summation order: results within float32 rounding). The op is
PyTorch's own oneDNN linear (`torch.ops.mkldnn._linear_pointwise`, the one TorchInductor's CPU
backend emits); without it, or with autograd on, `linear` is `F.linear`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


AVAILABLE = _onednn_linear_available()
"""Whether this PyTorch build has oneDNN's linear."""
ENABLED = AVAILABLE and os.environ.get("MEDSEGRWKV_ONEDNN", "1") != "0"
"""Whether `linear` takes oneDNN for CPU float32 inference; MEDSEGRWKV_ONEDNN=0 keeps PyTorch's
default (MKL), e.g. to compare on an Intel CPU, where MKL runs its AVX-512 kernels too."""


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight^T (+ bias), like `F.linear`: through oneDNN for float32 on the CPU without
    autograd. `x` may be a strided view (a transposed matrix, a channels-last map's movedim); a
    strided `weight` is copied first (oneDNN's kernels for one were 100x slower)."""
    if (ENABLED and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_grad_enabled()):
        return torch.ops.mkldnn._linear_pointwise(x, weight.contiguous(), bias, "none", [], "")
    return F.linear(x, weight, bias)


if AVAILABLE:  # also when switched off: tests and benchmarks may switch it on again
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_flops(x_shape: tuple[int, ...], w_shape: tuple[int, ...], *args, out_shape=None, **kwargs) -> int:
        """So that FlopCounterMode (`nets.complexity`) counts the oneDNN linear as it counts F.linear."""
        return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]
