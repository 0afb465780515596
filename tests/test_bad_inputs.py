"""Bad-input catalogue: each case feeds one broken input to a real entry point and checks the
exact one-line message users see and that no output file was damaged (docs/bad_inputs.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from yolo_ray.cli import main
from yolo_ray.config.load import CONFIGS_DIR, load_hyp
from yolo_ray.errors import YoloRayError

SCRATCH_LOW = CONFIGS_DIR / "hyps" / "hyp.scratch-low.yaml"
CSV_HEADER = ("metrics/precision,metrics/recall,metrics/mAP_0.5,metrics/mAP_0.5:0.95,"
              "val/box_loss,val/obj_loss,val/cls_loss")


@dataclass
class Env:
    """What a case may use: its own folder, the shared synthetic data and a tiny model yaml."""

    tmp: Path
    data: Path
    cfg: Path


@dataclass
class Expect:
    """One bad input: how to run it and what must (and must not) happen."""

    argv: list[str] | None            # cli.main argv; None → `call` must raise YoloRayError
    message: str | tuple[str, ...]    # exact substring(s) of the user-facing output
    rc: int = 2
    keep: list[Path] = field(default_factory=list)     # files whose bytes must not change
    absent: list[Path] = field(default_factory=list)   # paths that must not appear
    call: Callable[[], object] | None = None


CASES: dict[str, Callable[[Env], Expect]] = {}


def case(fn: Callable[[Env], Expect]) -> Callable[[Env], Expect]:
    CASES[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------ helpers
def train(e: Env, *extra: str, data: Path | None = None, cfg: Path | None = None) -> list[str]:
    return ["train", "--data", str(data or e.data), "--cfg", str(cfg or e.cfg), "--img", "64",
            "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
            "--project", str(e.tmp / "runs"), "--name", "exp", "--no-progress", *extra]


def evolve(e: Env, *extra: str, data: Path | None = None, cfg: Path | None = None) -> list[str]:
    return ["evolve", "--strategy", "classic", "--data", str(data or e.data), "--cfg",
            str(cfg or e.cfg), "--img", "64", "--epochs", "1", "--generations", "2",
            "--project", str(e.tmp / "runs"), *extra]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def hyp_text(drop: str = "", **override: object) -> str:
    d = {**load_hyp().as_dict(), **override}
    return "".join(f"{k}: {v}\n" for k, v in d.items() if k != drop)


def dataset(e: Env, image: bytes | None = None, label: str | bytes = "0 0.5 0.5 0.2 0.2\n",
            nc: int = 3) -> Path:
    """A one-folder dataset: 2 images (copied from the synthetic set unless `image`), labels."""
    src = sorted((e.data.parent / "images" / "train").iterdir())[:2]
    for i, s in enumerate(src):
        write(e.tmp / "ds" / "images" / f"im{i}.jpg", image if image is not None else s.read_bytes())
        write(e.tmp / "ds" / "labels" / f"im{i}.txt", label)
    names = ", ".join(f"c{i}" for i in range(nc))
    return write(e.tmp / "ds" / "data.yaml", f"path: .\ntrain: images\nval: images\nnames: [{names}]\n")


def evolve_csv(path: Path, rows: int = 2) -> Path:
    """An evolve.csv in the store's format: results + the scratch-low hyps (no anchors)."""
    keys = [k for k in load_hyp().keys() if k != "anchors"]
    header = ",".join(f"{k:>20}" for k in CSV_HEADER.split(",") + keys)
    vals = [0.5, 0.4, 0.3, 0.2, 0.05, 0.03, 0.01] + [float(load_hyp()[k]) for k in keys]
    lines = [header] + [",".join(f"{v:>20.5g}" for v in vals) for _ in range(rows)]
    return write(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------ CLI flags
@case
def flag_epochs_zero(e: Env) -> Expect:
    return Expect(train(e, "--epochs", "0"), "--epochs must be >= 1", absent=[e.tmp / "runs"])


@case
def flag_prune_out_of_range(e: Env) -> Expect:
    return Expect(train(e, "--prune", "1.5"), "--prune must be in [0, 1)", absent=[e.tmp / "runs"])


@case
def flag_distill_gain_negative(e: Env) -> Expect:
    return Expect(train(e, "--distill-gain", "-1"), "--distill-gain must be >= 0, got -1.0",
                  absent=[e.tmp / "runs"])


@case
def flag_distill_teacher_missing(e: Env) -> Expect:
    return Expect(train(e, "--distill", str(e.tmp / "teacher.pt")),
                  f"weights file not found: {e.tmp / 'teacher.pt'}", absent=[e.tmp / "runs"])


@case
def flag_prune_calib_images_negative(e: Env) -> Expect:
    weights = write(e.tmp / "w.pt", b"not read: the flags are checked first")
    return Expect(["prune", "--weights", str(weights), "--data", str(e.data), "--method",
                   "channel", "--calib-images", "-1", "--project", str(e.tmp / "runs")],
                  "--calib-images must be >= 0, got -1", keep=[weights],
                  absent=[e.tmp / "runs"])


@case
def flag_generations_zero(e: Env) -> Expect:
    return Expect(evolve(e, "--generations", "0"), "--generations must be >= 1, got 0",
                  absent=[e.tmp / "runs"])


@case
def flag_bad_device(e: Env) -> Expect:
    return Expect(train(e, "--device", "gpu"), "--device 'gpu' is not 'cpu', '' or a GPU index like '0'",
                  absent=[e.tmp / "runs"])


@case
def flag_project_is_a_file(e: Env) -> Expect:
    blocker = write(e.tmp / "file", "a file where the project folder should be")
    argv = evolve(e)
    argv[argv.index("--project") + 1] = str(blocker)
    return Expect(argv, f"output folder {blocker / 'exp'} is not writable", keep=[blocker])


# ------------------------------------------------------------------ data yaml
@case
def data_yaml_missing(e: Env) -> Expect:
    return Expect(train(e, data=e.tmp / "none.yaml"), f"data file not found: {e.tmp / 'none.yaml'}",
                  absent=[e.tmp / "runs"])


@case
def data_yaml_missing_val(e: Env) -> Expect:
    p = write(e.tmp / "d" / "data.yaml", "train: .\nnames: [a]\n")
    return Expect(train(e, data=p), f"{p}: missing required key(s): val", absent=[e.tmp / "runs"])


@case
def data_yaml_val_path_missing(e: Env) -> Expect:
    p = write(e.tmp / "d" / "data.yaml", "path: .\ntrain: .\nval: nowhere\nnames: [a]\n")
    return Expect(train(e, data=p), f"{p}: val path does not exist: {(e.tmp / 'd' / 'nowhere')}",
                  absent=[e.tmp / "runs"])


@case
def data_yaml_nc_names_mismatch(e: Env) -> Expect:
    p = write(e.tmp / "d" / "data.yaml", "train: .\nval: .\nnames: [a, b]\nnc: 3\n")
    return Expect(evolve(e, data=p), f"{p}: nc is 3 but 2 names are given", absent=[e.tmp / "runs"])


@case
def data_yaml_invalid_syntax(e: Env) -> Expect:
    p = write(e.tmp / "d" / "data.yaml", "train: .\nval: [.\nnames: [a]\n")
    return Expect(train(e, data=p), f"{p}: line 3, column 6: invalid YAML", absent=[e.tmp / "runs"])


# ------------------------------------------------------------------ images
@case
def images_folder_empty(e: Env) -> Expect:
    (e.tmp / "d" / "images").mkdir(parents=True)
    p = write(e.tmp / "d" / "data.yaml", "path: .\ntrain: images\nval: images\nnames: [a]\n")
    return Expect(train(e, data=p), f"no images found in {e.tmp / 'd' / 'images'} (suffixes: bmp,",
                  absent=[e.tmp / "runs"])


@case
def images_all_unreadable(e: Env) -> Expect:
    p = dataset(e, image=b"this is not a jpeg")
    return Expect(train(e, data=p), (
        f"{e.tmp / 'ds' / 'images' / 'im0.jpg'}: ignoring corrupt image/label: unreadable image",
        f"yolo-ray: error: no usable images in {e.tmp / 'ds' / 'labels'} (2 corrupt)"))


# ------------------------------------------------------------------ labels
@case
def labels_class_id_too_large(e: Env) -> Expect:
    p = dataset(e, label="5 0.5 0.5 0.2 0.2\n")
    return Expect(train(e, data=p), (
        f"ignoring corrupt image/label: {e.tmp / 'ds' / 'labels' / 'im0.txt'}:1: class id 5 >= nc 3",
        f"yolo-ray: error: no usable images in {e.tmp / 'ds' / 'labels'} (2 corrupt)"))


@case
def labels_not_utf8(e: Env) -> Expect:
    p = dataset(e, label=b"\xff\xfe0 0.5 0.5 0.2 0.2\n")
    return Expect(train(e, data=p), (
        f"{e.tmp / 'ds' / 'labels' / 'im1.txt'}: not UTF-8 text (byte 0)",
        f"yolo-ray: error: no usable images in {e.tmp / 'ds' / 'labels'} (2 corrupt)"))


# ------------------------------------------------------------------ hyp yaml
@case
def hyp_unknown_key(e: Env) -> Expect:
    p = write(e.tmp / "hyp.yaml", SCRATCH_LOW.read_text() + "lr00: 0.1\n")
    return Expect(train(e, "--hyp", str(p)), f"{p}: unknown hyperparameter 'lr00'; valid keys",
                  absent=[e.tmp / "runs"])


@case
def hyp_missing_gene(e: Env) -> Expect:
    p = write(e.tmp / "hyp.yaml", hyp_text(drop="box"))
    return Expect(evolve(e, "--hyp", str(p)), "missing hyperparameter(s): box", absent=[e.tmp / "runs"])


@case
def hyp_value_not_a_number(e: Env) -> Expect:
    p = write(e.tmp / "hyp.yaml", hyp_text(lr0="fast"))
    return Expect(train(e, "--hyp", str(p)), f"{p}: hyperparameter 'lr0' must be a number, got 'fast'", absent=[e.tmp / "runs"])


@case
def hyp_file_missing(e: Env) -> Expect:
    return Expect(evolve(e, "--hyp", str(e.tmp / "nohyp.yaml")), f"hyp file not found: {e.tmp / 'nohyp.yaml'}",
                  absent=[e.tmp / "runs"])


# ------------------------------------------------------------------ meta yaml
@case
def meta_lower_above_upper(e: Env) -> Expect:
    p = write(e.tmp / "meta.yaml", "lr0: [1, 0.1, 0.01]\n")
    return Expect(evolve(e, "--meta", str(p)), "'lr0': lower limit 0.1 > upper limit 0.01",
                  absent=[e.tmp / "runs"])


@case
def meta_unknown_gene(e: Env) -> Expect:
    p = write(e.tmp / "meta.yaml", "lr0: [1, 1.0e-5, 0.1]\nlearning_rate: [1, 0, 1]\n")
    return Expect(evolve(e, "--meta", str(p)), f"{p}: unknown gene 'learning_rate'",
                  absent=[e.tmp / "runs"])


@case
def meta_negative_gain(e: Env) -> Expect:
    p = write(e.tmp / "meta.yaml", "lr0: [-1, 1.0e-5, 0.1]\n")
    return Expect(evolve(e, "--meta", str(p)), f"{p}: gene 'lr0': gain must be >= 0, got -1",
                  absent=[e.tmp / "runs"])


@case
def meta_wrong_shape(e: Env) -> Expect:
    p = write(e.tmp / "meta.yaml", "lr0: [1, 0.1]\n")
    return Expect(evolve(e, "--meta", str(p)), f"{p}: gene 'lr0' must be [gain, lower, upper] or a mapping", absent=[e.tmp / "runs"])


# ------------------------------------------------------------------ model yaml
@case
def model_unknown_module(e: Env) -> Expect:
    p = write(e.tmp / "bad.yaml", e.cfg.read_text().replace("SPPF, [1024, 5]", "SPPX, [1024, 5]"))
    return Expect(["info", "--cfg", str(p)],
                  f"{p}: layer 9 (backbone row 9): unknown module 'SPPX'; valid modules are: Conv")


@case
def model_missing_backbone(e: Env) -> Expect:
    text = e.cfg.read_text()
    p = write(e.tmp / "nobackbone.yaml", text[:text.index("backbone:")] + text[text.index("head:"):])
    return Expect(train(e, cfg=p), f"{p}: missing key(s): backbone", absent=[e.tmp / "runs"])


@case
def model_name_unknown(e: Env) -> Expect:
    return Expect(["info", "--cfg", "yolov5q"], "model config not found: yolov5q")


# ------------------------------------------------------------------ weights
@case
def weights_text_file(e: Env) -> Expect:
    w = write(e.tmp / "fake.pt", "not a checkpoint")
    return Expect(["val", "--weights", str(w), "--data", str(e.data), "--project", str(e.tmp / "runs")],
                  f"{w}: not a PyTorch checkpoint (expected a zip-format .pt file)",
                  keep=[w], absent=[e.tmp / "runs"])


@case
def weights_missing(e: Env) -> Expect:
    w = e.tmp / "missing.pt"
    return Expect(train(e, "--weights", str(w)), f"weights file not found: {w}", absent=[e.tmp / "runs"])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@case
def weights_malicious_pickle(e: Env) -> Expect:
    import torch

    w, marker = e.tmp / "evil.pt", e.tmp / "pwned"
    torch.save({"model": _Evil(marker)}, w)
    return Expect(["val", "--weights", str(w), "--data", str(e.data), "--project", str(e.tmp / "runs")],
                  f"{w}: refuses to load global 'posix.system'", keep=[w],
                  absent=[marker, e.tmp / "runs"])


# ------------------------------------------------------------------ cluster yaml
@case
def cluster_invalid_yaml(e: Env) -> Expect:
    p = write(e.tmp / "cluster.yaml", "cluster_name: [unclosed\n")
    return Expect(["cluster", "check", str(p)], f"{p}: line 2, column 1: invalid YAML", keep=[p])


@case
def cluster_missing_file(e: Env) -> Expect:
    return Expect(["cluster", "check", str(e.tmp / "nocluster.yaml")],
                  f"cluster file not found: {e.tmp / 'nocluster.yaml'}")


# ------------------------------------------------------------------ evolve.csv
@case
def seed_csv_malformed_line(e: Env) -> Expect:
    csv = evolve_csv(e.tmp / "seed.csv", rows=3)
    lines = csv.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ";", 1)
    csv.write_text("".join(lines))
    return Expect(evolve(e, "--seed-csv", str(csv)), f"{csv}: line 3", keep=[csv],
                  absent=[e.tmp / "runs"])


@case
def store_csv_malformed_in_reused_folder(e: Env) -> Expect:
    csv = evolve_csv(e.tmp / "runs" / "exp" / "evolve.csv", rows=2)
    csv.write_text(csv.read_text() + "   not,a,row\n")
    return Expect(evolve(e, "--exist-ok"), f"{csv}: line 4: expected 35 comma-separated values, found 3",
                  keep=[csv])


@case
def plot_evolve_missing_csv(e: Env) -> Expect:
    return Expect(["plot-evolve", str(e.tmp / "missing.csv")],
                  f"plot-evolve: {e.tmp / 'missing.csv'} not found",
                  absent=[e.tmp / "missing.png"])


# ------------------------------------------------------------------ resume state
@case
def train_resume_truncated_checkpoint(e: Env) -> Expect:
    import torch

    last = e.tmp / "runs" / "exp" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"model": {}, "x": torch.zeros(100)}, last)
    last.write_bytes(last.read_bytes()[:200])
    return Expect(["train", "--resume", str(last)], f"{last}: not a readable yolo-ray checkpoint",
                  keep=[last], absent=[e.tmp / "runs" / "exp2"])


@case
def train_resume_finished_run(e: Env) -> Expect:
    from yolo_ray.train.checkpoint import save_checkpoint

    last = save_checkpoint(e.tmp / "runs" / "exp" / "weights" / "last.pt",
                           {"model": {}, "train_state": {"epoch": 3}, "settings": {"epochs": 3}})
    return Expect(["train", "--resume", str(last)], f"{last}: training already finished; nothing to resume",
                  keep=[last], absent=[e.tmp / "runs" / "exp2", last.parent.parent / "results.csv"])


@case
def train_resume_stripped_checkpoint(e: Env) -> Expect:
    from yolo_ray.train.checkpoint import save_checkpoint

    best = save_checkpoint(e.tmp / "runs" / "exp" / "weights" / "best.pt", {"model": {}})
    return Expect(["train", "--resume", str(best)], f"{best}: has no training state to resume",
                  keep=[best], absent=[e.tmp / "runs" / "exp2", best.parent / "last.pt"])


@case
def evolve_resume_unknown_name(e: Env) -> Expect:
    (e.tmp / "runs").mkdir()
    return Expect(["evolve", "--resume", "nope", "--project", str(e.tmp / "runs")],
                  "--resume nope: no evolution run named 'nope'", absent=[e.tmp / "runs" / "nope"])


@case
def evolve_resume_not_a_run(e: Env) -> Expect:
    (e.tmp / "runs" / "exp").mkdir(parents=True)
    return Expect(["evolve", "--resume", "exp", "--project", str(e.tmp / "runs")],
                  f"--resume exp: {e.tmp / 'runs' / 'exp'} is not an evolution run (no evolve_run.yaml)",
                  absent=[e.tmp / "runs" / "exp" / "evolve.csv", e.tmp / "runs" / "exp" / "evolve_run.yaml"])


@case
def evolve_resume_corrupt_run_file(e: Env) -> Expect:
    run = e.tmp / "runs" / "exp"
    csv = evolve_csv(run / "evolve.csv", rows=2)
    run_file = write(run / "evolve_run.yaml", "target_rows: 5\n")
    return Expect(["evolve", "--resume", "exp", "--project", str(e.tmp / "runs")],
                  f"{run_file}: cannot read the saved evolution run", keep=[csv, run_file])


# ------------------------------------------------------------------ the test
@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must be refused before a Ray cluster could be started or joined."""
    from yolo_ray.cluster import launch

    def refuse(request):  # pragma: no cover - reached only on a bug
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(launch, "connect", refuse)


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, synthetic_data: Path, tiny_model_yaml: Path,
                   capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "case"
    work.mkdir()
    expect = CASES[name](Env(work, synthetic_data, tiny_model_yaml))
    before = {p: p.read_bytes() for p in expect.keep}
    if expect.argv is not None:
        assert main(expect.argv) == expect.rc
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if expect.rc == 2:  # one error line, the last thing printed
            assert err.count("yolo-ray: error:") == 1, err
            assert err.rstrip("\n").splitlines()[-1].startswith("yolo-ray: error:"), err
        else:
            err += capsys.readouterr().out
    else:
        with pytest.raises(YoloRayError) as info:
            expect.call()
        err = str(info.value)
    messages = (expect.message,) if isinstance(expect.message, str) else expect.message
    for m in messages:
        assert m in err, err
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was changed"
    for p in expect.absent:
        assert not p.exists(), f"{p} was created"
