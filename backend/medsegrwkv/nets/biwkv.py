"""Bi-WKV, the bidirectional linear attention of Vision-RWKV, in pure PyTorch (docs/design.md §5.1).

For a sequence of T tokens and each channel, with w' = w/T and u' = u/T,

    wkv_t = (sum_{i != t} e^{-(|t-i|-1) w' + k_i} v_i + e^{u' + k_t} v_t) / (same without v).

Because the decay is constant per channel the two sides are exclusive cumulative sums, so the
operator costs O(B T C) with no loop over tokens and runs on any device; autograd gives the
backward pass. An O(T^2) float64 reference is kept for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

W_MAX = 64.0
"""|w| is clamped to this. The centred exponents below stay within e^{±W_MAX/2} and the
outputs within T e^{W_MAX} of e^{max k}, far from float32 overflow."""


def biwkv(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Bi-WKV of `k`, `v` (B, T, C) with per-channel decay `w` and bonus `u` (C,).

    Computed in float32 with autocast off (the exponentials do not fit in half precision) and
    returned in `k`'s dtype. Measured against `biwkv_reference` for T up to 4096, |w| <= 60 and
    std(k) <= 10: forward within 3e-7, gradients within 3e-4 (Testing/test_biwkv.py states the
    measure). Limit: cumulative-sum terms below float32's range are lost; that matters only
    when a token's whole neighbourhood lies ~65-80 below max k while |w| is near W_MAX (then
    errors reach 1e-3). The denominator keeps the max-k token's share (>= e^{-W_MAX}), so the
    result is never 0/0.
    """
    if k.shape != v.shape or k.dim() != 3 or w.shape != (k.shape[2],) or u.shape != w.shape:
        raise ValueError(f"biwkv wants k, v (B, T, C) and w, u (C,); got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, w {tuple(w.shape)}, u {tuple(u.shape)}")
    with torch.autocast(device_type=k.device.type, enabled=False):
        out = _biwkv_float32(w.float(), u.float(), k.float(), v.float())
    return out.to(k.dtype)


def _biwkv_float32(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    T = k.shape[1]
    a = w.clamp(-W_MAX, W_MAX) / T
    # The (T, C) decay tables are tiny next to (B, T, C): build them in float64 so that
    # e^{a c_i} e^{-a c_t} equals e^{a (c_i - c_t)} to float32 rounding, whatever |a c| is.
    c = torch.arange(T, device=k.device, dtype=torch.float64) - (T - 1) / 2
    ac = c[:, None] * a.double()
    grow, shrink = torch.exp(ac).float(), torch.exp(-ac).float()  # e^{a c_i}, e^{-a c_i}
    # A common factor e^{-max k} cancels in the ratio; detached so it adds no gradient terms.
    e = torch.exp(k - k.amax(dim=1, keepdim=True).detach())
    z = torch.stack((e * v, e))  # numerator and denominator terms share all the work
    before = _exclusive_cumsum(z * grow, reverse=False)  # sum_{i<t} e^{a c_i} z_i
    after = _exclusive_cumsum(z * shrink, reverse=True)  # sum_{i>t} e^{-a c_i} z_i
    s = torch.exp(a) * (shrink * before + grow * after) + torch.exp(u / T) * z
    return s[0] / s[1]


def _exclusive_cumsum(x: Tensor, reverse: bool) -> Tensor:
    """Cumulative sum over the token axis (-2) that leaves out the token itself.

    Built by shifting an inclusive sum, never by subtracting x from it (that would cancel).
    """
    if reverse:
        inclusive = x.flip(-2).cumsum(-2).flip(-2)
        return torch.cat((inclusive[..., 1:, :], torch.zeros_like(x[..., :1, :])), dim=-2)
    inclusive = x.cumsum(-2)
    return torch.cat((torch.zeros_like(x[..., :1, :]), inclusive[..., :-1, :]), dim=-2)


def biwkv_reference(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Exact Bi-WKV in float64 from the T x T weight matrix: O(T^2 C) memory, for tests only."""
    w, u, k, v = (t.double() for t in (w, u, k, v))
    T = k.shape[1]
    idx = torch.arange(T, device=k.device, dtype=torch.float64)
    gap = ((idx[:, None] - idx[None, :]).abs() - 1)[..., None]  # |t - i| - 1, (T, T, 1)
    off_diagonal = gap >= 0
    decay = torch.exp(-gap * (w.clamp(-W_MAX, W_MAX) / T)) * off_diagonal  # (T, T, C)
    e = torch.exp(k - k.amax(dim=1, keepdim=True))
    bonus = torch.exp(u / T)
    num = torch.einsum("tic,bic->btc", decay, e * v) + bonus * e * v
    den = torch.einsum("tic,bic->btc", decay, e) + bonus * e
    return num / den
