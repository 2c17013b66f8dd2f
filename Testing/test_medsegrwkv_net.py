"""MedSegRWKV network: scan paths, blocks, budgets, 2D/3D shapes and gradients, and a tiny overfit
on a real ACDC slice."""

from __future__ import annotations

import itertools
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from medsegrwkv.nets import create_model, get_spec, onednn
from medsegrwkv.nets.medsegrwkv_net import MedSegRWKV
from medsegrwkv.nets.rwkv_blocks import PathGate, shift_tokens
from medsegrwkv.nets.scan import (ScanPath, candidate_paths, from_windows, raster_path, scan_tables,
                                  shift_sources, to_windows, visit_order)

SMALL = dict(dims=(16, 32, 48, 64), stem_dims=(8, 16), local_depths=(1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- scan paths ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 4), (5, 7), (8, 3), (2, 3, 4), (3, 1, 5), (4, 4, 4)])
def test_snake_paths_visit_every_token_once_through_neighbours(shape: tuple[int, ...]) -> None:
    for path in candidate_paths(len(shape)):
        order = visit_order(shape, path)
        assert sorted(order.tolist()) == list(range(math.prod(shape))), path
        coords = np.stack(np.unravel_index(order, shape), axis=1)
        assert (np.abs(np.diff(coords, axis=0)).sum(axis=1) == 1).all(), path


def test_raster_breaks_continuity_and_differs_from_snake() -> None:
    shape = (6, 5)
    raster, snake = visit_order(shape, raster_path(2)), visit_order(shape, candidate_paths(2)[0])
    assert (raster == np.arange(30)).all()
    assert not (raster == snake).all()
    jumps = np.abs(np.diff(np.stack(np.unravel_index(raster, shape), 1), axis=0)).sum(1)
    assert (jumps > 1).sum() == shape[0] - 1


def test_candidates_are_distinct_and_reverses_of_each_other() -> None:
    for dims in (2, 3):
        paths = candidate_paths(dims)
        assert len(paths) == 2 * dims
        shape = (4, 6) if dims == 2 else (3, 4, 5)
        orders = [tuple(visit_order(shape, p)) for p in paths]
        assert len(set(orders)) == len(orders)
        half = len(paths) // 2
        for forward, backward in zip(orders[:half], orders[half:]):
            assert forward == backward[::-1]


@pytest.mark.parametrize("path", candidate_paths(2) + (raster_path(2),))
def test_q_shift_follows_the_scan(path: ScanPath) -> None:
    """Groups 0/1 take the previous/next token of the path; groups 2/3 the grid neighbours
    across it, behind and ahead in the path's direction."""
    shape = (5, 6)
    order = visit_order(shape, path)
    src = shift_sources(shape, path)
    T = math.prod(shape)
    assert src[0, order[0]] == T and src[1, order[-1]] == T
    assert (src[0, order[1:]] == order[:-1]).all() and (src[1, order[:-1]] == order[1:]).all()
    across = path.order[0]
    step = -1 if path.reverse else 1
    for t in range(T):
        coord = list(np.unravel_index(t, shape))
        for group, delta in ((2, -step), (3, step)):
            coord_n = coord.copy()
            coord_n[across] += delta
            inside = 0 <= coord_n[across] < shape[across]
            assert src[group, t] == (np.ravel_multi_index(coord_n, shape) if inside else T)


@pytest.mark.parametrize("channels", [8, 9])  # 4 groups of 2, without and with a leftover channel
def test_shift_tokens_moves_channel_groups(channels: int) -> None:
    shape = (3, 4)
    tables = scan_tables(shape, candidate_paths(2), torch.device("cpu"))
    # token id + 1 + channel / 100: every value says where it came from
    x = (torch.arange(12.0)[:, None] + 1 + torch.arange(channels) / 100)[None].expand(2, 12, channels).contiguous()
    out = shift_tokens(x, tables.shift, tables.shift_rows)
    assert out.shape == (2, 4, 12, channels)
    for p in range(4):
        src = tables.shift[p]
        for g in range(4):
            for c in (2 * g, 2 * g + 1):
                expected = torch.where(src[g] == 12, 0.0, src[g].float() + 1 + c / 100)
                assert torch.equal(out[1, p, :, c], expected)
        assert torch.equal(out[:, p, :, 8:], x[:, :, 8:])  # a leftover channel is not shifted


def test_windows_round_trip() -> None:
    x = torch.randn(2, 8, 12, 5)
    w = to_windows(x, (4, 2))
    assert w.shape == (16, 2, 6, 5)
    assert torch.equal(w[1], x[0, 0:2, 6:12])
    assert torch.equal(from_windows(w, (4, 2)), x)
    x3 = torch.randn(1, 4, 6, 8, 3)
    assert torch.equal(from_windows(to_windows(x3, (2, 3, 2)), (2, 3, 2)), x3)
    with pytest.raises(ValueError, match="does not split into"):
        to_windows(x, (3, 2))


# --- network -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(256, 256), (200, 232)])
def test_output_shape(size: tuple[int, int]) -> None:
    model = create_model("medsegrwkv-t").eval()
    assert model.pad_multiple == (get_spec("medsegrwkv-t").pad_multiple,) * 2
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 4, *size) and torch.isfinite(out).all()


def _grads_reach_every_parameter(model: torch.nn.Module, x: torch.Tensor) -> None:
    out = model(x)
    assert out.shape == (x.shape[0], 4, *x.shape[2:])
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradients_reach_every_parameter() -> None:
    _grads_reach_every_parameter(create_model("medsegrwkv-t"), torch.randn(2, 1, 64, 96))


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])
def test_deep_supervision_adds_coarse_logits_in_training_only(size: tuple[int, int]) -> None:
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    model = create_model("medsegrwkv-t", deep_supervision=True, **SMALL)
    plain = create_model("medsegrwkv-t", **SMALL)
    # the heads are the only new parameters: weights without them keep loading
    assert {n for n in model.state_dict() if not n.startswith("aux_heads.")} == set(plain.state_dict())
    x = torch.randn(2, 1, *size)
    outputs = model.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 4, *(math.ceil(s / f) for s in size)) for f in (1, 2, 4, 8)]
    target = torch.randint(0, 4, (2, 1, *size)).float()
    DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(outputs, target).backward()
    assert all(head.weight.grad.abs().sum() > 0 for head in model.aux_heads)
    # out of training mode: the full-resolution logits alone, the same as the list's first
    assert torch.allclose(model.eval()(x), outputs[0], atol=1e-6)
    plain.load_state_dict({n: p for n, p in model.state_dict().items() if not n.startswith("aux_heads.")})
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-6)


@pytest.mark.parametrize("scan, local_blocks", list(itertools.product(("raster", "snake", "dynamic"), (True, False))))
def test_ablation_switches_build_and_train(scan: str, local_blocks: bool) -> None:
    model = create_model("medsegrwkv-t", scan=scan, local_blocks=local_blocks, **SMALL)
    _grads_reach_every_parameter(model, torch.randn(1, 1, 64, 64))
    has_gates = any(isinstance(m, PathGate) for m in model.modules())
    assert has_gates == (scan == "dynamic" and local_blocks)


def test_raster_and_snake_differ() -> None:
    """Same weights, different scan: the outputs must differ (the path is not a no-op)."""
    raster = create_model("medsegrwkv-t", scan="raster", **SMALL).eval()
    snake = create_model("medsegrwkv-t", scan="snake", **SMALL).eval()
    snake.load_state_dict(raster.state_dict())
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(raster(x), snake(x), atol=1e-4)


def test_gate_weights_sum_to_one_and_follow_the_input() -> None:
    model = create_model("medsegrwkv-t", **SMALL).eval()
    gates = [m for m in model.modules() if isinstance(m, PathGate)]
    assert len(gates) == 4
    seen: list[torch.Tensor] = []
    hooks = [g.register_forward_hook(lambda _m, _i, out: seen.append(out)) for g in gates]
    with torch.no_grad():
        model(torch.randn(1, 1, 64, 64))
        model(torch.rand(1, 1, 64, 64).square() * 3)
    for h in hooks:
        h.remove()
    assert len(seen) == 8
    for weights in seen:
        assert weights.shape[-1] == 4 and (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]))
    assert [w.shape[0] for w in seen[:4]] == [64, 16, 4, 1]  # 8x8, 4x4, 2x2, 1x1 windows
    assert (seen[0].std(0) > 0).any()  # windows of one image get different weights
    assert not torch.allclose(seen[0], seen[4], atol=1e-4)  # another image, other weights


def test_tiny_budget() -> None:
    """medsegrwkv-t within the RWKV-UNet-T anchor: <= 3.3M parameters, <= 3.8 GFLOPs
    (FlopCounterMode: 2 FLOPs per multiply-add, convs and matmuls) per 256x256 slice."""
    model = create_model("medsegrwkv-t").eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 1, 256, 256))
    assert params <= 3.3e6, params
    assert counter.get_total_flops() / 1e9 <= 3.8, counter.get_total_flops()
    # The benchmark counts the plain route, also inside inference mode, where the matmuls take oneDNN.
    from medsegrwkv.nets.complexity import count_gflops
    with torch.inference_mode():
        assert count_gflops(model, (1, 1, 256, 256)) == pytest.approx(2.52, abs=0.01)


def test_variants_grow_in_size() -> None:
    counts = [sum(p.numel() for p in create_model(f"medsegrwkv-{v}").parameters()) for v in "tsb"]
    assert counts[0] < counts[1] < counts[2]
    assert 8e6 <= counts[1] <= 10e6 and 15e6 <= counts[2] <= 18e6, counts


def test_3d_builds_and_trains() -> None:
    spec = get_spec("medsegrwkv-t-3d")
    assert spec.spatial_dims == 3 and spec.roi_size == (16, 160, 160)
    model = create_model("medsegrwkv-t-3d")
    assert isinstance(model, MedSegRWKV)
    assert all(r % m == 0 for r, m in zip(spec.roi_size, model.pad_multiple))
    gates = [m for m in model.modules() if isinstance(m, PathGate)]
    assert gates and all(g.proj.out_features == 6 for g in gates)
    _grads_reach_every_parameter(model, torch.randn(1, 1, 8, 64, 64))


def test_rejects_unknown_scan() -> None:
    with pytest.raises(ValueError, match="not 'zigzag'"):
        create_model("medsegrwkv-t", scan="zigzag")


def _heart_crop(acdc, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The slice of patient001 ED with the most labelled pixels, cropped around the heart."""
    case = acdc / "patient001"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "patient001_frame01.nii.gz"))).astype(np.float32)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "patient001_frame01_gt.nii.gz"))).astype(np.int64)
    z = int((label > 0).sum(axis=(1, 2)).argmax())
    ys, xs = np.nonzero(label[z])
    y0 = int(np.clip(ys.mean() - size // 2, 0, image.shape[1] - size))
    x0 = int(np.clip(xs.mean() - size // 2, 0, image.shape[2] - size))
    crop = image[z, y0:y0 + size, x0:x0 + size]
    crop = (crop - crop.mean()) / crop.std()
    target = label[z, y0:y0 + size, x0:x0 + size]
    return torch.from_numpy(crop)[None, None], torch.from_numpy(target)[None]


def test_overfits_one_real_slice(acdc) -> None:
    image, target = _heart_crop(acdc)
    assert set(target.unique().tolist()) == {0, 1, 2, 3}
    model = create_model("medsegrwkv-t")
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(image), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    with torch.no_grad():
        accuracy = (model(image).argmax(1) == target).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_mixed_precision_forward_and_backward() -> None:
    """Training runs under autocast: the Bi-WKV stays in float32 and nothing overflows."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model("medsegrwkv-t", **SMALL).to(device)
    x = torch.randn(2, 1, 64, 64, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trained_weights_segment_the_demo_study_through_the_cli(tmp_path) -> None:
    """The committed medsegrwkv-t weights run through the real CLI demo (Sunnybrook DICOM,
    a site the network never saw) and agree with the expert's LV contours."""
    from cli_helpers import run_cli

    result = run_cli("demo", "--model", "medsegrwkv-t", "--device", "cpu", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "model medsegrwkv-t" in result.stdout
    rows = dict(re.findall(r"^(ED|ES)\s+([0-9.]+)\s", result.stdout, flags=re.MULTILINE))  # phase -> LV Dice
    assert set(rows) == {"ED", "ES"}, result.stdout
    for name, lv_dice in rows.items():
        assert float(lv_dice) > 0.8, (name, result.stdout)  # against the expert contours


# -- the fast inference route (issue 18) ------------------------------------------------------
def plain_with_hardened_gates(model: MedSegRWKV, x: torch.Tensor) -> torch.Tensor:
    """The plain route's logits with every gate one-hot on its strongest path, which is what the
    fast route computes (it scans each window along that path alone)."""
    def harden(module, inputs, weights):
        return F.one_hot(weights.argmax(dim=1), weights.shape[1]).to(weights.dtype)

    hooks = [m.register_forward_hook(harden) for m in model.modules() if isinstance(m, PathGate)]
    try:
        return model.use_reference()(x)
    finally:
        model.use_reference(False)
        for hook in hooks:
            hook.remove()


def test_fast_route_computes_the_plain_function() -> None:
    """Inference (pieces, chunked Bi-WKV, channel-major spatial mix, 1x1 before upsampling) gives
    the plain route's logits, for batches that split into pieces and sizes that need padding."""
    torch.manual_seed(0)
    model = create_model("medsegrwkv-t").eval()
    keys = {k: v.shape for k, v in model.state_dict().items()}
    x = torch.randn(5, 1, 96, 160)
    with torch.inference_mode():
        fast = model(x)
        plain = plain_with_hardened_gates(model, x)
    assert {k: v.shape for k, v in model.state_dict().items()} == keys  # no new state
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # autograd off without inference mode takes the fast route too
        torch.testing.assert_close(model(x[:2]), plain[:2], rtol=1e-4, atol=1e-4)


def test_fast_route_computes_the_plain_function_when_the_biwkv_pads() -> None:
    """A wide field of view (410 x 346 on the network grid, padded to 416 x 352) leaves the deepest
    stage 13 x 11 = 143 tokens, which no chunk length divides: the Bi-WKV pads its last chunk and
    hands back a strided view. Several slices at once must still give the plain route's logits
    (this crashed the fast route on such studies)."""
    torch.manual_seed(0)
    model = create_model("medsegrwkv-t").eval()
    x = torch.randn(2, 1, 416, 352)
    with torch.inference_mode():
        fast = model(x)
        plain = plain_with_hardened_gates(model, x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_fast_route_computes_the_plain_function_in_3d() -> None:
    """3D: six paths and six Q-Shift groups, so two of 32 channels stay unshifted."""
    torch.manual_seed(0)
    model = create_model("medsegrwkv-t-3d").eval()
    x = torch.randn(2, 1, 16, 64, 96)
    with torch.inference_mode():
        fast = model(x)
        plain = plain_with_hardened_gates(model, x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_fast_route_tables_follow_the_weights() -> None:
    """The cached Bi-WKV tables are rebuilt when the weights change (optimizer step, load)."""
    torch.manual_seed(0)
    model = create_model("medsegrwkv-t").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        model(x)
        for name, p in model.named_parameters():
            if name.endswith(("decay", "bonus")):
                p.add_(0.5)
        fast = model(x)
        plain = plain_with_hardened_gates(model, x)
        for width in range(32, 32 * 12, 32):  # many input sizes: the cache keeps the last few
            model(torch.zeros(2, 1, 32, width))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    from medsegrwkv.nets.rwkv_blocks import TABLES_KEPT, SpatialMix
    assert all(len(m._tables) <= TABLES_KEPT for m in model.modules() if isinstance(m, SpatialMix))


def test_fast_route_scans_each_window_along_its_strongest_path() -> None:
    """The fast route computes what the plain route computes with hardened gates (one-hot on each
    window's strongest path). Gates scaled so that a batch holds windows of every chosen path,
    decisive and undecided ones; path ratios randomised, so that a window sent along the wrong
    path, or mixed by the soft gate, changes the output."""
    torch.manual_seed(0)
    model = create_model("medsegrwkv-t").eval()
    with torch.no_grad():
        for stage in model.stages:
            stage.gate.proj.weight.mul_(60.0)
        for name, parameter in model.named_parameters():
            if name.endswith("ratio"):  # paths mix differently, as trained ones do (init: all 0.5)
                parameter.uniform_(0.0, 1.0)
    seen: list[torch.Tensor] = []
    hooks = [stage.gate.register_forward_hook(lambda module, inputs, weights: seen.append(weights))
             for stage in model.stages]
    x = torch.randn(4, 1, 128, 128)
    with torch.inference_mode():
        fast = model(x)
        for hook in hooks:
            hook.remove()
        soft = model.use_reference()(x)
        plain = plain_with_hardened_gates(model, x)
    gates = torch.cat(seen)
    top = gates.max(dim=1).values
    assert bool((top > 0.99).any()) and bool((top < 0.6).any()), "the test needs decisive and undecided windows"
    assert len(set(gates.argmax(dim=1).tolist())) == 4, "and windows of every chosen path"
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    assert (fast - soft).abs().max() > 1e-2, "hardening the gates must matter here"


def test_fast_route_runs_a_model_built_in_inference_mode() -> None:
    """A model created (or loaded) inside torch.inference_mode() has inference-tensor parameters,
    which carry no version counter: the fast route builds its tables per call instead of failing."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        model = create_model("medsegrwkv-t").eval()
        assert model.stages[0].local[0].spatial.decay.is_inference()
        fast = model(x)
        plain = plain_with_hardened_gates(model, x)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    # The scan tables cached on the way are normal tensors: a training step on the same grid works.
    trainable = create_model("medsegrwkv-t")
    trainable(x).square().mean().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_fast_route_keeps_the_labels_on_validation_volumes(acdc) -> None:
    """The bundled weights through the deployed pipeline on real validation volumes: the fast
    route labels >= 99.9% of voxels as the plain route does and moves mean Dice by <= 0.001
    (all 40 volumes: `python -m medsegrwkv.benchmark.fast_path`, docs/benchmark.md)."""
    from medsegrwkv.benchmark.fast_path import compare_volume, summarize
    from medsegrwkv.inference.segmenter import Segmenter
    from medsegrwkv.training.acdc import list_cases

    segmenter = Segmenter.from_pretrained("medsegrwkv-t", "cpu")
    cases = list_cases(acdc, "val")
    rows = [compare_volume(segmenter, sitk.ReadImage(str(c.image), sitk.sitkFloat32), sitk.ReadImage(str(c.label)))
            for c in (cases[0], cases[-1])]
    summary = summarize(rows)
    assert summary["identical_share"] >= 0.999, summary
    assert abs(summary["mean_dice_change"]) <= 0.001, summary
    assert summary["mean_dice_fast"] > 0.8, summary


@pytest.mark.skipif(not onednn.AVAILABLE, reason="this PyTorch has no oneDNN linear")
def test_onednn_linear_is_f_linear_on_every_layout_the_network_passes(monkeypatch) -> None:
    """`onednn.linear` gives F.linear's products (float32 rounding) for the layouts the fast route
    hands it: transposed and channels-last views, sliced (strided) weights, a bias, N-d inputs,
    and the weight-by-tokens product that makes channel-major maps. With autograd on it is
    F.linear, gradients included."""
    weight = torch.randn(24, 40)
    cases = [
        (torch.randn(40, 300).t(), weight, None),  # the output projection's transposed input
        (torch.randn(2, 16, 9, 11).contiguous(memory_format=torch.channels_last).movedim(1, -1),
         torch.randn(6, 16), torch.randn(6)),  # a channels-last map, with a bias
        (torch.randn(3, 50, 16), weight[:, 24:], None),  # a slice of a weight (strided)
        (weight, torch.randn(300, 40), None),  # W @ tokens^T: channel-major k, v, r
    ]
    monkeypatch.setattr(onednn, "ENABLED", True)  # also where MEDSEGRWKV_ONEDNN=0 switched it off
    with torch.inference_mode():
        for x, w, b in cases:
            expected = (x.double() @ w.double().t() + (0 if b is None else b.double())).float()
            torch.testing.assert_close(onednn.linear(x, w, b), expected, rtol=1e-5, atol=1e-5)
    x = torch.randn(7, 40, requires_grad=True)
    y = onednn.linear(x, weight)
    y.sum().backward()
    torch.testing.assert_close(x.grad, weight.sum(0).expand(7, 40))


def test_onednn_can_be_switched_off_from_the_environment() -> None:
    """MEDSEGRWKV_ONEDNN=0 keeps PyTorch's default matmuls (a site comparing on its own CPU)."""
    code = "from medsegrwkv.nets import onednn; print(onednn.ENABLED)"
    for value, expected in (("0", "False"), ("1", str(onednn.AVAILABLE))):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "MEDSEGRWKV_ONEDNN": value})
        assert run.returncode == 0 and run.stdout.strip() == expected, run.stderr


@pytest.mark.skipif(not onednn.AVAILABLE, reason="this PyTorch has no oneDNN linear")
def test_onednn_matmuls_keep_the_bundled_logits(monkeypatch) -> None:
    """The bundled weights on real demo slices: the fast route with oneDNN's matmuls gives the
    logits of the same route with PyTorch's default ones (MKL on the CPU), and class logits laid
    out channels-first (the softmax over classes reads them several times faster)."""
    from medsegrwkv.benchmark.measure import demo_volume
    from medsegrwkv.weights import load_model

    model = load_model("medsegrwkv-t", torch.device("cpu"))[0].eval()
    x = torch.from_numpy(demo_volume((3, 224, 224)))[:, None]
    with torch.inference_mode():
        monkeypatch.setattr(onednn, "ENABLED", False)
        default = model(x)
        monkeypatch.setattr(onednn, "ENABLED", True)
        fast = model(x)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, default, rtol=1e-4, atol=1e-4)
    assert (fast.argmax(1) == default.argmax(1)).float().mean() > 0.9999


@pytest.mark.gpu
def test_fast_route_computes_the_plain_function_on_cuda() -> None:
    """The fast route has no CPU-only step: on CUDA it gives the plain route's logits too."""
    torch.manual_seed(0)
    model = create_model("medsegrwkv-t").eval().cuda()
    x = torch.randn(3, 1, 96, 160, device="cuda")
    with torch.inference_mode():
        fast = model(x)
        plain = plain_with_hardened_gates(model, x)
    torch.testing.assert_close(fast, plain, rtol=1e-3, atol=1e-3)
