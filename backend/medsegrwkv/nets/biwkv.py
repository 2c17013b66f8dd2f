"""Bi-WKV, the bidirectional linear attention of Vision-RWKV, in pure PyTorch (docs/design.md §5.1).

For a sequence of T tokens and each channel, with w' = w/T and u' = u/T,

    wkv_t = (sum_{i != t} e^{-(|t-i|-1) w' + k_i} v_i + e^{u' + k_t} v_t) / (same without v).

Two forms, both O(B T C) and on any device, with autograd for the backward pass:
- `biwkv` (the network's): chunks of L <= 64 (up to 128 when T <= 128) tokens. Inside a chunk
  the weights form a (C, L, L) matrix per channel, so the chunk is one batched matmul; between
  chunks a token sees the others through two decayed chunk sums, carried over the N = T / L
  chunks by a (C, N, N) matrix. Work per token and channel: about 4 L multiply-adds inside the
  chunk and 4 N across chunks, so time is linear in T while N <= L^2 (T <= 262,144 tokens).
  Its small weight tables depend only on w, u and T (`biwkv_tables`); the network caches them
  in inference.
- `biwkv_cumsum`: two exclusive cumulative sums of decay-scaled terms; what the network used
  before, kept as its reference mode (`MedSegRWKV.reference`).
An O(T^2) float64 reference (`biwkv_reference`) is kept for tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

W_MAX = 64.0
"""|w| is clamped to this. The centred exponents below stay within e^{±W_MAX/2} and the
outputs within T e^{W_MAX} of e^{max k}, far from float32 overflow."""

CHUNK = 64
"""Chunk length of `biwkv`: matrices this size keep the batched matmuls efficient on CPUs."""


def _check(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> None:
    if k.shape != v.shape or k.dim() != 3 or w.shape != (k.shape[2],) or u.shape != w.shape:
        raise ValueError(f"biwkv wants k, v (B, T, C) and w, u (C,); got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, w {tuple(w.shape)}, u {tuple(u.shape)}")


def chunk_length(T: int) -> int:
    """One chunk up to 2 CHUNK tokens; beyond, a divisor of T in [CHUNK/2, CHUNK] if there is
    one (no padding), else CHUNK (the last chunk is padded with tokens that weigh 0)."""
    if T <= 2 * CHUNK:
        return T
    for L in range(CHUNK, CHUNK // 2 - 1, -1):
        if T % L == 0:
            return L
    return CHUNK


class BiWKVTables(NamedTuple):
    """float32 weight tables of `biwkv` for one T; every entry carries the same per-channel factor
    e^{-m_c} (m_c: the centre of the pair exponents), which cancels in the ratio."""

    intra: Tensor  # (C, L, L): weight of token j' for token j of the same chunk, bonus on the diagonal
    head: Tensor  # (C, L): e^{-j w'}, the decay from a chunk's first token to its token j
    tail: Tensor  # (C, L): e^{-(L-1-j) w'}, from token j to the chunk's last token
    carry: Tensor  # (C, N, N): e^{-(n-m-1) L w'} for chunk m before chunk n, else 0


def biwkv_tables(w: Tensor, u: Tensor, T: int) -> BiWKVTables:
    """Built in float64 (they are small: C L^2 + C N^2 entries), stored in float32."""
    L = chunk_length(T)
    N = -(-T // L)
    a = w.clamp(-W_MAX, W_MAX).double() / T
    # Pair exponents -(|t-i|-1) a lie between 0 and -(T-2) a: centring them keeps every table
    # entry and every product of them within e^{±W_MAX/2}.
    centre = -(max(T, 2) - 2) * a / 2
    j = torch.arange(L, device=w.device, dtype=torch.float64)
    gap = (j[:, None] - j[None, :]).abs() - 1
    eye = torch.eye(L, dtype=torch.bool, device=w.device)
    intra = torch.where(eye, (u.double() / T)[:, None, None], -gap * a[:, None, None]) - centre[:, None, None]
    head = torch.exp(-j * a[:, None])
    n = torch.arange(N, device=w.device, dtype=torch.float64)
    steps = n[:, None] - n[None, :] - 1
    carry = torch.where(steps >= 0, torch.exp(-steps * (L * a)[:, None, None] - centre[:, None, None]), 0.0)
    return BiWKVTables(intra.exp().float(), head.float(), head.flip(-1).float(), carry.float())


def biwkv(w: Tensor, u: Tensor, k: Tensor, v: Tensor, tables: BiWKVTables | None = None) -> Tensor:
    """Bi-WKV of `k`, `v` (B, T, C) with per-channel decay `w` and bonus `u` (C,), by chunks.

    `tables`: `biwkv_tables(w, u, T)`, when the caller keeps them. Computed in float32 with
    autocast off (the exponentials do not fit in half precision) and returned in `k`'s dtype.
    Measured against `biwkv_reference` for T up to 4096, |w| <= 60 and std(k) <= 10: forward
    within 4e-7, gradients within 3e-4 (Testing/test_biwkv.py states the measure). Limit, as for
    any float32 form: terms more than ~e^{-80} below the largest are lost. The denominator keeps
    the max-k token's share (>= e^{-W_MAX}), so the result is never 0/0.
    """
    _check(w, u, k, v)
    B, T, C = k.shape
    dtype = k.dtype
    with torch.autocast(device_type=k.device.type, enabled=False):
        k, v = (t.float().reshape(B * T, C).t().contiguous().view(C, B, T) for t in (k, v))
        out = biwkv_channels_first(w, u, k, v, tables)
        return out.reshape(C, B * T).t().contiguous().view(B, T, C).to(dtype)


def biwkv_channels_first(w: Tensor, u: Tensor, k: Tensor, v: Tensor,
                         tables: BiWKVTables | None = None) -> Tensor:
    """`biwkv` on channel-major `k`, `v` (C, B, T): the layout its batched matmuls read without
    copies (a projection W @ x^T gives it for free). Returns float32 (C, B, T)."""
    C, B, T = k.shape
    with torch.autocast(device_type=k.device.type, enabled=False):
        if tables is None:
            tables = biwkv_tables(w.float(), u.float(), T)
        k, v = k.float(), v.float()
        L, N = tables.intra.shape[-1], tables.carry.shape[-1]
        # A common factor e^{-max k} cancels in the ratio; detached so it adds no gradient terms.
        # z (C, 2, B, N L): numerator and denominator terms share all the work; padding weighs 0.
        if torch.is_grad_enabled():
            e = torch.exp(k - k.amax(dim=2, keepdim=True).detach())
            z = torch.stack((e * v, e), 1)
            if N * L != T:
                z = F.pad(z, (0, N * L - T))
        else:  # written in place, without the stack's copy
            z = k.new_empty((C, 2, B, N * L)) if N * L == T else k.new_zeros((C, 2, B, N * L))
            e = torch.sub(k, k.amax(dim=2, keepdim=True), out=z[:, 1, :, :T]).exp_()
            torch.mul(e, v, out=z[:, 0, :, :T])
        Z = z.view(C, 2 * B * N, L)  # one row per chunk
        out = torch.bmm(Z, tables.intra)  # the chunk's own tokens (the matrix is symmetric)
        if N > 1:
            # Decayed sums of each chunk, seen from its last token (forward) and its first token
            # (backward), carried to the chunks after and before it, then decayed to their tokens.
            ahead = (Z @ tables.tail[:, :, None]).view(C, 2 * B, N) @ tables.carry.transpose(1, 2)
            behind = (Z @ tables.head[:, :, None]).view(C, 2 * B, N) @ tables.carry
            out = torch.baddbmm(out, torch.stack((ahead, behind), -1).view(C, 2 * B * N, 2),
                                torch.stack((tables.head, tables.tail), 1))
        out = out.view(C, 2, B, N * L)
        ratio = out[:, 0] / out[:, 1]
        return ratio[..., :T] if N * L != T else ratio


def biwkv_cumsum(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The cumulative-sum form: the network's reference mode (module docstring).

    Measured like `biwkv`: forward within 3e-7, gradients within 3e-4. Limit: cumulative-sum
    terms below float32's range are lost; that matters only when a token's whole neighbourhood
    lies ~65-80 below max k while |w| is near W_MAX (then errors reach 1e-3).
    """
    _check(w, u, k, v)
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
