"""Least-squares reconstruction after channel pruning: exact where it can be, closer elsewhere."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from yolo_ray.errors import ConfigError
from yolo_ray.models.prune import apply_channel_plan, plan_channel_prune, prune_model
from yolo_ray.models.prune_reconstruct import (_capture, block_residuals, calibration_batches,
                                               conv_order, reconstruct_pruned)
from yolo_ray.models.yolo import build_model

from .conftest import random_bn_statistics


@pytest.fixture(scope="module")
def model():
    """yolov5n (3 classes) in float64 with non-trivial BN statistics, as a trained net has."""
    return random_bn_statistics(build_model("yolov5n", nc=3).double().eval(), seed=3)


def _x(seed: int, bs: int = 2, imgsz: int = 64) -> torch.Tensor:
    return torch.rand(bs, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed)).double()


def _raw_error(ref: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    """Relative squared error of Detect's raw outputs (all three scales)."""
    with torch.no_grad():
        a, b = ref(x)[1], other(x)[1]
    num = sum(float((u - v).pow(2).sum()) for u, v in zip(a, b))
    return num / sum(float((u - u.mean()).pow(2).sum()) for u in a)


def test_conv_order_is_the_forward_order(model):
    order = conv_order(model, _x(0, 1))
    assert order[0] == "model.0.conv" and order[-1] == "model.24.m.2"
    assert len(order) == len(set(order)) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    # C3 runs cv1, its bottlenecks, then cv2 and cv3 (not the module registration order)
    assert order.index("model.2.m.0.cv2.conv") < order.index("model.2.cv2.conv")


def test_nothing_pruned_reconstructs_the_same_model(model):
    plan = plan_channel_prune(model, 0.0)
    pruned = apply_channel_plan(model, plan)
    fits = reconstruct_pruned(model, pruned, plan.keep, [_x(1, 2)])
    assert len(fits) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) - 1
    # (errors come from accumulated moments: ~1e-10 of round-off, not 0)
    assert max(f.error_before for f in fits) < 1e-8
    assert max(f.error_after for f in fits) < 1e-8
    x = _x(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x)[0], model(x)[0])


def test_reconstruction_brings_outputs_back(model):
    """30 % of the channels gone: every refitted layer is at least as close as the surgery
    left it, and Detect's outputs are much closer, on the calibration images and on others."""
    calib = [_x(10, 4, 96), _x(11, 4, 96)]
    plan = plan_channel_prune(model, 0.3, scope="layer")
    surgery = apply_channel_plan(model, plan)
    refit = copy.deepcopy(surgery)
    fits = reconstruct_pruned(model, refit, plan.keep, calib)
    assert all(f.error_after <= f.error_before + 1e-12 for f in fits)
    assert sum(f.error_after for f in fits) < 0.5 * sum(f.error_before for f in fits)
    seen, unseen = _x(10, 4, 96), _x(99, 4, 96)
    for x in (seen, unseen):
        assert _raw_error(model, refit, x) < 0.5 * _raw_error(model, surgery, x)
    # shapes and the composed plan are the surgery's; the original is untouched
    assert [p.shape for p in refit.parameters()] == [p.shape for p in surgery.parameters()]
    assert refit.channel_plan == surgery.channel_plan
    assert not refit.training and not model.training


def test_prune_model_reconstructs_and_restores_modes(model):
    m = copy.deepcopy(model).train()
    calib = calibration_batches([(255 * _x(5, 3, 64)).to(torch.uint8)] * 2, 4)
    assert [len(b) for b in calib] == [3, 1] and calib[0].max() <= 1.0
    calib = [b.double() for b in calib]
    plain = prune_model(m, 0.3, "channel", imgsz=None, calib=calib, scope="layer")
    fitted = prune_model(m, 0.3, "channel", imgsz=None, calib=calib, scope="layer",
                         reconstruct=True)
    assert m.training and fitted.model.training  # modes given back
    assert fitted.fits and not plain.fits
    assert fitted.plan == plain.plan
    x = _x(6, 2, 64)
    m.eval()
    assert _raw_error(m, fitted.model.eval(), x) < _raw_error(m, plain.model.eval(), x)


def test_reconstruct_needs_channel_and_calibration(model):
    with pytest.raises(ConfigError, match="calibration"):
        prune_model(model, 0.3, "channel", imgsz=None, reconstruct=True)
    with pytest.raises(ConfigError, match="--method channel"):
        prune_model(model, 0.3, "l1", imgsz=None, calib=[_x(0)], reconstruct=True)
    plan = plan_channel_prune(model, 0.1)
    with pytest.raises(ValueError, match="calibration batch"):
        reconstruct_pruned(model, apply_channel_plan(model, plan), plan.keep, [])


def test_refitted_bns_hold_their_inputs_statistics(model):
    """After the refit every BN's running mean/variance are its conv's output statistics on
    the calibration images, so training-mode BN (batch statistics) computes the function that
    was validated; the surgery alone leaves the unpruned statistics."""
    calib = _x(12, 4, 96)
    plan = plan_channel_prune(model, 0.3, scope="layer")
    surgery = apply_channel_plan(model, plan)
    refit = copy.deepcopy(surgery)
    reconstruct_pruned(model, refit, plan.keep, [calib])

    def gaps(net):
        stats = {}
        hooks = [m.conv.register_forward_hook(
            lambda _m, _a, y, n=n: stats.__setitem__(n, (y.mean((0, 2, 3)), y.var((0, 2, 3),
                                                                                  unbiased=False))))
            for n, m in net.named_modules() if hasattr(m, "bn") and n != "model.0"]
        with torch.no_grad():
            net.eval()(calib)
        for h in hooks:
            h.remove()
        bns = {n: net.get_submodule(n).bn for n in stats}
        return max(max(float((bns[n].running_mean - mean).abs().max() / var.mean().sqrt()),
                       float((bns[n].running_var - var).abs().max() / var.mean()))
                   for n, (mean, var) in stats.items())

    # (a random net's deep outputs have variance ~1e-8 around means ~0.1: E[y²] − m²
    # keeps ~1e-5 of it in float64)
    assert gaps(refit) < 1e-3
    assert gaps(surgery) > 0.1


def test_block_residuals_measure_each_layer_against_the_unpruned_outputs(model):
    """Nothing pruned: 0 everywhere. Pruned: a block's share equals the residual computed by
    hand from its outputs over two batches, on the channels the plan kept."""
    x = [_x(20, 2, 64), _x(21, 3, 64)]
    same = apply_channel_plan(model, plan_channel_prune(model, 0.0))
    paths = conv_order(model, x[0])[1:]
    assert max(block_residuals(model, same, same.channel_plan.keep, paths, x).values()) < 1e-20
    plan = plan_channel_prune(model, 0.3, scope="layer")
    pruned = apply_channel_plan(model, plan)
    got = block_residuals(model, pruned, plan.keep, ["model.6.cv1.conv", "model.24.m.0"], x)
    assert set(got) == {"model.6.cv1", "model.24.m.0"}
    for block, idx in (("model.6.cv1", list(plan.keep["model.6.cv1"])), ("model.24.m.0", None)):
        y = torch.cat([_capture(model, block, b, False) for b in x])
        y = y[:, idx] if idx is not None else y
        y_hat = torch.cat([_capture(pruned, block, b, False) for b in x])
        share = float((y - y_hat).pow(2).sum() / (y - y.mean((0, 2, 3), keepdim=True)).pow(2).sum())
        assert got[block] == pytest.approx(share, rel=1e-9)
        assert share > 0.01  # (surgery only: Detect's can exceed 1)


def test_refit_check_reports_seen_and_unseen_residuals(model):
    """Refitted on 2 images, the layers fit those better than 4 others; the log line says so
    and names the worst layers."""
    from yolo_ray.train.prune_run import refit_check

    calib, unseen = [_x(30, 2, 64)], [_x(31, 4, 64)]
    result = prune_model(model, 0.3, "channel", imgsz=None, scope="layer", calib=calib,
                         reconstruct=True)
    line = refit_check(model, result, calib, unseen)
    seen_mean, unseen_mean = (float(v) for v in
                              re.findall(r"residual ([0-9.]+) on the 2 calibration images, "
                                         r"([0-9.]+) on 4 validation images", line)[0])
    assert seen_mean < unseen_mean
    assert line.count(" -> ") == 3


def test_refit_check_line_names_the_worst_layers_and_hints_when_memorised():
    from yolo_ray.train.prune_run import refit_check_line

    seen = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.1}
    line = refit_check_line(seen, {"a": 0.9, "b": 0.2, "c": 0.35, "d": 0.25}, 64, 64)
    assert line.startswith("Refit check: mean layer residual 0.175 on the 64 calibration "
                           "images, 0.425 on 64 validation images; largest gaps: a 0.10 -> "
                           "0.90, d 0.10 -> 0.25, c 0.30 -> 0.35")
    assert line.endswith("(the refit memorised its calibration images: more --calib-images "
                         "help)")
    assert "memorised" not in refit_check_line(seen, {k: v * 1.2 for k, v in seen.items()},
                                               64, 64)
