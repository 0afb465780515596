"""Prune: exact L1 / global-L1 sparsity, masks through fine-tuning, channel pruning round trip."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from yolo_ray.errors import ConfigError
from yolo_ray.models.freeze import apply_freeze
from yolo_ray.models.prune import (ChannelPlan, apply_channel_plan, apply_masks, conv_gflops,
                                   plan_channel_prune, plan_unstructured, prune_model,
                                   rebuild_from_plan, sparsity_report)
from yolo_ray.models.yolo import build_model


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
    keep = channel_result.plan["keep"]
    # backbone C3 (shortcut): cv1 and every bottleneck cv2 are joined by residual adds
    group = [k for k in keep if k.startswith("model.4.") and (k.endswith("cv1") and ".m." not in k
                                                            or k.endswith("cv2") and ".m." in k)]
    assert len(group) == 3 and all(keep[k] == keep["model.4.cv1"] for k in group)
    # head C3 (no shortcut): cv1 and m.0.cv2 are independent
    assert "model.17.cv1" in keep and "model.17.m.0.cv2" in keep
    assert "model.24.m.0" not in keep  # Detect outputs are never pruned
    n_layer0 = base_model.model[0].conv.out_channels
    assert len(keep["model.0"]) == n_layer0 - round(0.3 * n_layer0)


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
