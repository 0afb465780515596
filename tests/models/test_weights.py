"""Weights: official YOLOv5 .pt through the restricted unpickler, own checkpoints, refusals."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_ray.errors import WeightsError
from yolo_ray.models.weights import (
    load_official_state_dict,
    load_weights,
    transfer_state_dict,
)
from yolo_ray.models.yolo import build_model

SHARED = Path(__file__).parents[2].parent / "shared"
OFFICIAL = SHARED / "weights/yolov5n.pt"
IMAGE = SHARED / "datasets/coco128/images/train2017/000000000009.jpg"
needs_official = pytest.mark.skipif(not OFFICIAL.is_file(), reason="shared yolov5n.pt absent")


@pytest.fixture(scope="module")
def official():
    return load_weights(OFFICIAL)


def _letterbox(path: Path, size: int = 640) -> torch.Tensor:
    cv2 = pytest.importorskip("cv2")
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    r = size / max(h, w)
    img = cv2.resize(img, (round(w * r), round(h * r)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - img.shape[0]) // 2, (size - img.shape[1]) // 2
    canvas[top:top + img.shape[0], left:left + img.shape[1]] = img
    rgb = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1))
    return torch.from_numpy(rgb)[None].float() / 255


@needs_official
def test_official_loads_strict_with_metadata(official) -> None:
    sd, meta = official
    model = build_model("yolov5n")
    model.load_state_dict(sd, strict=True)
    assert list(sd) == list(model.state_dict())
    assert all(v.dtype in (torch.float32, torch.int64) for v in sd.values())
    assert meta["source"] == "yolov5" and meta["nc"] == 80 and len(meta["names"]) == 80
    assert meta["names"][0] == "person" and meta["stride"] == [8.0, 16.0, 32.0]
    assert torch.equal(meta["anchors"], model.detect.anchors)
    build_model(meta["yaml"]).load_state_dict(sd, strict=True)  # the embedded yaml rebuilds it


@needs_official
@pytest.mark.skipif(not IMAGE.is_file(), reason="shared coco128 absent")
def test_official_weights_detect_objects(official) -> None:
    model = build_model("yolov5n")
    model.load_state_dict(official[0], strict=True)
    model.eval()
    with torch.no_grad():
        pred, raw = model(_letterbox(IMAGE))
    assert pred.shape == (1, 25200, 85) and len(raw) == 3
    conf, cls = (pred[0, :, 4:5] * pred[0, :, 5:]).max(1)
    best = int(conf.argmax())
    assert float(pred[0, :, 4].max()) > 0.5 and float(conf[best]) > 0.45  # random init: ~0.01
    # The most confident box overlaps a labelled object of the same class (IoU > 0.5).
    labels = _labels_in_letterbox(IMAGE, 640)
    ious = _iou_xywh(pred[0, best, :4], labels[:, 1:])
    assert float(ious.max()) > 0.5 and int(labels[int(ious.argmax()), 0]) == int(cls[best])


def _labels_in_letterbox(image: Path, size: int) -> torch.Tensor:
    """(n, 5) cls, x, y, w, h in pixels of the letterboxed image, from the YOLO label file."""
    cv2 = pytest.importorskip("cv2")
    h, w = cv2.imread(str(image)).shape[:2]
    r = size / max(h, w)
    nh, nw = round(h * r), round(w * r)
    label_file = image.parents[2] / "labels" / image.parent.name / f"{image.stem}.txt"
    rows = torch.tensor(np.loadtxt(label_file, ndmin=2), dtype=torch.float32)
    scale = torch.tensor([nw, nh, nw, nh])
    offset = torch.tensor([(size - nw) // 2, (size - nh) // 2, 0, 0])
    return torch.cat((rows[:, :1], rows[:, 1:] * scale + offset), 1)


def _iou_xywh(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    def corners(b: torch.Tensor) -> torch.Tensor:
        return torch.cat((b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2), -1)
    a, b = corners(box[None]), corners(boxes)
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh.prod(1)
    return inter / (box[2:].prod() + boxes[:, 2:].prod(1) - inter)


@needs_official
def test_which_falls_back_to_model_when_ema_is_stripped() -> None:
    sd, _ = load_official_state_dict(OFFICIAL, which="ema")
    assert len(sd) == 349


@needs_official
def test_transfer_to_other_nc_keeps_all_but_detect_convs(official) -> None:
    sd, _ = official
    model = build_model("yolov5n", nc=3)
    head_before = model.detect.m[0].weight.clone()
    assert transfer_state_dict(model, sd) == (343, 349)
    msd = model.state_dict()
    assert all(torch.equal(msd[k], v) for k, v in sd.items() if ".24.m." not in k)
    assert torch.equal(model.detect.m[0].weight, head_before)
    assert transfer_state_dict(build_model("yolov5n", nc=3), sd, exclude=("anchor",)) == (342, 349)


def test_own_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = build_model("yolov5n", nc=2)
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "epoch": 4, "names": ["cat", "dog"]}, path)
    sd, meta = load_weights(path)
    assert meta["source"] == "yolo-ray" and meta["epoch"] == 4 and meta["nc"] == 2
    assert meta["names"] == ["cat", "dog"] and meta["anchors"].shape == (3, 3, 2)
    fresh = build_model("yolov5n", nc=2)
    fresh.load_state_dict(sd, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


# --- refusals ---------------------------------------------------------------------------------

def _reduce_to(func, *args):
    class Payload:
        def __reduce__(self):
            return func, args
    return Payload()


def _payloads(marker: Path) -> dict:
    return {
        "os.system": _reduce_to(os.system, f"touch {marker}"),
        "builtins.eval": _reduce_to(eval, f"open({str(marker)!r}, 'w')"),
        "subprocess": _reduce_to(subprocess.Popen, ["touch", str(marker)]),
        # A legitimate-looking tensor dict with the payload nested in its metadata.
        "nested": {"model": {"w": torch.zeros(2)}, "opt": [{"hook": _reduce_to(
            os.system, f"touch {marker}")}]},
    }


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess", "nested"])
def test_malicious_torch_save_is_refused(tmp_path: Path, kind: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_payloads(marker)[kind], path, pickle_protocol=protocol)
    for loader in (load_weights, load_official_state_dict):  # early scan and the unpickler
        with pytest.raises(WeightsError, match="refuses to load global"):
            loader(path)
    assert not marker.exists()


def _unicode(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _zip_pickle(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
        zf.writestr("archive/version", "3\n")
    return path


def test_nested_reduce_inside_an_allowed_yolov5_object_is_refused(tmp_path: Path) -> None:
    """{'model': models.yolo.Model() with BUILD state {'x': posix.system('touch …')}}."""
    marker = tmp_path / "pwned"
    payload = (b"\x80\x02}" + _unicode("model") + _global("models.yolo", "Model") + b")\x81}"
               + _unicode("x") + _global("posix", "system") + _unicode(f"touch {marker}")
               + b"\x85Rsbs.")
    path = _zip_pickle(tmp_path / "nested.pt", payload)
    for loader in (load_weights, load_official_state_dict):
        with pytest.raises(WeightsError, match="'posix.system'"):
            loader(path)
    assert not marker.exists()


def test_getattr_trick_is_refused(tmp_path: Path) -> None:
    """builtins.getattr(torch-allowed object, ...) never resolves: getattr is not allowed."""
    payload = (b"\x80\x02" + _global("builtins", "getattr") + _global("collections", "OrderedDict")
               + _unicode("fromkeys") + b"\x86R.")
    path = _zip_pickle(tmp_path / "getattr.pt", payload)
    with pytest.raises(WeightsError, match="builtins.getattr"):
        load_official_state_dict(path)


def test_plain_pickle_file_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_reduce_to(os.system, f"touch {marker}")))
    with pytest.raises(WeightsError, match="evil.pkl"):
        load_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"this is a text file\n", bytes(range(256)) * 64, b""])
def test_non_checkpoint_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match="weights.pt"):
        load_weights(path)


def test_zip_without_pickle_and_corrupt_pickle(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    (tmp_path / "a.pt").write_bytes(buf.getvalue())
    with pytest.raises(WeightsError, match="a.pt"):
        load_weights(tmp_path / "a.pt")
    _zip_pickle(tmp_path / "b.pt", b"\x80\x02garbage")
    with pytest.raises(WeightsError, match="b.pt"):
        load_weights(tmp_path / "b.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.pt")


def test_non_dict_and_missing_model_entry(tmp_path: Path) -> None:
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(WeightsError, match="t.pt"):
        load_weights(tmp_path / "t.pt")
    torch.save({"epoch": 1}, tmp_path / "e.pt")
    with pytest.raises(WeightsError, match="'model'"):
        load_weights(tmp_path / "e.pt")
