"""`yolo-ray` end to end through cli.main: outputs, exit codes and user-facing messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from yolo_ray.cli import main

from .conftest import COCO128_YAML, ROOT, YOLOV5N_PT, requires_shared


def test_info_prints_yolov5_summary(capsys) -> None:
    assert main(["info", "--cfg", "yolov5s"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"yolov5s summary: \d+ layers, 7,235,389 parameters, 7,235,389 gradients, "
                     r"16\.\d GFLOPs", out)
    assert "SPPF" in out and "Detect" in out


def test_data_synth_and_export_config(tmp_path, capsys) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "syn"), "--n-train", "4",
                 "--n-val", "2", "--img", "64"]) == 0
    data = Path(capsys.readouterr().out.strip())
    assert data.is_file() and len(list((tmp_path / "syn" / "images" / "train").iterdir())) == 4
    assert main(["export-config", "--data", str(data), "--cfg", "yolov5n", "--freeze", "10"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["settings"]["freeze"] == [10] and cfg["hyp"]["lr0"] == 0.01


def test_train_then_resume_then_val(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    args = ["train", "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml), "--img", "64",
            "--batch-size", "8", "--epochs", "2", "--workers", "0", "--device", "cpu",
            "--project", str(tmp_path), "--name", "run", "--no-progress", "--freeze", "2"]
    assert main(args) == 0
    run = tmp_path / "run"
    assert len((run / "results.csv").read_text().splitlines()) == 3
    assert (run / "hyp.yaml").is_file() and yaml.safe_load((run / "opt.yaml").read_text())["epochs"] == 2
    # a finished run cannot be resumed
    assert main(["train", "--resume", str(run / "weights" / "last.pt")]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["val", "--weights", str(run / "weights" / "best.pt"), "--data",
                 str(synthetic_data), "--img", "64", "--workers", "0", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Class\s+Images\s+Instances\s+P\s+R\s+mAP50\s+mAP50-95", out)
    assert re.search(r"^\s+all\s+8\s+\d+", out, re.M) and "Speed:" in out
    # the pruning guide in one command; the input checkpoint is left untouched
    best = run / "weights" / "best.pt"
    before = best.read_bytes()
    assert main(["prune", "--weights", str(best), "--data", str(synthetic_data), "--img", "64",
                 "--amount", "0.3", "--method", "channel", "--workers", "0",
                 "--project", str(tmp_path / "prune")]) == 0
    table = capsys.readouterr().out
    params = [int(x.replace(",", "")) for x in re.findall(r"^\s+(?:baseline|channel 0.3)\s+([\d,]+)",
                                                          table, re.M)]
    assert len(params) == 2 and params[1] < params[0] and best.read_bytes() == before
    pruned = tmp_path / "prune" / "exp" / "pruned.pt"
    assert main(["val", "--weights", str(pruned), "--data", str(synthetic_data), "--img", "64",
                 "--workers", "0"]) == 0  # the smaller architecture is rebuilt from its plan


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "nowhere.yaml", "--cfg", "yolov5n"], "data file not found"),
    (["train", "--data", "x.yaml", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--data", "x.yaml", "--prune", "1.5"], "--prune must be in [0, 1)"),
    (["info", "--cfg", "yolov5q"], "model config not found: yolov5q"),
    (["val", "--weights", "missing.pt", "--data", "x.yaml"], "missing.pt"),
    (["train", "--resume", "nothing/last.pt"], "checkpoint not found"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text("train: .\nval: .\nnames: [a]\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("yolo-ray: error:")


def test_unknown_module_in_model_yaml(tmp_path, tiny_model_yaml, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_model_yaml.read_text().replace("SPPF, [1024, 5]", "SPPX, [1024, 5]"))
    assert main(["info", "--cfg", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "SPPX" in err and "bad.yaml" in err


def test_weights_that_are_not_checkpoints(tmp_path, capsys, synthetic_data) -> None:
    fake = tmp_path / "fake.pt"
    fake.write_text("not a checkpoint")
    assert main(["val", "--weights", str(fake), "--data", str(synthetic_data)]) == 2
    assert "fake.pt" in capsys.readouterr().err


def test_cluster_check_shipped_file(capsys) -> None:
    assert main(["cluster", "check", str(ROOT / "cluster.yaml")]) == 0
    assert "OK: 0 error(s)" in capsys.readouterr().out


def _val_coco128(img: int, tmp_path: Path, capsys) -> tuple[float, float]:
    """Validate the official yolov5n.pt; check pycocotools agrees; return (mAP50, mAP50-95)."""
    assert main(["val", "--weights", str(YOLOV5N_PT), "--data", str(COCO128_YAML), "--img",
                 str(img), "--batch-size", "32", "--workers", "1", "--coco-eval",
                 "--project", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^\s+all\s+128\s+929\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert m, out
    map50, map_ = float(m.group(3)), float(m.group(4))
    c = re.search(r"COCOeval: mAP50-95 ([\d.]+), mAP50 ([\d.]+)", out)
    assert abs(float(c.group(1)) - map_) < 0.02 and abs(float(c.group(2)) - map50) < 0.02
    return map50, map_


@requires_shared(COCO128_YAML, YOLOV5N_PT)
def test_official_yolov5n_on_coco128_at_320(capsys, tmp_path) -> None:
    map50, map_ = _val_coco128(320, tmp_path, capsys)
    assert map50 > 0.3 and map_ > 0.18  # COCO-pretrained, far from zero even at 320 px


@pytest.mark.slow
@requires_shared(COCO128_YAML, YOLOV5N_PT)
def test_official_yolov5n_on_coco128_at_640(capsys, tmp_path) -> None:
    map50, map_ = _val_coco128(640, tmp_path, capsys)
    assert map50 > 0.5 and map_ > 0.33  # measured 0.567 / 0.365 (pycocotools 0.570 / 0.366)
