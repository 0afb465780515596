"""Prune: exact L1 / global-L1 sparsity, masks through fine-tuning, channel pruning round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from yolo_ray.errors import ConfigError
from yolo_ray.models.freeze import apply_freeze
from yolo_ray.models.prune import (ChannelPlan, apply_channel_plan, apply_masks, conv_gflops,
                                   plan_channel_prune, plan_unstructured, prune_model,
                                   rebuild_from_plan, sparsity_report)
from yolo_ray.models.prune_graph import build_graph
from yolo_ray.models.prune_surgery import _apply_inplace
from yolo_ray.models.yolo import build_model

from .conftest import random_bn_statistics


@pytest.fixture(scope="module")
def base_model():
    model = build_model("yolov5n", nc=3)
    with torch.no_grad():  # random init gives an exact 0.0 now and then (p ≈ 2⁻²⁴ per weight)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[m.weight == 0] = 1e-4
    return model


def _convs(model):
    return [(n, m.weight) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _x(seed: int = 0, bs: int = 2, imgsz: int = 64) -> torch.Tensor:
    return torch.rand(bs, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- unstructured
@pytest.mark.parametrize("amount", [0.0, 0.1, 0.3, 0.55])
def test_l1_exact_per_layer(base_model, amount):
    pruned, report = apply_masks(base_model, plan_unstructured(base_model, amount, "l1"))
    convs = _convs(pruned)
    assert len(convs) == len(_convs(base_model)) and any(".m.2" in n for n, _ in convs)  # Detect
    for name, w in convs:
        assert int((w == 0).sum()) == round(amount * w.numel()), name
    cz = sum(round(amount * w.numel()) for _, w in convs)
    assert report.conv_zeros == cz
    all_zeros = sum(int((p == 0).sum()) for p in pruned.parameters())
    assert report.zeros == all_zeros
    assert report.params == sum(p.numel() for p in pruned.parameters())
    assert report.sparsity_all == pytest.approx(all_zeros / report.params)
    # the plan is pure: the input model keeps its weights
    assert not any(int((w == 0).sum()) for _, w in _convs(base_model))


def test_l1_removes_smallest_magnitudes(base_model):
    pruned, _ = apply_masks(base_model, plan_unstructured(base_model, 0.3, "l1"))
    w0, w1 = base_model.model[1].conv.weight, pruned.model[1].conv.weight
    assert w0[w1 == 0].abs().max() <= w0[w1 != 0].abs().min()


def test_global_l1_exact_total(base_model):
    amount = 0.3
    masks = plan_unstructured(base_model, amount, "global-l1")
    pruned, report = apply_masks(base_model, masks)
    total = sum(w.numel() for _, w in _convs(base_model))
    assert report.conv_zeros == round(amount * total) and report.conv_params == total
    per_layer = {n: float((w == 0).float().mean()) for n, w in _convs(pruned)}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.05  # not uniform per layer
    kept = torch.cat([w[w != 0].abs() for _, w in _convs(pruned)])
    pairs = zip(_convs(base_model), _convs(pruned))
    gone = torch.cat([w0[w1 == 0].abs() for (_, w0), (_, w1) in pairs])
    assert gone.max() <= kept.min()


def test_mask_keeper_survives_finetuning(base_model):
    result = prune_model(base_model, 0.4, "l1", keep_masks=True, imgsz=None)
    model, keeper = result.model, result.mask_keeper
    assert keeper is not None and result.plan is None
    zero_before = {n: (w == 0).clone() for n, w in _convs(model)}
    w_before = model.model[24].m[0].weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    model.train()
    for step in range(3):
        out = model(_x(step))
        loss = sum((o ** 2).mean() for o in out)
        opt.zero_grad()
        loss.backward()
        w = model.model[1].conv.weight
        assert torch.all(w.grad[zero_before["model.1.conv"]] == 0)  # masked gradients
        opt.step()
        keeper.apply()
    for n, w in _convs(model):
        assert torch.equal(w == 0, zero_before[n]), n
    assert not torch.equal(w_before, model.model[24].m[0].weight)  # it did train
    report = keeper.finalize()
    assert report.sparsity_conv == pytest.approx(
        sum(round(0.4 * w.numel()) for _, w in _convs(model)) / report.conv_params)
    assert all(not w._backward_hooks for _, w in _convs(model))


@pytest.mark.parametrize("amount, method, match", [
    (-0.1, "l1", r"\[0, 1\)"), (1.0, "l1", r"\[0, 1\)"), (0.3, "random", "not one of"),
])
def test_bad_arguments(base_model, amount, method, match):
    with pytest.raises(ConfigError, match=match):
        prune_model(base_model, amount, method)


def test_no_conv_layers():
    with pytest.raises(ConfigError, match="no Conv2d"):
        plan_unstructured(nn.Sequential(nn.Linear(2, 2)), 0.3)
    with pytest.raises(ConfigError, match="no Conv2d"):
        plan_channel_prune(nn.Sequential(nn.Linear(2, 2)), 0.3)


# ----------------------------------------------------------------------------- channel
@pytest.fixture(scope="module")
def channel_result(base_model):
    return prune_model(base_model, 0.3, "channel", imgsz=128)


def test_channel_prune_smaller_and_faster(base_model, channel_result):
    r = channel_result
    assert r.report.params < 0.8 * r.before.params
    assert r.report.gflops < 0.8 * r.before.gflops
    assert r.plan is not None and r.plan["keep"]


def test_channel_pruned_runs_forward_backward(base_model, channel_result):
    pruned = channel_result.model.train()
    x = _x(1)
    outs, ref = pruned(x), copy.deepcopy(base_model).train()(x)
    assert [o.shape for o in outs] == [o.shape for o in ref]
    sum(o.float().pow(2).mean() for o in outs).backward()
    assert all(p.grad is not None for p in pruned.parameters())
    pruned.eval()
    with torch.no_grad():
        assert pruned(x)[0].shape == copy.deepcopy(base_model).eval()(x)[0].shape


def test_channel_prune_is_exact_for_dead_channels(base_model):
    """Channels whose BN γ = 0 carry the constant act(β): removing them (with the constant
    folded into the consumers) leaves the 1×1-conv paths exact and the rest close."""
    plan = plan_channel_prune(base_model, 0.3)
    dead = copy.deepcopy(base_model).eval()
    mods = dict(dead.named_modules())
    with torch.no_grad():
        for path, keep in plan.keep.items():
            bn = mods[path].bn
            drop = sorted(set(range(bn.num_features)) - set(keep))
            bn.weight[drop] = 0.0
            bn.bias[drop] = 0.0  # act(0) = 0: removal must be exact
    pruned = apply_channel_plan(dead, plan).eval()
    x = _x(5)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x)[0], dead(x)[0], rtol=1e-5, atol=1e-4)
        for path, keep in plan.keep.items():  # now non-zero β: compensation keeps it close
            mods[path].bn.bias[sorted(set(range(mods[path].bn.num_features)) - set(keep))] = 0.3
        pruned = apply_channel_plan(dead, plan).eval()
        ref, out = dead(x)[0], pruned(x)[0]
        assert (out - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_channel_plan_respects_coupling(base_model, channel_result):
    keep = plan_channel_prune(base_model, 0.3, scope="layer").keep  # every group pruned
    # backbone C3 (shortcut): cv1 and every bottleneck cv2 are joined by residual adds
    group = [k for k in keep if k.startswith("model.4.") and (k.endswith("cv1") and ".m." not in k
                                                            or k.endswith("cv2") and ".m." in k)]
    assert len(group) == 3 and all(keep[k] == keep["model.4.cv1"] for k in group)
    # head C3 (no shortcut): cv1 and m.0.cv2 are independent
    assert "model.17.cv1" in keep and "model.17.m.0.cv2" in keep
    assert "model.24.m.0" not in keep  # Detect outputs are never pruned
    n_layer0 = base_model.model[0].conv.out_channels
    assert len(keep["model.0"]) == n_layer0 - round(0.3 * n_layer0)
    assert "model.24.m.0" not in channel_result.plan["keep"]


def test_channel_save_load_roundtrip(tmp_path, base_model, channel_result):
    pruned = channel_result.model.eval()
    path = tmp_path / "pruned.pt"
    torch.save({"model": pruned.state_dict(), "prune_plan": channel_result.plan,
                "yaml": base_model.yaml, "nc": base_model.nc}, path)
    ckpt = torch.load(path, weights_only=True)
    rebuilt = rebuild_from_plan(ckpt["yaml"], ckpt["nc"], ckpt["prune_plan"])
    rebuilt.load_state_dict(ckpt["model"], strict=True)
    x = _x(2)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x)[0], pruned(x)[0])
    assert json.loads(json.dumps(channel_result.plan)) == channel_result.plan


def test_channel_then_l1_then_channel_compose(base_model, channel_result):
    twice = prune_model(channel_result.model, 0.5, "l1", imgsz=None)
    assert twice.plan == channel_result.plan  # the structure is unchanged, the plan carried
    again = prune_model(twice.model, 0.2, "channel", imgsz=None)
    rebuilt = rebuild_from_plan(base_model.yaml, base_model.nc, again.plan)
    rebuilt.load_state_dict(again.model.state_dict(), strict=True)
    assert sum(p.numel() for p in rebuilt.parameters()) < channel_result.report.params


def test_channel_plan_errors(base_model):
    plan = plan_channel_prune(base_model, 0.3)
    keep = dict(plan.keep)
    with pytest.raises(ConfigError, match="every output channel"):
        apply_channel_plan(base_model, ChannelPlan({**keep, "model.0": ()}))
    with pytest.raises(ConfigError, match="does not have"):
        apply_channel_plan(base_model, ChannelPlan({"model.99.cv1": (0,)}))
    with pytest.raises(ConfigError, match="coupled"):
        apply_channel_plan(base_model, ChannelPlan({**keep, "model.2.m.0.cv2": (0, 1)}))
    with pytest.raises(ConfigError, match="sorted"):
        apply_channel_plan(base_model, ChannelPlan({"model.0": (5, 1)}))
    with pytest.raises(ConfigError, match="not a channel prune plan"):
        rebuild_from_plan(base_model.yaml, 3, {"keep": []})
    with pytest.raises(ConfigError, match="importance"):
        plan_channel_prune(base_model, 0.3, importance="random")


def test_channel_prune_l1_importance_and_freeze(base_model):
    r = prune_model(base_model, 0.5, "channel", importance="l1", imgsz=None)
    model = r.model
    flops = conv_gflops(model, 128)
    apply_freeze(model, range(10))
    assert conv_gflops(model, 128) == pytest.approx(flops)  # folded frozen convs still counted
    model.train()
    sum(o.pow(2).mean() for o in model(_x(3))).backward()
    assert model.model[0].conv.weight.grad is None
    assert sparsity_report(model).params == r.report.params


# ----------------------------------------------------------------------------- channel exactness
@pytest.fixture(scope="module")
def trained_like(base_model):
    """base_model in float64 (exactness tests: no float32 round-off amplified through a random
    net) with non-trivial BN affine parameters and running statistics."""
    return random_bn_statistics(copy.deepcopy(base_model).double().eval(), seed=1)


def _group_of(model, path):
    g = build_graph(model)
    return next(ps for ps in g.producers.values() if path in ps)


@pytest.mark.parametrize("path", [
    "model.0",            # backbone Conv → 3×3 stride-2 Conv
    "model.1",            # backbone Conv → C3.cv1 + C3.cv2
    "model.2.cv1",        # C3.cv1, residual-coupled with Bottleneck.cv2
    "model.4.cv1",        # C3 with two bottlenecks: three coupled producers
    "model.2.cv2",        # C3.cv2 → second segment of cv3's concatenated input
    "model.2.m.0.cv1",    # Bottleneck.cv1 → 3×3 Bottleneck.cv2
    "model.2.cv3",        # C3.cv3 → next Conv
    "model.6.cv3",        # C3.cv3 → Conv and (saved) Concat
    "model.9.cv1",        # SPPF.cv1 → four pooled segments of SPPF.cv2
    "model.9.cv2",        # SPPF.cv2 → Conv
    "model.10",           # Conv → Upsample → Concat (first segment) and a later Concat
    "model.13.m.0.cv2",   # head C3 without shortcut: Bottleneck.cv2 alone
    "model.17.cv3",       # feeds Detect and a Conv
    "model.23.cv3",       # feeds Detect only
])
def test_one_channel_removal_equals_zeroed_channel(trained_like, path):
    """Removing one channel must equal zeroing it (BN γ = β = 0 → act(0) = 0) exactly,
    for every layer type: offsets in Concat/C3/SPPF inputs and residual coupling included."""
    group = _group_of(trained_like, path)
    width = trained_like.get_submodule(path).bn.num_features
    for c in (0, width // 2, width - 1):
        keep = tuple(i for i in range(width) if i != c)
        plan = ChannelPlan({p: keep for p in group})
        masked = copy.deepcopy(trained_like)
        with torch.no_grad():
            for p in group:
                masked.get_submodule(p).bn.weight[c] = 0.0
                masked.get_submodule(p).bn.bias[c] = 0.0
            x = _x(7, 1, 96).double()
            ref = masked(x)[0]
            # the zeroed channel has mean 0: nothing to fold, the slicing alone must be exact
            pruned = apply_channel_plan(masked, plan).eval()
            torch.testing.assert_close(pruned(x)[0], ref, rtol=1e-6, atol=1e-6)
            # the unmasked model, sliced without compensation, is the same network
            raw = _apply_inplace(copy.deepcopy(trained_like), plan, compensate=False).eval()
            torch.testing.assert_close(raw(x)[0], ref, rtol=1e-6, atol=1e-6)
        assert pruned.get_submodule(path).conv.out_channels == width - 1


def test_constant_channel_compensation_exact_for_1x1_consumers(trained_like):
    """γ = 0, β ≠ 0: the channel carries act(β); folding it into the consumers is exact when
    every consumer is 1×1 (zero padding of a 3×3 consumer makes borders differ)."""
    path = "model.2.cv2"  # consumed only by the 1×1 C3.cv3
    width = trained_like.get_submodule(path).bn.num_features
    masked = copy.deepcopy(trained_like)
    with torch.no_grad():
        masked.get_submodule(path).bn.weight[3] = 0.0
        masked.get_submodule(path).bn.bias[3] = 0.7
        pruned = apply_channel_plan(masked, ChannelPlan(
            {path: tuple(i for i in range(width) if i != 3)})).eval()
        x = _x(8, 1, 96).double()
        torch.testing.assert_close(pruned(x)[0], masked(x)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("importance", ["l1", "perturb", "activation", "bn"])
def test_channel_importances_and_scopes(base_model, importance):
    calib = _x(9, 2, 64) if importance == "activation" else None
    total = sum(m.bn.num_features for n, m in base_model.named_modules()
                if n == "model.0")
    layer = plan_channel_prune(base_model, 0.25, importance, calib=calib, scope="layer")
    assert len(layer.keep["model.0"]) == total - round(0.25 * total)
    glob = plan_channel_prune(base_model, 0.25, importance, calib=calib)
    firsts = [ps[0] for ps in build_graph(base_model).producers.values() if ps]

    def removed(plan):  # channels removed per coupled group
        return [base_model.get_submodule(p).bn.num_features - len(plan.keep[p])
                if p in plan.keep else 0 for p in firsts]

    assert sum(removed(glob)) == sum(removed(layer))  # the same total ...
    if importance != "bn":  # (fresh BNs: γ = 1 everywhere, ties)
        assert removed(glob) != removed(layer)  # ... spread by importance
    assert all(len(k) >= base_model.get_submodule(p).bn.num_features // 2
               for p, k in glob.keep.items())  # max_frac = 0.5
    r = prune_model(base_model, 0.25, "channel", importance=importance, imgsz=None, calib=calib)
    with torch.no_grad():
        assert r.model.eval()(_x(1))[0].shape == base_model.eval()(_x(1))[0].shape
    if importance == "activation":
        with pytest.raises(ConfigError, match="calibration"):
            plan_channel_prune(base_model, 0.25, "activation")


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_channel_divisor_keeps_multiples(base_model, scope):
    """divisor 16 (oneDNN's fp32 block on AVX-512): every pruned group keeps a multiple of 16
    channels, and the total removed stays the amount's (to the nearest 16-channel chunk)."""
    firsts = [ps[0] for ps in build_graph(base_model).producers.values() if ps]
    width = {p: base_model.get_submodule(p).bn.num_features for p in firsts}

    def kept(plan):
        return {p: len(plan.keep[p]) if p in plan.keep else width[p] for p in firsts}

    target = sum(round(0.3 * w) for w in width.values())
    exact = kept(plan_channel_prune(base_model, 0.3, scope=scope))
    assert sum(width.values()) - sum(exact.values()) == target
    k16 = kept(plan_channel_prune(base_model, 0.3, scope=scope, divisor=16))
    assert all(k % 16 == 0 or k == width[p] for p, k in k16.items())
    assert sum(k < width[p] for p, k in k16.items()) >= 10
    if scope == "layer":  # the multiple of 16 nearest each group's exact count
        assert all(k16[p] == min(width[p], max(16, round(exact[p] / 16) * 16)) for p in firsts)
    else:
        assert abs(sum(width.values()) - sum(k16.values()) - target) <= 8
        assert all(k16[p] >= width[p] // 2 for p in firsts)  # max_frac = 0.5


OFFICIAL = Path(__file__).resolve().parents[3] / "shared" / "weights" / "yolov5n.pt"
IMAGE = OFFICIAL.parents[1] / "datasets" / "coco128" / "images" / "train2017" / "000000000009.jpg"


@pytest.mark.skipif(not (OFFICIAL.exists() and IMAGE.exists()),
                    reason="official yolov5n.pt / coco128 not available")
def test_official_yolov5n_survives_5pct_channel_pruning():
    """Regression: the old default (BN |γ|, uniform per layer) took the max objectness on this
    image from 0.77 to 0.02 (no detections) at 5 %; coco128 mAP50 0.44 → 0.09."""
    import cv2
    import numpy as np

    from yolo_ray.data.augment import letterbox
    from yolo_ray.train.nms import non_max_suppression
    from yolo_ray.train.val_run import load_model_for_inference

    model = load_model_for_inference(str(OFFICIAL)).eval()
    im = letterbox(cv2.imread(str(IMAGE))[:, :, ::-1], (320, 320), auto=False)[0]
    x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float()[None] / 255
    with torch.no_grad():
        ref = model(x)[0]
        out = prune_model(model, 0.05, "channel", imgsz=None).model.eval()(x)[0]
    assert out[..., 4].max() > 0.6 * ref[..., 4].max()
    top = non_max_suppression(ref, 0.25, 0.45)[0]
    det = non_max_suppression(out, 0.1, 0.45)[0]
    assert len(top) and len(det)
    assert set(det[:, 5].tolist()) & set(top[:, 5].tolist())  # the main objects are still found
