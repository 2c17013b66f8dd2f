"""Selective scan (VM-UNet's SS2D): the chunked log-space form against the token-by-token float64
recurrence, the optional mamba_ssm kernel against it, and SS2D's four scan directions.

Error measure: max |a - b| / max(max |b|, 0.01) over the whole output (or gradient), b in float64;
the floor matters only for a gradient that is exactly zero (A's, with one token and no earlier
state), where float32 leaves rounding noise of order 1e-8.
"""

from __future__ import annotations

import pytest
import torch

from medsegrwkv.nets import selective_scan as scan_module
from medsegrwkv.nets.selective_scan import (MAX_CHUNK, MIN_CHUNK, mamba_selective_scan, selective_scan,
                                            selective_scan_chunked, selective_scan_reference)
from medsegrwkv.nets.vmunet import SS2D

TOL = 1e-4


def _inputs(length: int, groups: int, delta_scale: float, seed: int = 0, channels: int = 8, states: int = 4,
            device: str = "cpu") -> list[torch.Tensor]:
    """u, delta, A, B, C, D, delta_bias; |A| spans 1..e^3 so some states decay fast, others slowly."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, channels, length, generator=gen)
    delta = torch.randn(2, channels, length, generator=gen) * delta_scale
    A = -torch.exp(torch.rand(channels, states, generator=gen) * 3)
    B = torch.randn(2, groups, states, length, generator=gen)
    C = torch.randn(2, groups, states, length, generator=gen)
    D = torch.randn(channels, generator=gen)
    bias = torch.randn(channels, generator=gen)
    return [t.to(device).requires_grad_() for t in (u, delta, A, B, C, D, bias)]


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.double() - b).abs().max() / b.abs().max().clamp(min=0.01))


@pytest.mark.parametrize("length, groups, delta_scale", [
    (1, 1, 1.0),  # a single token
    (150, 4, 1.0),  # several chunks and a partial last one
    (300, 2, 0.1),  # slow decay: long memory across chunks
    (200, 1, 30.0),  # steps that wipe a state out (Δ|A| up to ~2000): clamped, chunks shortened
])
def test_chunked_scan_matches_the_sequential_recurrence(length: int, groups: int, delta_scale: float) -> None:
    u, delta, A, B, C, D, bias = _inputs(length, groups, delta_scale)
    args = (u, delta, A, B, C, D, bias, True)
    fast, reference = selective_scan_chunked(*args), selective_scan_reference(*args)
    assert fast.dtype == torch.float32
    assert _error(fast, reference) < TOL
    weights = torch.randn_like(reference)
    grads = torch.autograd.grad((fast * weights.float()).sum(), (u, delta, A, B, C, D, bias))
    reference_grads = torch.autograd.grad((reference * weights).sum(), (u, delta, A, B, C, D, bias))
    for name, g, r in zip("u delta A B C D bias".split(), grads, reference_grads):
        assert _error(g, r) < TOL, name


def test_ungrouped_B_C_and_no_skip_or_bias() -> None:
    u, delta, A, B, C, _, _ = _inputs(70, 1, 1.0)
    B, C = B[:, 0], C[:, 0]  # (b, n, l), shared by all channels
    assert _error(selective_scan_chunked(u, delta.abs(), A, B, C),
                  selective_scan_reference(u, delta.abs(), A, B, C)) < TOL


def test_chunk_length_follows_the_decay_and_the_cpu_cache() -> None:
    A = -torch.ones(1, 1) * 16
    assert scan_module._chunk_length(torch.full((1, 1, 10), 0.01), A) == MAX_CHUNK
    assert scan_module._chunk_length(torch.full((1, 1, 10), 100.0), A) == MIN_CHUNK
    wide = torch.full((8, 768, 10), 0.01)  # VM-UNet's first stage on 8 slices: 393 KB of state per token
    assert scan_module._chunk_length(wide, -torch.ones(768, 16)) == MIN_CHUNK


def test_mismatched_shapes_are_rejected() -> None:
    u, delta, A, B, C, _, _ = _inputs(10, 2, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        selective_scan_chunked(u, delta, A, B[..., :5], C)


@pytest.mark.gpu
@pytest.mark.skipif(mamba_selective_scan is None, reason="mamba_ssm's CUDA kernel is not installed")
def test_mamba_kernel_and_pure_pytorch_paths_agree() -> None:
    u, delta, A, B, C, D, bias = (t.detach() for t in _inputs(300, 4, 1.0, channels=64, states=16, device="cuda"))
    kernel = selective_scan(u, delta, A, B, C, D, bias, True)
    pure = selective_scan(u, delta, A, B, C, D, bias, True, use_kernel=False)
    reference = selective_scan_reference(u, delta, A, B, C, D, bias, True)
    assert _error(pure, reference) < TOL and _error(kernel, reference) < TOL


def test_ss2d_maps_each_direction_back_to_its_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the scan replaced by the identity, each of the four direction outputs is the input
    sequence itself; mapped back and summed, every pixel must get 4x its own feature."""
    torch.manual_seed(0)
    mixer = SS2D(dim=8, d_state=4).eval()
    monkeypatch.setattr("medsegrwkv.nets.vmunet.selective_scan", lambda u, *args, **kwargs: u)
    x = torch.randn(2, 5, 7, 8)  # H != W catches a transposed mapping
    with torch.no_grad():
        branch, gate = mixer.in_proj(x).chunk(2, dim=-1)
        features = torch.nn.functional.silu(mixer.conv(branch.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        expected = mixer.out_proj(mixer.out_norm(4 * features) * torch.nn.functional.silu(gate))
        torch.testing.assert_close(mixer(x), expected)
