"""Model building: YOLOv5 parameter counts, state_dict layout, strides, head, fuse, yaml errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from yolo_ray.config.load import CONFIGS_DIR, load_model_yaml
from yolo_ray.errors import ConfigError
from yolo_ray.models.layers import Conv, Detect
from yolo_ray.models.summary import format_layer_table, format_summary, model_info
from yolo_ray.models.yolo import build_model

# Spec §5.1 (multiples), §5.5 (parameter / entry counts), §5.6 (README GFLOPs, fused models).
VARIANTS = {
    #         gd    gw    unfused     fused       entries  GFLOPs
    "yolov5n": (0.33, 0.25, 1_872_157, 1_867_405, 349, 4.5),
    "yolov5s": (0.33, 0.50, 7_235_389, 7_225_885, 349, 16.5),
    "yolov5m": (0.67, 0.75, 21_190_557, 21_172_173, 481, 49.0),
    "yolov5l": (1.0, 1.0, 46_563_709, 46_533_693, 613, 109.1),
    "yolov5x": (1.33, 1.25, 86_749_405, 86_705_005, 745, 205.7),
}
YAMLS = sorted(p.stem for p in (CONFIGS_DIR / "models").glob("*.yaml"))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def built(request: pytest.FixtureRequest):
    """One unfused model per variant, shared by the read-only tests below."""
    return request.param, build_model(request.param)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_yaml_is_a_known_variant() -> None:
    assert YAMLS == sorted(VARIANTS)
    for name in YAMLS:
        d = load_model_yaml(name)
        assert d["nc"] == 80 and (d["depth_multiple"], d["width_multiple"]) == VARIANTS[name][:2]


def test_unfused_param_count(built) -> None:
    name, model = built
    assert _n_params(model) == VARIANTS[name][2]


def test_fused_param_count(built) -> None:
    name, original = built
    model = copy.deepcopy(original)  # cheaper than building again
    assert model.fuse() is model
    assert _n_params(model) == VARIANTS[name][3]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _expected_entries(gd: float, gw: float, nc: int = 80) -> list[tuple[str, tuple]]:
    """State_dict names and shapes derived from spec §5.2–§5.5, independently of the code."""
    out: list[tuple[str, tuple]] = []

    def conv(p: str, c1: int, c2: int, k: int) -> None:
        out.append((f"{p}.conv.weight", (c2, c1, k, k)))
        out.extend((f"{p}.bn.{b}", (c2,)) for b in ("weight", "bias", "running_mean",
                                                      "running_var"))
        out.append((f"{p}.bn.num_batches_tracked", ()))

    def c3(p: str, c1: int, c2: int, n: int) -> None:
        c_ = c2 // 2
        conv(f"{p}.cv1", c1, c_, 1), conv(f"{p}.cv2", c1, c_, 1), conv(f"{p}.cv3", 2 * c_, c2, 1)
        for j in range(n):
            conv(f"{p}.m.{j}.cv1", c_, c_, 1), conv(f"{p}.m.{j}.cv2", c_, c_, 3)

    def width(c: int) -> int:
        return math.ceil(c * gw / 8) * 8

    def depth(n: int) -> int:
        return max(round(n * gd), 1)

    rows = [("Conv", 64, 6), ("Conv", 128, 3), ("C3", 128, 3), ("Conv", 256, 3), ("C3", 256, 6),
            ("Conv", 512, 3), ("C3", 512, 9), ("Conv", 1024, 3), ("C3", 1024, 3), ("SPPF", 1024),
            ("Conv", 512, 1), ("Up",), ("Cat", 6), ("C3", 512, 3), ("Conv", 256, 1), ("Up",),
            ("Cat", 4), ("C3", 256, 3), ("Conv", 256, 3), ("Cat", 14), ("C3", 512, 3),
            ("Conv", 512, 3), ("Cat", 10), ("C3", 1024, 3)]
    ch = [3]
    for i, row in enumerate(rows):
        c1 = ch[-1]
        if row[0] == "Conv":
            c2 = width(row[1])
            conv(f"model.{i}", c1, c2, row[2])
        elif row[0] == "C3":
            c2 = width(row[1])
            c3(f"model.{i}", c1, c2, depth(row[2]))
        elif row[0] == "SPPF":
            c2 = width(row[1])
            conv(f"model.{i}.cv1", c1, c1 // 2, 1), conv(f"model.{i}.cv2", c1 // 2 * 4, c2, 1)
        elif row[0] == "Cat":
            c2 = c1 + ch[row[1] + 1]  # ch[0] is the image
        else:
            c2 = c1
        ch.append(c2)
    out.append(("model.24.anchors", (3, 3, 2)))
    for j, src in enumerate((17, 20, 23)):
        out += [(f"model.24.m.{j}.weight", (3 * (nc + 5), ch[src + 1], 1, 1)),
                (f"model.24.m.{j}.bias", (3 * (nc + 5),))]
    return out


def test_state_dict_names_and_shapes(built) -> None:
    name, model = built
    gd, gw, _, _, entries, _ = VARIANTS[name]
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == _expected_entries(gd, gw)
    assert len(got) == entries


def test_spec_example_shapes_yolov5s() -> None:
    sd = build_model("yolov5s").state_dict()
    assert sd["model.0.conv.weight"].shape == (32, 3, 6, 6)
    assert sd["model.2.cv1.conv.weight"].shape == (32, 64, 1, 1)
    assert sd["model.9.cv2.conv.weight"].shape == (512, 1024, 1, 1)
    assert sd["model.24.m.2.weight"].shape == (255, 512, 1, 1)


def test_stride_anchors_and_bias_prior(built) -> None:
    _, model = built
    det = model.detect
    assert isinstance(det, Detect) and det is model.model[24]
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert det.anchors[0].tolist() == [[1.25, 1.625], [2.0, 3.75], [4.125, 2.875]]
    assert det.anchors[1].tolist() == [[1.875, 3.8125], [3.875, 2.8125], [3.6875, 7.4375]]
    assert det.anchors[2].tolist() == [[3.625, 2.8125], [4.875, 6.1875], [11.65625, 10.1875]]
    for conv, s in zip(det.m, (8, 16, 32), strict=True):
        b = conv.bias.detach().view(3, -1)
        tol = 1 / math.sqrt(conv.in_channels)  # PyTorch's default bias init range
        assert torch.all((b[:, 4] - math.log(8 / (640 / s) ** 2)).abs() <= tol)
        assert torch.all((b[:, 5:] - math.log(0.6 / (80 - 0.99999))).abs() <= tol)


def test_bn_and_activation_settings(built) -> None:
    _, model = built
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    acts = {id(m.act) for m in model.modules() if isinstance(m, Conv)}
    assert len(acts) == 1  # one shared SiLU, as in YOLOv5
    act = next(m.act for m in model.modules() if isinstance(m, Conv))
    assert isinstance(act, nn.SiLU) and act.inplace


def test_layer_attributes_and_table() -> None:
    model = build_model("yolov5s")
    assert model.save == [4, 6, 10, 14, 17, 20, 23]
    assert [m.i for m in model.model] == list(range(25))
    assert model.model[12].f == [-1, 6] and model.model[24].f == [17, 20, 23]
    assert model.model[0].type.endswith(".Conv") and model.model[0].np == 3520
    assert model.nc == 80 and model.names[:2] == ["0", "1"]
    table = format_layer_table(model).splitlines()
    assert table[0].split() == ["from", "n", "params", "module", "arguments"]
    assert len(table) == 26 and "[3, 32, 6, 2, 2]" in table[1]
    assert "[None, 2, 'nearest']" in table[12] and "[512, 256, 1, False]" in table[14]


def test_summary_line_and_gflops(built) -> None:
    name, model = built
    info = model_info(model)
    assert info.params == info.gradients == VARIANTS[name][2]
    assert info.gflops == pytest.approx(VARIANTS[name][5], rel=0.01)
    assert model.training  # the GFLOPs probe restores the mode
    if name == "yolov5s":
        assert format_summary(info, "YOLOv5s") == (
            "YOLOv5s summary: 214 layers, 7,235,389 parameters, 7,235,389 gradients, "
            "16.5 GFLOPs")


def test_detect_outputs_train_and_eval() -> None:
    model = build_model("yolov5n")
    x = torch.rand(2, 3, 64, 96)
    out = model(x)
    assert [tuple(o.shape) for o in out] == [(2, 3, 8, 12, 85), (2, 3, 4, 6, 85),
                                             (2, 3, 2, 3, 85)]
    model.eval()
    with torch.no_grad():
        pred, raw = model(x)
    assert pred.shape == (2, 3 * (96 + 24 + 6), 85) and len(raw) == 3
    assert torch.all((pred[..., 4:] >= 0) & (pred[..., 4:] <= 1))
    # xy of the first P3 cell/anchor: (2σ(t) − 0.5 + 0) · 8 pixels.
    expected_xy = (2 * raw[0][0, 0, 0, 0, :2].sigmoid() - 0.5) * 8
    assert torch.allclose(pred[0, 0, :2], expected_xy, atol=1e-5)


def test_fuse_keeps_outputs() -> None:
    model = build_model("yolov5n")
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BN statistics so folding is really exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.eval()
    x = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        before = model(x)[0]
        after = model.fuse()(x)[0]
    assert torch.allclose(before, after, atol=1e-3, rtol=1e-3)


def test_no_grad_prefix_stops_backward_at_the_frozen_prefix() -> None:
    model = build_model("yolov5n")
    x = torch.rand(1, 3, 64, 64)
    ref = [o.detach() for o in model(x)]
    model.no_grad_prefix = 10
    out = model(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, out, strict=True))
    sum(o.sum() for o in out).backward()
    for name, p in model.named_parameters():
        layer = int(name.split(".")[1])
        assert (p.grad is None) == (layer < 10), name


def test_nc_override_and_anchor_override() -> None:
    model = build_model("yolov5s", nc=3)
    assert model.nc == 3 and model.yaml["nc"] == 3 and model.names == ["0", "1", "2"]
    assert model.detect.m[0].weight.shape == (24, 128, 1, 1)
    assert build_model("yolov5n", anchors=2).detect.anchors.shape == (3, 2, 2)


def test_activation_key_selects_one_shared_activation() -> None:
    d = load_model_yaml("yolov5n")
    d["activation"] = "nn.LeakyReLU(0.1)"
    acts = {m.act for m in build_model(d).modules() if isinstance(m, Conv)}
    assert len(acts) == 1 and isinstance(next(iter(acts)), nn.LeakyReLU)
    assert next(iter(acts)).negative_slope == pytest.approx(0.1)


def _write_yaml(tmp_path, edit) -> str:
    d = load_model_yaml("yolov5n")
    d.pop("yaml_file")
    edit(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


def test_unknown_module_names_file_row_and_choices(tmp_path) -> None:
    path = _write_yaml(tmp_path, lambda d: d["head"].__setitem__(3, [-1, 3, "C3Fancy", [512]]))
    with pytest.raises(ConfigError) as e:
        build_model(path)
    msg = str(e.value)
    assert "C3Fancy" in msg and "bad.yaml" in msg and "layer 13" in msg and "head row 3" in msg
    assert "valid modules" in msg and "Conv" in msg and "nn.Upsample" in msg


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["backbone"].__setitem__(1, [-1, 1, "Conv"]), "expected [from, number"),
    (lambda d: d["head"].__setitem__(2, [[-1, 30], 1, "Concat", [1]]), "'from' index 30"),
    (lambda d: d["backbone"].__setitem__(0, [-2, 1, "Conv", [64, 6, 2, 2]]), "first layer"),
    (lambda d: d["backbone"].__setitem__(2, [-1, 0, "C3", [128]]), "'number'"),
    (lambda d: d.__setitem__("depth_mult", 0.5), "unknown key 'depth_mult'"),
    (lambda d: d.__setitem__("anchors", [[10, 13, 16]]), "anchors"),
    (lambda d: d.__setitem__("activation", "os.system('x')"), "invalid activation"),
    (lambda d: d["backbone"].__setitem__(1, [-1, 1, "Conv", ["wide", 3, 2]]), "output channels"),
])
def test_malformed_yaml_rows(tmp_path, edit, words: str) -> None:
    path = _write_yaml(tmp_path, edit)
    with pytest.raises(ConfigError, match="bad.yaml") as e:
        build_model(path)
    assert words in str(e.value)
