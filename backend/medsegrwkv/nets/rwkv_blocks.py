"""Vision-RWKV blocks whose Q-Shift and Bi-WKV follow a scan path (docs/design.md §5.1).

A block holds K candidate paths. With K = 1 it is a plain VRWKV block scanned along that path;
with K > 1 it takes per-sample path weights (from `PathGate`) and outputs the weighted mix of
its K scans, which keeps the choice of path differentiable.

Inference (autograd off) takes a faster route: the batch of windows or slices runs through a
block in pieces of at most `PIECE_ELEMENTS` activations (the temporaries then stay in the CPU
caches instead of being mapped afresh for every operation), the Bi-WKV weight tables are kept
per sequence length, and each window is scanned along its gate's strongest path alone (hardened
gates). The last is the one step that is not the same function: the trained gates are nearly
one-hot (docs/medsegrwkv.md, "What the gates chose"), and dropping the weaker paths was measured
to keep the labels (docs/benchmark.md, "Same labels"). `reference = True` (set through
`MedSegRWKV.use_reference`) restores the plain route: whole batch, all K paths mixed by the
gate, cumulative-sum Bi-WKV.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from medsegrwkv.nets.biwkv import BiWKVTables, biwkv, biwkv_channels_first, biwkv_cumsum, biwkv_tables
from medsegrwkv.nets.onednn import linear
from medsegrwkv.nets.scan import ScanPath, ScanTables, scan_tables

PIECE_ELEMENTS = 2 ** 18
"""Inference pieces: at most this many token-channel-path activations (1 MiB in float32)."""
TABLES_KEPT = 8
"""Bi-WKV tables kept per spatial mix: one per sequence length, for the last few input sizes."""


def shift_tokens(x: Tensor, shift: Tensor, rows: Tensor) -> Tensor:
    """Q-Shift of (B, T, C) tokens for K paths at once -> (B, K, T, C).

    Channel group g of token t takes token `shift[p, g, t]` (T means zeros); channels left over
    by C // G stay unshifted. `rows` is `group_rows(shift)` (from the scan tables), the gather
    used when the channels split evenly into the groups.
    """
    B, T, C = x.shape
    K, G, _ = shift.shape
    size = C // G
    padded = torch.cat((x, x.new_zeros(B, 1, C)), dim=1)
    if size * G == C:
        return padded.view(B, (T + 1) * G, size).index_select(1, rows).view(B, K, T, C)
    parts = [padded[..., g * size:(g + 1) * size].index_select(1, shift[:, g].reshape(-1)).view(B, K, T, size)
             for g in range(G)]
    parts.append(x[..., G * size:].unsqueeze(1).expand(B, K, T, C - G * size))
    return torch.cat(parts, dim=-1)


def _mix(shifted: Tensor, x: Tensor, ratio: Tensor) -> Tensor:
    """Per-path, per-channel interpolation between the token and its shifted neighbours."""
    return torch.lerp(shifted, x.unsqueeze(1), ratio[None, :, None, :].to(shifted.dtype))


def _combine(y: Tensor, weights: Tensor | None) -> Tensor:
    """(B, K, T, C) -> (B, T, C): the path-weighted sum, or the only path."""
    if weights is None:
        return y[:, 0]
    return torch.einsum("bktc,bk->btc", y, weights.to(y.dtype))


class SpatialMix(nn.Module):
    """Q-Shift, k/v/r projections, Bi-WKV along each path, sigmoid(r) gate, output projection.

    The projections are shared by the paths; only the shift, the mixing ratios and the token
    order differ, so K paths cost K times the k/v/r projections and one output projection.
    """

    def __init__(self, dim: int, n_paths: int) -> None:
        super().__init__()
        self.ratio = nn.Parameter(torch.full((3, n_paths, dim), 0.5))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        # Decays spread from "far tokens weigh more" to "mostly local" (w > 0 decays with distance).
        self.decay = nn.Parameter(torch.linspace(-4.0, 6.0, dim))
        self.bonus = nn.Parameter(torch.zeros(dim))
        self.reference = False
        self._tables: dict[tuple, BiWKVTables] = {}  # inference only; not part of the state dict

    def forward(self, x: Tensor, tables: ScanTables, weights: Tensor | None, path: int | None = None) -> Tensor:
        """`path`: scan along that one of the K paths only (`tables` are then that path's)."""
        ratio = self.ratio if path is None else self.ratio[:, path:path + 1]
        if not (self.reference or torch.is_grad_enabled()):
            return self._forward_channels_first(x, tables, ratio)
        B, T, C = x.shape
        shifted = shift_tokens(x, tables.shift, tables.shift_rows)
        k = self.key(_mix(shifted, x, ratio[0]))
        v = self.value(_mix(shifted, x, ratio[1]))
        r = self.receptance(_mix(shifted, x, ratio[2]))
        K = tables.shift.shape[0]
        k, v = (t.flatten(1, 2).index_select(1, tables.perm).view(B * K, T, C) for t in (k, v))
        wkv = self._wkv(k, v).view(B, K * T, C).index_select(1, tables.inv)
        return self.output(_combine(torch.sigmoid(r) * wkv.view(B, K, T, C), weights))

    def _wkv(self, k: Tensor, v: Tensor) -> Tensor:
        if self.reference:
            return biwkv_cumsum(self.decay, self.bonus, k, v)
        return biwkv(self.decay, self.bonus, k, v)

    def _forward_channels_first(self, x: Tensor, tables: ScanTables, ratios: Tensor) -> Tensor:
        """Inference along one path: the same computation in the path's order, with k, v, r
        channel-major (C, B T). The tokens are gathered into path order as whole rows; the
        projections W @ mix^T (oneDNN's linear of W by the tokens) give the channel-major layout
        that the Bi-WKV's batched matmuls read as it is; the gated result is gathered back to grid
        order channel-major, and the output projection reads it transposed."""
        B, T, C = x.shape
        if tables.shift.shape[0] != 1:
            raise ValueError(f"the inference route scans one path at a time, not {tables.shift.shape[0]}")
        xs = x.index_select(1, tables.tokens).view(B, T, C)
        shifted = shift_tokens(x, tables.path_shift, tables.path_shift_rows)[:, 0]
        rest = C - C // tables.shift.shape[1] * tables.shift.shape[1]
        if rest:  # the unshifted channels: the token itself, in path order too
            shifted[..., C - rest:] = xs[..., C - rest:]
        k, v, r = (linear(projection.weight, torch.lerp(shifted, xs, ratio[0]).view(-1, C))
                   for projection, ratio in zip((self.key, self.value, self.receptance), ratios))
        wkv = biwkv_channels_first(self.decay, self.bonus, k.view(C, B, T), v.view(C, B, T), self._cached_tables(T))
        # wkv is a strided view when the Bi-WKV padded its last chunk: multiplied as (C, B, T), never viewed flat
        y = torch.sigmoid(r).view(C, B, T).mul_(wkv).view(C * B, T).index_select(1, tables.inv)
        return linear(y.view(C, B * T).t(), self.output.weight).view(B, T, C)

    def _cached_tables(self, T: int) -> BiWKVTables | None:
        """The Bi-WKV tables depend on the parameters and T only: kept while the parameters are
        unchanged (an optimizer step or load_state_dict bumps their version counters). None (built
        per call) for parameters created under torch.inference_mode(), which have no version counter."""
        w, u = self.decay, self.bonus
        if w.is_inference() or u.is_inference():
            return None
        key = (T, w.device, w.dtype, w.data_ptr(), u.data_ptr(), w._version, u._version)
        tables = self._tables.get(key)
        if tables is None:
            # Only tables of the current parameters, and of the last few lengths (input sizes).
            kept = [(cached, t) for cached, t in self._tables.items() if cached[1:] == key[1:]]
            self._tables = dict(kept[-(TABLES_KEPT - 1):])
            with torch.autocast(device_type=w.device.type, enabled=False):
                tables = self._tables[key] = biwkv_tables(w.float(), u.float(), T)
        return tables


class ChannelMix(nn.Module):
    """Q-Shift, then a squared-ReLU MLP gated by sigmoid(r).

    With K paths the MLP sees the path-weighted mix of the K shifted inputs (the shift is
    linear, so this is exact for the input and costs one MLP, not K).
    """

    def __init__(self, dim: int, n_paths: int, hidden_rate: int) -> None:
        super().__init__()
        self.ratio = nn.Parameter(torch.full((2, n_paths, dim), 0.5))
        self.key = nn.Linear(dim, hidden_rate * dim, bias=False)
        self.value = nn.Linear(hidden_rate * dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, tables: ScanTables, weights: Tensor | None, path: int | None = None) -> Tensor:
        ratio = self.ratio if path is None else self.ratio[:, path:path + 1]
        shifted = shift_tokens(x, tables.shift, tables.shift_rows)
        k = linear(_combine(_mix(shifted, x, ratio[0]), weights), self.key.weight)
        r = linear(_combine(_mix(shifted, x, ratio[1]), weights), self.receptance.weight)
        if torch.is_grad_enabled():
            return torch.sigmoid(r) * self.value(torch.relu(k).square())
        return linear(torch.relu_(k).square_(), self.value.weight).mul_(torch.sigmoid_(r))


class RWKVBlock(nn.Module):
    """Pre-LN residual VRWKV block with layer scale on channels-last grids (B, *S, C).

    `pool` > 1 runs the spatial mix on the average-pooled grid and upsamples its output, so
    global mixing on large early-stage maps costs a fraction of the tokens.
    """

    def __init__(self, dim: int, paths: tuple[ScanPath, ...], hidden_rate: int = 4,
                 layer_scale: float = 0.1, pool: int = 1) -> None:
        super().__init__()
        self.paths = paths
        self.pool = pool
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.spatial = SpatialMix(dim, len(paths))
        self.channel = ChannelMix(dim, len(paths), hidden_rate)
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))
        self.reference = False

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """`weights` (B, K) sum to 1 over the paths; None when the block has one path."""
        if (weights is None) != (len(self.paths) == 1):
            raise ValueError(f"a block with {len(self.paths)} paths needs weights exactly when K > 1")
        if self.reference or torch.is_grad_enabled():
            return self._forward(x, weights)
        if weights is None:
            return self._in_pieces(x, None)
        # Hardened gates: each window along its strongest path alone, the windows grouped by path.
        best = weights.argmax(dim=1)
        out = torch.empty_like(x)
        for path in range(len(self.paths)):
            rows = (best == path).nonzero().squeeze(1)
            if len(rows) == x.shape[0]:
                return self._in_pieces(x, path)
            if len(rows):
                out.index_copy_(0, rows, self._in_pieces(x.index_select(0, rows), path))
        return out

    def _in_pieces(self, x: Tensor, path: int | None) -> Tensor:
        """Inference along one path (None: the block's only one) on pieces of at most
        PIECE_ELEMENTS activations, written into one output."""
        per_piece = max(1, PIECE_ELEMENTS // x[0].numel())
        if per_piece >= x.shape[0]:
            return self._forward(x, None, path)
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], per_piece):
            piece = slice(start, start + per_piece)
            out[piece] = self._forward(x[piece], None, path)
        return out

    def _forward(self, x: Tensor, weights: Tensor | None, path: int | None = None) -> Tensor:
        """`path`: along that one path only (weights None), else all K mixed by `weights`."""
        # Inference scales and adds in place on each branch's fresh output: a new map costs more
        # than the arithmetic.
        in_place = not (self.reference or torch.is_grad_enabled())
        s = self._spatial(self.norm1(x), weights, path)
        x = torch.addcmul(x, s, self.gamma1, out=s) if in_place else x + self.gamma1 * s
        tables = scan_tables(tuple(x.shape[1:-1]), self._paths(path), x.device)
        y = self.channel(self.norm2(x).flatten(1, -2), tables, weights, path).view_as(x)
        return torch.addcmul(x, y, self.gamma2, out=y) if in_place else x + self.gamma2 * y

    def _paths(self, path: int | None) -> tuple[ScanPath, ...]:
        return self.paths if path is None else (self.paths[path],)

    def _spatial(self, h: Tensor, weights: Tensor | None, path: int | None) -> Tensor:
        size = h.shape[1:-1]
        if self.pool > 1:
            pool = (F.avg_pool2d if h.dim() == 4 else F.avg_pool3d)
            h = pool(h.movedim(-1, 1), self.pool).movedim(1, -1)
        tables = scan_tables(tuple(h.shape[1:-1]), self._paths(path), h.device)
        y = self.spatial(h.flatten(1, -2), tables, weights, path).view_as(h)
        if self.pool > 1:
            mode = "bilinear" if y.dim() == 4 else "trilinear"
            y = F.interpolate(y.movedim(-1, 1), size=size, mode=mode, align_corners=False).movedim(1, -1)
        return y


class PathGate(nn.Module):
    """Softmax weights over K paths from each window's mean feature: (N, *window, C) -> (N, K)."""

    def __init__(self, dim: int, n_paths: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, n_paths)

    def forward(self, windows: Tensor) -> Tensor:
        pooled = windows.flatten(1, -2).mean(dim=1)
        return torch.softmax(self.proj(self.norm(pooled)).float(), dim=-1)
