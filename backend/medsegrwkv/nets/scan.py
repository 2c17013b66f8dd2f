"""Scan paths over token grids, and the window split of the local blocks (docs/design.md §5.1).

A path is a permutation of the row-major tokens of a grid. Snake (boustrophedon) paths reverse
the faster axes at every step of the slower ones, so consecutive tokens are always grid
neighbours; raster order jumps at every row end. Each path also fixes which neighbour every
channel group of the Q-Shift takes, so that the shift follows the scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ScanPath:
    """How a scan visits a grid: `order` lists the axes from slowest to fastest."""

    order: tuple[int, ...]
    snake: bool = True
    reverse: bool = False

    @property
    def name(self) -> str:
        axes = "".join("dhw"[a + 3 - len(self.order)] for a in self.order)
        return f"{'snake' if self.snake else 'raster'}-{axes}{'-rev' if self.reverse else ''}"


def raster_path(spatial_dims: int) -> ScanPath:
    return ScanPath(tuple(range(spatial_dims)), snake=False)


def candidate_paths(spatial_dims: int) -> tuple[ScanPath, ...]:
    """The K paths a dynamic block weighs: a snake with each axis fastest once, both directions.

    2D: row snake, column snake and their reverses (K = 4). 3D: the in-slice row and column
    snakes and the through-slice snake, and their reverses (K = 6).
    """
    orders = [(0, 1), (1, 0)] if spatial_dims == 2 else [(0, 1, 2), (0, 2, 1), (1, 2, 0)]
    return tuple(ScanPath(o) for o in orders) + tuple(ScanPath(o, reverse=True) for o in orders)


def visit_order(shape: tuple[int, ...], path: ScanPath) -> np.ndarray:
    """Row-major indices of the tokens of a grid of `shape`, in the order `path` visits them."""
    dims = [shape[a] for a in path.order]
    coords = _snake(tuple(dims)) if path.snake else np.indices(dims).reshape(len(dims), -1).T
    grid_coords = np.empty_like(coords)
    grid_coords[:, list(path.order)] = coords
    order = np.ravel_multi_index(tuple(grid_coords.T), shape)
    return order[::-1].copy() if path.reverse else order


def _snake(dims: tuple[int, ...]) -> np.ndarray:
    """Coordinates (T, n) of a boustrophedon over `dims`: the sub-path over the faster axes is
    run backwards at every odd step of the slowest axis, so it starts where the last one ended."""
    if len(dims) == 1:
        return np.arange(dims[0])[:, None]
    inner = _snake(dims[1:])
    steps = [np.concatenate([np.full((len(inner), 1), i), inner if i % 2 == 0 else inner[::-1]], 1)
             for i in range(dims[0])]
    return np.concatenate(steps)


def shift_sources(shape: tuple[int, ...], path: ScanPath) -> np.ndarray:
    """Which neighbour each Q-Shift channel group takes, per row-major token: (2n, T).

    Groups: the previous and the next token along the path, then for every other axis from
    the fastest to the slowest the neighbour behind and ahead in the path's direction. The
    value T stands for "no neighbour" (the shift brings in zeros).
    """
    T = math.prod(shape)
    perm = visit_order(shape, path)
    prev, nxt = np.full(T, T), np.full(T, T)
    prev[perm[1:]], nxt[perm[:-1]] = perm[:-1], perm[1:]
    groups = [prev, nxt]
    coords = np.indices(shape).reshape(len(shape), -1)
    direction = -1 if path.reverse else 1
    for axis in reversed(path.order[:-1]):
        for step in (-direction, direction):
            moved = coords.copy()
            moved[axis] += step
            inside = (moved[axis] >= 0) & (moved[axis] < shape[axis])
            moved[axis] = moved[axis].clip(0, shape[axis] - 1)
            groups.append(np.where(inside, np.ravel_multi_index(tuple(moved), shape), T))
    return np.stack(groups)


@dataclass(frozen=True)
class ScanTables:
    """Index tensors for K paths over one grid, ready for `index_select`."""

    perm: Tensor  # (K T,): for path p, step s at p T + s: p T + row-major index of the token
    inv: Tensor  # (K T,): for path p, token t at p T + t: p T + step at which t is visited
    shift: Tensor  # (K, G, T): row-major source of each Q-Shift group, T = none
    tokens: Tensor  # (K T,): for path p, step s at p T + s: row-major index of the token
    path_shift: Tensor  # (K, G, T): `shift` of the token at each step of each path
    shift_rows: Tensor  # (K T G,): `group_rows(shift)`
    path_shift_rows: Tensor  # (K T G,): `group_rows(path_shift)`


@lru_cache(maxsize=256)
def scan_tables(shape: tuple[int, ...], paths: tuple[ScanPath, ...], device: torch.device) -> ScanTables:
    """Cached per grid, path set and device: built once, then free for every forward pass. Built
    as normal tensors even under torch.inference_mode(), so that a later training step may use them."""
    perm = np.stack([visit_order(shape, p) for p in paths])
    # Offsets per path let one index_select reorder all K copies of (B, K T, C) at once.
    offsets = np.arange(len(paths))[:, None] * perm.shape[1]
    inv = (np.argsort(perm, axis=1) + offsets).reshape(-1)
    perm = (perm + offsets).reshape(-1)
    shift = np.stack([shift_sources(shape, p) for p in paths])
    tokens = perm.reshape(len(paths), -1) - offsets
    path_shift = np.stack([shift[p][:, tokens[p]] for p in range(len(paths))])
    with torch.inference_mode(False):
        return ScanTables(*(torch.as_tensor(a, dtype=torch.long, device=device)
                            for a in (perm, inv, shift, tokens.reshape(-1), path_shift,
                                      group_rows(shift), group_rows(path_shift))))


def group_rows(shift: np.ndarray) -> np.ndarray:
    """The Q-Shift as one gather of channel groups: with the zero-padded (B, T + 1, C) map viewed
    as (B, (T + 1) G, C / G) rows, row t G + g of path p's output is row shift[p, g, t] G + g."""
    G = shift.shape[1]
    return (shift * G + np.arange(G)[:, None]).transpose(0, 2, 1).reshape(-1)


def to_windows(x: Tensor, counts: tuple[int, ...]) -> Tensor:
    """(B, *S, C) -> (B * prod(counts), *window, C): `counts[i]` windows along axis i."""
    B, *S, C = x.shape
    if any(s % n for s, n in zip(S, counts)):
        raise ValueError(f"grid {tuple(S)} does not split into {counts} windows")
    sizes = [s // n for s, n in zip(S, counts)]
    split = [d for n, w in zip(counts, sizes) for d in (n, w)]
    n = len(S)
    x = x.reshape(B, *split, C).permute(0, *range(1, 2 * n, 2), *range(2, 2 * n + 1, 2), 2 * n + 1)
    return x.reshape(-1, *sizes, C)


def from_windows(x: Tensor, counts: tuple[int, ...]) -> Tensor:
    """Inverse of `to_windows`."""
    _, *sizes, C = x.shape
    n = len(sizes)
    x = x.reshape(-1, *counts, *sizes, C)
    x = x.permute(0, *[d for i in range(n) for d in (1 + i, 1 + n + i)], 2 * n + 1)
    return x.reshape(x.shape[0], *[c * s for c, s in zip(counts, sizes)], C)
