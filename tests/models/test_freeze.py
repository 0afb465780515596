"""Freeze: YOLOv5 selection semantics, frozen tensors stay bit-identical, BN policy, folding."""

from __future__ import annotations

import copy

import pytest
import torch

from yolo_ray.config.load import load_hyp
from yolo_ray.errors import ConfigError
from yolo_ray.models.freeze import (FreezeReport, apply_freeze, is_bn_fixed, is_fused,
                                    parse_freeze_spec, refresh, select_frozen, set_train_mode)
from yolo_ray.models.yolo import build_model
from yolo_ray.train.loss import ComputeLoss

N_LAYERS = 25


@pytest.fixture(scope="module")
def base_model():
    return build_model("yolov5n", nc=3)


@pytest.fixture
def model(base_model):
    return copy.deepcopy(base_model)


def _batch(seed: int = 0, bs: int = 2, imgsz: int = 64):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(bs, 3, imgsz, imgsz, generator=g)
    # (n, 6): image index, class, x, y, w, h (normalised)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2],
                            [1, 1, 0.7, 0.3, 0.4, 0.3]])
    return imgs, targets


def _train_steps(model, steps: int = 3, use_set_train_mode: bool = False) -> None:
    """SGD (momentum, nesterov, weight decay) over *all* params, YOLOv5's real loss."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    loss_fn = ComputeLoss(model, load_hyp(), imgsz=64)
    for step in range(steps):
        set_train_mode(model) if use_set_train_mode else model.train()
        imgs, targets = _batch(step)
        loss, _ = loss_fn(model(imgs), targets)
        opt.zero_grad()
        loss.backward()
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert all(p.grad is None for p in frozen), "gradient reached a frozen parameter"
        opt.step()


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("values, expected", [
    ([0], ()), ([3], (0, 1, 2)), (["10"], tuple(range(10))), ([24], tuple(range(24))),
    ([0, 1, 2], (0, 1, 2)), (["5", 1, 1], (1, 5)), ([], ()),
])
def test_parse_counts_and_lists(values, expected):
    assert parse_freeze_spec(values, None, N_LAYERS) == expected


def test_parse_named_forms(base_model):
    assert parse_freeze_spec(["backbone"], base_model.yaml, N_LAYERS) == tuple(range(10))
    assert parse_freeze_spec(["all-but-detect"], base_model.yaml, N_LAYERS) == tuple(range(24))
    assert parse_freeze_spec(["all-but-head"], None, N_LAYERS) == tuple(range(24))


@pytest.mark.parametrize("values, match", [
    ([-1], ">= 0"), ([26], "only 25 layers"), ([25], "nothing to train"),
    ([3, 25], "outside"), ([0, -2], "outside"), (list(range(25)), "nothing to train"),
    (["neck"], "not an integer"), ([True], "expected an integer"), (["backbone"], "backbone"),
])
def test_parse_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        parse_freeze_spec(values, None, N_LAYERS)


def test_select_frozen_uses_yolov5_prefixes(base_model):
    names = select_frozen(base_model, [1])
    assert names and all(n.startswith("model.1.") for n in names)
    assert not any(n.startswith("model.10.") for n in names)  # the trailing dot matters
    plain = ["model.1.conv.weight", "model.10.conv.weight", "model.24.m.1.weight"]
    assert select_frozen(plain, [1]) == ["model.1.conv.weight"]
    assert select_frozen(plain, []) == []


# ----------------------------------------------------------------------------- apply
def test_report_and_no_grad_prefix(model):
    r = apply_freeze(model, range(10))
    assert isinstance(r, FreezeReport)
    assert r.frozen_layers == tuple(range(10)) and model.no_grad_prefix == 10
    total = sum(p.numel() for p in model.parameters())
    assert r.frozen_params + r.trainable_params == total
    assert r.frozen_params == sum(p.numel() for p in model.model[:10].parameters())
    assert r.fused_convs > 0
    r = apply_freeze(model, [0, 1, 5])  # re-applying replaces the previous freeze
    assert model.no_grad_prefix == 2 and r.frozen_layers == (0, 1, 5)
    assert not is_fused(model.model[3]) and is_fused(model.model[5])
    r = apply_freeze(model, [])
    assert model.no_grad_prefix == 0 and r.frozen_params == 0
    assert all(p.requires_grad for p in model.parameters())


def test_apply_errors(model):
    with pytest.raises(ConfigError, match="outside"):
        apply_freeze(model, [30])
    param_layers = [i for i, m in enumerate(model.model) if any(True for _ in m.parameters())]
    with pytest.raises(ConfigError, match="nothing left to train"):
        apply_freeze(model, param_layers)
    assert all(p.requires_grad for p in model.parameters())  # untouched on error


@pytest.mark.parametrize("n", [10, 24])
def test_bn_fixed_frozen_tensors_bit_identical(model, n):
    apply_freeze(model, range(n), bn_stats_fixed=True)
    before = _snapshot(model)
    _train_steps(model)  # plain model.train(): the BN pre-hook must still hold
    after = model.state_dict()
    frozen_keys = [k for k in before if any(k.startswith(f"model.{i}.") for i in range(n))]
    assert frozen_keys
    for k in frozen_keys:  # weights *and* running stats / num_batches_tracked
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["model.24.m.0.weight"], after["model.24.m.0.weight"])
    set_train_mode(model)  # the flags read right too (a fused conv never calls its BN)
    assert all(not m.bn.training for m in model.model[:n].modules() if hasattr(m, "bn"))
    assert model.model[24].training


def test_yolov5_mode_stats_drift_weights_fixed(model):
    apply_freeze(model, range(10), bn_stats_fixed=False)
    assert not any(is_bn_fixed(m) for m in model.modules())
    before = _snapshot(model)
    _train_steps(model, use_set_train_mode=True)
    after = model.state_dict()
    for k in before:
        if k.startswith(("model.0.", "model.5.", "model.9.")):
            same = torch.equal(before[k], after[k])
            assert same if not k.endswith(("running_mean", "running_var", "num_batches_tracked")) \
                else not same, k


def test_no_grad_prefix_matches_full_autograd(base_model):
    """Running the prefix without autograd changes no gradient of the trainable part."""
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    apply_freeze(a, range(10), bn_stats_fixed=False)
    apply_freeze(b, range(10), bn_stats_fixed=False)
    b.no_grad_prefix = 0
    imgs, targets = _batch(3)
    for m in (a, b):
        loss, _ = ComputeLoss(m, load_hyp(), 64)(m.train()(imgs), targets)
        loss.backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.requires_grad:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6, msg=n)


def test_fused_prefix_equals_unfused_eval(base_model):
    ref, fused = copy.deepcopy(base_model).eval(), copy.deepcopy(base_model)
    apply_freeze(fused, range(24))
    fused.eval()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-4, atol=1e-4)
    # train mode: the frozen part must behave like eval-mode BN (fixed statistics)
    set_train_mode(fused)
    ref_train = copy.deepcopy(base_model).train()
    for m in ref_train.model[:24].modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        for o1, o2 in zip(fused(x), ref_train(x)):
            torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-4)


def test_fold_cache_follows_reloaded_weights(base_model):
    m = copy.deepcopy(base_model)
    apply_freeze(m, range(10))
    m.eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        m(x)  # populate the caches
        other = copy.deepcopy(base_model)
        for p in other.model[:10].parameters():
            p.mul_(0.5)
        m.load_state_dict(other.state_dict())
        torch.testing.assert_close(m(x)[0], other.eval()(x)[0], rtol=1e-4, atol=1e-4)
        assert refresh(m) > 0


def test_deepcopy_keeps_policy(model):
    """EMA copies the model with deepcopy: fixed BN and folding must come along."""
    apply_freeze(model, range(10))
    ema = copy.deepcopy(model).train()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    before = _snapshot(ema)
    ema(x)
    key = "model.0.bn.running_mean"
    assert torch.equal(before[key], ema.state_dict()[key])
    assert is_fused(ema.model[0]) and ema.model[0].forward.__self__ is ema.model[0]


def test_model_fuse_after_freeze(base_model):
    """DetectionModel.fuse() (final validation) on a frozen model still gives the same output."""
    m = copy.deepcopy(base_model)
    apply_freeze(m, range(10))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = m.eval()(x)[0]
        torch.testing.assert_close(m.fuse()(x)[0], ref, rtol=1e-4, atol=1e-4)
