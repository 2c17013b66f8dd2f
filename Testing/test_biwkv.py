"""Bi-WKV operator: the O(T) cumulative-sum form against the exact O(T^2) float64 reference.

Error measure, per channel c: ||a - b|| / max(||b||, floor), where b is the float64 reference.
The forward floor is 0; for gradients it is 1e-3 * ||g_c|| * rms(v_c) (divided by T for u,
whose weight enters as u/T), the gradient size of an unsaturated channel. The floor matters
only where softmax-like saturation makes the true gradient vanish (e.g. T = 2 with std(k) = 10),
where any float32 implementation carries rounding of order eps * ||g|| * rms(v).
"""

from __future__ import annotations

import pytest
import torch

from medsegrwkv.nets.biwkv import W_MAX, biwkv, biwkv_reference

DECAYS = (-60.0, -20.0, -1.0, 0.0, 1.0, 20.0, 60.0)  # one channel each
FORWARD_TOL = 1e-4
GRAD_TOL = 1e-3


def _inputs(T: int, k_std: float, device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    C = len(DECAYS)
    w = torch.tensor(DECAYS)
    u = torch.randn(C, generator=gen) * 5
    k = torch.randn(2, T, C, generator=gen) * k_std
    v = torch.randn(2, T, C, generator=gen)
    return [t.to(device).requires_grad_() for t in (w, u, k, v)]


def _errors(T: int, k_std: float, device: str = "cpu") -> dict[str, float]:
    """Worst per-channel error of the output and of the gradients of w, u, k, v."""
    w, u, k, v = _inputs(T, k_std, device)
    g = torch.randn(k.shape, generator=torch.Generator().manual_seed(1)).to(device)
    out = biwkv(w, u, k, v)
    grads = torch.autograd.grad((out * g).sum(), (w, u, k, v))
    worst = dict.fromkeys(("out", "w", "u", "k", "v"), 0.0)
    for c in range(len(DECAYS)):  # one channel at a time keeps the T x T reference small
        ref_args = [t.detach()[..., c:c + 1].double().requires_grad_() for t in (w, u, k, v)]
        ref = biwkv_reference(*ref_args)
        g_c = g[..., c:c + 1].double()
        ref_grads = torch.autograd.grad((ref * g_c).sum(), ref_args)
        scale = g_c.norm() * ref_args[3].detach().square().mean().sqrt()
        worst["out"] = max(worst["out"], ((out[..., c:c + 1] - ref).norm() / ref.norm()).item())
        for name, a, b in zip("wukv", grads, ref_grads):
            a = a[c:c + 1] if name in "wu" else a[..., c:c + 1]
            floor = 1e-3 * scale / (T if name == "u" else 1)
            worst[name] = max(worst[name], ((a - b).norm() / torch.maximum(b.norm(), floor)).item())
    return worst


@pytest.mark.parametrize("T", [1, 2, 7, 64, 513, 4096])
@pytest.mark.parametrize("k_std", [1.0, 10.0])
def test_matches_reference(T: int, k_std: float) -> None:
    err = _errors(T, k_std)
    assert err["out"] < FORWARD_TOL, err
    assert max(err[n] for n in "wukv") < GRAD_TOL, err


def test_single_token_returns_v() -> None:
    w, u, k, v = _inputs(1, 3.0)
    torch.testing.assert_close(biwkv(w, u, k, v), v, rtol=1e-6, atol=1e-6)


def test_decay_is_clamped_and_stays_finite() -> None:
    w, u, k, v = (t.detach() for t in _inputs(513, 10.0))
    huge = torch.full_like(w, 1e4)
    out = biwkv(huge, u, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, biwkv(torch.full_like(w, W_MAX), u, k, v))
    assert torch.isfinite(biwkv(-huge, u, k, v)).all()


def test_reversing_the_sequence_reverses_the_output() -> None:
    """The operator is bidirectional: it sees only distances, not directions."""
    w, u, k, v = (t.detach() for t in _inputs(64, 2.0))
    torch.testing.assert_close(biwkv(w, u, k.flip(1), v.flip(1)), biwkv(w, u, k, v).flip(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_in_float32(dtype: torch.dtype) -> None:
    """Under autocast the projections give half-precision k, v; the operator must return
    finite values in that dtype, equal to the float32 result up to the output rounding."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    w, u, _, _ = (t.detach() for t in _inputs(513, 1.0, device))
    x = torch.randn(2, 513, 16, device=device)
    proj = torch.nn.Linear(16, 2 * len(DECAYS)).to(device)
    with torch.autocast(device_type=device, dtype=dtype):
        k, v = proj(x).chunk(2, dim=-1)
        k = k * 10  # std(k) ~ 5: e^k overflows float16 if computed in it
        assert k.dtype == dtype
        out = biwkv(w, u, k, v)
    assert out.dtype == dtype and torch.isfinite(out).all()
    expected = biwkv(w, u, k.float(), v.float())
    eps = torch.finfo(dtype).eps
    assert ((out.float() - expected).norm() / expected.norm()).item() < 2 * eps


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 2, 7, 64, 513, 4096])
def test_cuda_matches_reference(T: int) -> None:
    """Same bounds on CUDA, whose cumulative sums accumulate in float32 (the CPU's in float64)."""
    err = _errors(T, 10.0, "cuda")
    assert err["out"] < FORWARD_TOL, err
    assert max(err[n] for n in "wukv") < GRAD_TOL, err


def test_rejects_bad_shapes() -> None:
    w, u, k, v = (t.detach() for t in _inputs(7, 1.0))
    with pytest.raises(ValueError, match=r"v \(2, 6, 7\)"):
        biwkv(w, u, k, v[:, :-1])
    with pytest.raises(ValueError, match=r"w \(6,\)"):
        biwkv(w[:-1], u, k, v)


@pytest.mark.parametrize("T", [1, 7, 64, 513, 4096])
def test_inference_matches_reference(T: int) -> None:
    """Without autograd the operator writes its terms in place (the network's inference route)."""
    w, u, k, v = (t.detach() for t in _inputs(T, 10.0))
    with torch.no_grad():
        out = biwkv(w, u, k, v)
    ref = biwkv_reference(w, u, k, v)
    err = ((out - ref).norm(dim=(0, 1)) / ref.norm(dim=(0, 1))).max().item()
    assert err < FORWARD_TOL, err


@pytest.mark.parametrize("T", [64, 100])  # a whole number of chunks, and one padded
def test_inference_takes_monai_metatensors(T: int) -> None:
    """MONAI's data loaders hand out MetaTensors (the refiner's trainer feeds them to the segmenter):
    the in-place route must allocate from them too, and give the plain tensors' result."""
    from monai.data import MetaTensor

    w, u, k, v = (t.detach() for t in _inputs(T, 10.0))
    with torch.no_grad():
        out = biwkv(w, u, MetaTensor(k), MetaTensor(v))
    assert torch.allclose(torch.as_tensor(out), biwkv(w, u, k, v))
