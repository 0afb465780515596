"""Gradual channel pruning: per-step ratios, request checks and `run_prune` with --steps."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from yolo_ray.errors import ConfigError
from yolo_ray.models.prune import plan_channel_prune, prune_model, step_ratios
from yolo_ray.models.prune_graph import build_graph, prunable_groups
from yolo_ray.models.yolo import build_model
from yolo_ray.train.checkpoint import save_checkpoint
from yolo_ray.train.prune_run import PruneRequest, check_prune_request, run_prune
from yolo_ray.train.val_run import ValRequest, load_model_for_inference


def test_step_ratios_reach_the_amount():
    assert step_ratios(0.3, 1) == [0.3]
    r = step_ratios(0.3, 3)
    assert r == pytest.approx([0.1, 0.1 / 0.9, 0.1 / 0.8])
    left = 1.0
    for k, x in enumerate(r, 1):
        left *= 1 - x
        assert 1 - left == pytest.approx(0.3 * k / 3)  # amount·k/steps gone after step k
    assert step_ratios(0.0, 2) == [0.0, 0.0]


@pytest.mark.parametrize("amount, steps, match", [
    (0.3, 0, "--steps must be a positive integer, got 0"),
    (0.3, 1.5, "--steps must be a positive integer, got 1.5"),
    (1.0, 2, r"--prune amount must be in \[0, 1\), got 1.0"),
])
def test_step_ratios_errors(amount, steps, match):
    with pytest.raises(ConfigError, match=match):
        step_ratios(amount, steps)


def _request(tmp_path: Path, weights: str = "w.pt", data: str = "d.yaml", **kw) -> PruneRequest:
    val = ValRequest(weights=weights, data=data, imgsz=64, batch_size=8, device="cpu", workers=0)
    args = {"amount": 0.3, "method": "channel", "out": tmp_path / "out", "finetune_epochs": 1,
            "batch_size": 8, "workers": 0, **kw}
    return PruneRequest(val, **args)


@pytest.mark.parametrize("kw, match", [
    ({"steps": 2, "method": "l1"}, "--steps > 1 needs --method channel and --finetune-epochs"),
    ({"steps": 2, "finetune_epochs": 0}, "--steps > 1 needs --method channel"),
    ({"steps": 0}, "--steps must be a positive integer, got 0"),
    ({"scope": "net"}, "--scope 'net' is not 'global' or 'layer'"),
    ({"method": "random"}, "--prune-method 'random' is not one of"),
])
def test_check_prune_request(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        check_prune_request(_request(tmp_path, **kw))
    assert not (tmp_path / "out").exists()


def test_prune_model_scope_layer_cuts_every_group_evenly():
    model = build_model("yolov5n", nc=3)
    r = prune_model(model, 0.25, "channel", imgsz=None, scope="layer")
    g = build_graph(model)
    for root, width in prunable_groups(g).items():
        for p in g.producers[root]:
            assert len(r.plan["keep"][p]) == width - round(0.25 * width), p
    assert r.plan["keep"] == {k: list(v) for k, v in
                              plan_channel_prune(model, 0.25, scope="layer").keep.items()}


def _n_keep(width: int, ratio: float) -> int:
    return max(1, width - round(ratio * width))


def test_run_prune_in_steps(tmp_path, synthetic_data, tiny_model_yaml):
    """Two prune + fine-tune steps: a fine-tune folder per step, the final checkpoint carries
    the composed plan (layer scope: each group keeps exactly what two cuts leave)."""
    model = build_model(str(tiny_model_yaml), nc=3)
    weights = save_checkpoint(tmp_path / "base.pt", {
        "model": model.state_dict(), "yaml": dict(model.yaml), "nc": 3,
        "names": ["a", "b", "c"], "epoch": -1})
    req = _request(tmp_path, str(weights), str(synthetic_data), steps=2, scope="layer")
    rows = run_prune(req)
    assert [r.label for r in rows] == ["baseline", "channel 0.3 (2 steps), last step",
                                       "channel 0.3 (2 steps) + 2 ep fine-tune"]
    assert rows[1].params == rows[2].params < rows[0].params
    for k in (1, 2):
        assert (req.out / f"finetune{k}" / "weights" / "last.pt").is_file()
    tuned = req.out / "finetune2" / "weights" / "last.pt"
    final = load_model_for_inference(str(tuned))  # rebuilt from the plan, strict load
    r1, r2 = step_ratios(0.3, 2)
    g = build_graph(model)
    for root, width in prunable_groups(g).items():
        for p in g.producers[root]:
            assert final.get_submodule(p).conv.out_channels == _n_keep(_n_keep(width, r1), r2), p
    with torch.no_grad():
        out = final.eval()(torch.rand(1, 3, 64, 64))[0]
    assert out.shape[-1] == 8  # 5 + nc


def test_cli_rejects_steps_without_channel(tmp_path, capsys):
    from yolo_ray.cli import main

    rc = main(["prune", "--weights", str(tmp_path / "w.pt"), "--data", str(tmp_path / "d.yaml"),
               "--method", "l1", "--steps", "3", "--finetune-epochs", "1",
               "--project", str(tmp_path / "runs")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        "yolo-ray: error: --steps > 1 needs --method channel and --finetune-epochs >= 1 "
        "(gradual pruning fine-tunes after every step)")
    assert not (tmp_path / "runs").exists()


def test_run_prune_refits_and_distills(tmp_path, synthetic_data, tiny_model_yaml, caplog):
    """--calib-images: the pruned convs are refitted on training images before saving;
    --distill: the fine-tune learns from the unpruned weights; --channel-multiple 8 keeps
    multiples of 8 in every pruned layer."""
    import logging

    model = build_model(str(tiny_model_yaml), nc=3)
    weights = save_checkpoint(tmp_path / "base.pt", {
        "model": model.state_dict(), "yaml": dict(model.yaml), "nc": 3,
        "names": ["a", "b", "c"], "epoch": -1})
    req = _request(tmp_path, str(weights), str(synthetic_data), amount=0.5, scope="layer",
                   calib_images=4, distill=True, divisor=8)
    with caplog.at_level(logging.INFO, logger="yolo_ray"):
        rows = run_prune(req)
    assert rows[1].params < rows[0].params
    log = caplog.text
    assert "Refitted " in log and "on 4 training images" in log
    # ...and checked on 4 validation images it did not see (the synthetic set's val split)
    assert re.search(r"Refit check: mean layer residual [0-9.]+ on the 4 calibration images, "
                     r"[0-9.]+ on 4 validation images; largest gaps: ", log)
    assert f"Distilling from {weights}" in log
    pruned = load_model_for_inference(str(req.out / "pruned.pt"))
    widths = {n: m.conv.out_channels for n, m in model.named_modules() if hasattr(m, "bn")}
    cut = {n: m.conv.out_channels for n, m in pruned.named_modules()
           if hasattr(m, "bn") and m.conv.out_channels != widths[n]}
    assert cut and all(c % 8 == 0 for c in cut.values())


def test_run_prune_skips_the_refit_check_when_val_is_train(tmp_path, synthetic_data,
                                                           tiny_model_yaml, caplog):
    """coco128's yaml validates on its training images: no unseen images to check the refit
    on, and the log says so instead of printing a check that is not one."""
    import logging

    import yaml

    raw = yaml.safe_load(Path(synthetic_data).read_text())
    raw["path"] = str(Path(synthetic_data).parent / raw.get("path", "."))
    raw["val"] = raw["train"]
    same = tmp_path / "same.yaml"
    same.write_text(yaml.safe_dump(raw))
    model = build_model(str(tiny_model_yaml), nc=3)
    weights = save_checkpoint(tmp_path / "base.pt", {
        "model": model.state_dict(), "yaml": dict(model.yaml), "nc": 3,
        "names": ["a", "b", "c"], "epoch": -1})
    req = _request(tmp_path, str(weights), str(same), amount=0.5, scope="layer",
                   calib_images=4, finetune_epochs=0)
    with caplog.at_level(logging.INFO, logger="yolo_ray"):
        run_prune(req)
    assert "Refit check skipped: the val images are training images" in caplog.text
    assert "Refit check: mean layer residual" not in caplog.text
