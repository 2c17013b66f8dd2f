"""Mamba's selective scan (S6) in pure PyTorch, for VM-UNet's SS2D (docs/design.md §5.2).

Per channel d and state n, with Δ = softplus(delta + delta_bias):

    h_t = exp(Δ_t A_dn) h_{t-1} + Δ_t B_nt u_t,        y_t = Σ_n C_nt h_t + D_d u_t.

The sequence is cut into chunks, visited in order (a loop over chunks, never over tokens).
Inside a chunk the recurrence is solved in log space: with S_t the cumulative sum of the log
decays Δ A since the chunk start,

    h_t = e^{S_t} (h_0 + Σ_{s<=t} e^{-S_s} Δ_s B_s u_s),

two exponentials and two cumulative sums over the chunk, all in float32. e^{-S_s} grows with
the chunk's total decay, so the exponents are centred on half of it and the chunk is made short
enough (64 tokens, halved while needed, at least 8) that the total stays within MAX_CHUNK_DECAY:
the centred factors then stay within e^{±64}. On the CPU the chunk is also halved until its
(batch, channels, states, chunk) tensors fit in about CPU_CHUNK_BYTES, so that they stay in
cache (VM-UNet on 8 slices of 256x256 runs twice as fast as with 64-token chunks). Each step's
log decay is clamped at -LOG_DECAY_MIN: a step that shrinks a state by more than e^{-16} (1e-7)
leaves nothing measurable of it either way. Each chunk is recomputed in the backward pass
(activation checkpointing), so training memory holds one chunk's (batch, channels, states,
chunk) tensors, not the whole sequence's. When `mamba_ssm` is installed and the tensors are on CUDA, its fused
kernel runs instead (same arguments, same results).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

try:  # optional CUDA kernel; the pure-PyTorch scan below needs nothing
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_selective_scan
except ImportError:  # pragma: no cover - depends on the installation
    mamba_selective_scan = None

MAX_CHUNK = 64
MIN_CHUNK = 8
LOG_DECAY_MIN = 16.0
MAX_CHUNK_DECAY = MIN_CHUNK * LOG_DECAY_MIN
"""Largest total log decay inside a chunk: centred factors stay within e^{±64} (float32 reaches e^88)."""
CPU_CHUNK_BYTES = 1 << 20


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   use_kernel: bool = True) -> Tensor:
    """The selective scan with mamba_ssm's `selective_scan_fn` signature (without z).

    u, delta: (b, d, l); A: (d, n), real, negative for a decaying state; B, C: (b, n, l) or
    (b, g, n, l) with d divisible by g (channel d uses group d // (d / g)); D, delta_bias: (d,).
    Returns y (b, d, l) in float32.
    """
    if use_kernel and mamba_selective_scan is not None and u.is_cuda:
        return mamba_selective_scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
    return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus)


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                           delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The pure-PyTorch path of `selective_scan` (see the module docstring)."""
    b, d, length = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    groups, n = B.shape[1], A.shape[1]
    if d % groups or delta.shape != u.shape or A.shape[0] != d or B.shape != (b, groups, n, length) \
            or C.shape != B.shape:
        raise ValueError(f"selective_scan: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, C {tuple(C.shape)} do not fit together")
    with torch.autocast(device_type="cuda" if u.is_cuda else "cpu", enabled=False):
        u, delta = u.float(), delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        # Channels split into (groups, channels per group) so that B and C broadcast, never copied.
        shape = (b, groups, d // groups, length)
        u_g, delta_g = u.reshape(shape), delta.reshape(shape)
        A_g = A.float().reshape(groups, d // groups, n)
        B_g, C_g = B.float()[:, :, None], C.float()[:, :, None]  # (b, g, 1, n, l)
        chunk = _chunk_length(delta, A)
        h = u.new_zeros(b, groups, d // groups, n)
        track = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
        outputs = []
        for start in range(0, length, chunk):
            part = slice(start, min(length, start + chunk))
            args = (h, u_g[..., part], delta_g[..., part], A_g, B_g[..., part], C_g[..., part])
            y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if track else _scan_chunk(*args)
            outputs.append(y)
        y = torch.cat(outputs, dim=-1).reshape(b, d, length)
        return y + u * D.float()[:, None] if D is not None else y


def _chunk_length(delta: Tensor, A: Tensor) -> int:
    """The longest power-of-two chunk (MIN_CHUNK..MAX_CHUNK) whose total decay stays within
    MAX_CHUNK_DECAY and, on the CPU, whose state tensors stay within CPU_CHUNK_BYTES."""
    if delta.is_meta:  # shapes only (FLOP counting): any length will do
        return MAX_CHUNK
    step = min(LOG_DECAY_MIN, float(delta.detach().max()) * float(A.detach().abs().max()))
    token_bytes = 0 if delta.is_cuda else 4 * delta.shape[0] * delta.shape[1] * A.shape[1]
    chunk = MAX_CHUNK
    while chunk > MIN_CHUNK and (chunk * step > MAX_CHUNK_DECAY or chunk * token_bytes > CPU_CHUNK_BYTES):
        chunk //= 2
    return chunk


def _scan_chunk(h0: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk: h0 (b, g, e, n); u, delta (b, g, e, l); A (g, e, n); B, C (b, g, 1, n, l).
    Returns y (b, g, e, l) and the last state. Tokens lie on the last axis, where cumsum is fastest."""
    S = (delta[..., None, :] * A[..., None]).clamp(min=-LOG_DECAY_MIN).cumsum(dim=-1)  # (b, g, e, n, l)
    centre = S[..., -1:] / 2
    growth = torch.exp(centre - S)  # e^{-S_s}, centred
    drive = (delta * u)[..., None, :] * B  # Δ_s B_s u_s
    h = ((growth * drive).cumsum(dim=-1) + torch.exp(centre) * h0[..., None]) / growth
    return (h * C).sum(-2), h[..., -1]


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             delta_bias: Tensor | None = None, delta_softplus: bool = False) -> Tensor:
    """The recurrence token by token in float64, for tests only."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    repeat = u.shape[1] // B.shape[1]
    B, C = B.repeat_interleave(repeat, dim=1), C.repeat_interleave(repeat, dim=1)  # (b, d, n, l)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y + u * D.double()[:, None] if D is not None else y
