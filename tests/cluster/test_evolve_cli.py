"""`yolo-ray evolve` argument handling and bad input, checked before Ray starts (no Ray here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evolve.conftest import write_yolov5_csv
from yolo_ray.cli import main
from yolo_ray.cluster.launch import base_extras, build_space, resolve_resources
from yolo_ray.cluster.request import EvolveRequest, isolate_devices, trial_device
from yolo_ray.config.load import load_hyp
from yolo_ray.errors import ConfigError


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here must fail before a Ray cluster could be started or joined."""
    from yolo_ray.cluster import launch

    def refuse(request):  # pragma: no cover - reached only on a bug
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(launch, "connect", refuse)


def run(tmp_path: Path, data: Path, cfg: Path, *extra: str) -> int:
    return main(["evolve", "--strategy", "classic", "--data", str(data), "--cfg", str(cfg), "--img", "64",
                 "--epochs", "1", "--generations", "2", "--project", str(tmp_path / "runs"),
                 *extra])


def error(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err


def test_generations_must_be_positive(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--generations", "0") == 2
    assert "--generations must be >= 1, got 0" in error(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("budget", ["0", "1.5", "-0.1"])
def test_checkpoint_budget_must_be_a_share(tmp_path, synthetic_data, tiny_model_yaml, capsys,
                                           budget: str) -> None:
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--checkpoint-budget", budget) == 2
    assert f"--checkpoint-budget must be in (0, 1], got {float(budget)}" in error(capsys)
    assert not (tmp_path / "runs").exists()


def test_meta_lower_above_upper(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    meta = tmp_path / "meta.yaml"
    meta.write_text("lr0: [1, 0.1, 0.01]\n")
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--meta", str(meta)) == 2
    msg = error(capsys)
    assert str(meta) in msg and "'lr0'" in msg and "lower limit 0.1 > upper limit 0.01" in msg
    assert not (tmp_path / "runs").exists()


def test_meta_unknown_gene(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    meta = tmp_path / "meta.yaml"
    meta.write_text("lr0: [1, 1.0e-5, 0.1]\nlearning_rate: [1, 0, 1]\n")
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--meta", str(meta)) == 2
    assert "unknown gene 'learning_rate'" in error(capsys)


def test_hyp_missing_a_gene(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("".join(f"{k}: {v}\n" for k, v in load_hyp().as_dict().items() if k != "box"))
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--hyp", str(hyp)) == 2
    assert "missing hyperparameter(s): box" in error(capsys)


def test_unwritable_output_folder(tmp_path, synthetic_data, tiny_model_yaml, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the project folder should be")
    rc = main(["evolve", "--strategy", "classic", "--data", str(synthetic_data), "--cfg", str(tiny_model_yaml),
               "--generations", "2", "--project", str(blocker)])
    assert rc == 2
    assert "output folder" in (msg := error(capsys)) and "not writable" in msg


def test_resume_unknown_run(tmp_path, capsys) -> None:
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    assert main(["evolve", "--resume", "nope", "--project", str(tmp_path / "runs")]) == 2
    assert "no evolution run named 'nope'" in error(capsys)
    assert main(["evolve", "--resume", "exp", "--project", str(tmp_path / "runs")]) == 2
    assert "is not an evolution run" in error(capsys)


def test_malformed_seed_csv_names_the_line(tmp_path, synthetic_data, tiny_model_yaml,
                                           capsys) -> None:
    csv = tmp_path / "evolve.csv"
    write_yolov5_csv(csv, n=3)
    lines = csv.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ";", 1)
    csv.write_text("".join(lines))
    before = csv.read_bytes()
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--seed-csv", str(csv)) == 2
    assert f"{csv}: line 3" in error(capsys)
    assert csv.read_bytes() == before
    assert not (tmp_path / "runs").exists()


def test_malformed_store_in_reused_folder_is_not_rewritten(tmp_path, synthetic_data,
                                                           tiny_model_yaml, capsys) -> None:
    run_dir = tmp_path / "runs" / "exp"
    run_dir.mkdir(parents=True)
    write_yolov5_csv(run_dir / "evolve.csv", n=2)
    text = (run_dir / "evolve.csv").read_text() + "   not,a,row\n"
    (run_dir / "evolve.csv").write_text(text)
    assert run(tmp_path, synthetic_data, tiny_model_yaml, "--exist-ok") == 2
    assert "evolve.csv: line 4" in error(capsys)
    assert (run_dir / "evolve.csv").read_text() == text


def test_missing_data_and_weights(tmp_path, tiny_model_yaml, capsys) -> None:
    assert run(tmp_path, tmp_path / "none.yaml", tiny_model_yaml) == 2
    assert "none.yaml" in error(capsys)
    rc = main(["evolve", "--strategy", "classic", "--weights", str(tmp_path / "w.pt"), "--data",
               str(tmp_path / "none.yaml"), "--project", str(tmp_path / "runs")])
    assert rc == 2


def test_help_documents_noautoanchor(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evolve", "--help"])
    out = capsys.readouterr().out
    assert "--noautoanchor" in out and "--resume" in out and "--evolve-freeze" in out


def test_plot_evolve_reads_a_yolov5_csv(tmp_path: Path) -> None:
    write_yolov5_csv(tmp_path / "evolve.csv", n=6)
    assert main(["plot-evolve", str(tmp_path / "evolve.csv")]) == 0
    assert (tmp_path / "evolve.png").stat().st_size > 10_000
    assert main(["plot-evolve", str(tmp_path / "missing.csv")]) == 2


# ------------------------------------------------------------------ pure launch helpers
def request(**kw) -> EvolveRequest:
    return EvolveRequest(Path("/tmp/run"), "/tmp/data.yaml", load_hyp(), cfg="yolov5n", **kw)


def test_space_drops_anchors_and_adds_sidecar_genes() -> None:
    space = build_space(request(evolve_freeze=(0, 10), evolve_prune=(0.1, 0.5)))
    assert "anchors" not in space
    assert space.extra_names() == ("freeze", "prune")
    assert space["freeze"].kind == "int" and space["prune"].upper == 0.5
    # Multiplicative mutation cannot leave 0: the sidecar genes start mid-range then.
    assert base_extras(request(evolve_freeze=(0, 10), evolve_prune=(0.1, 0.5))) == {
        "freeze": 5.0, "prune": pytest.approx(0.3)}
    assert base_extras(request(evolve_freeze=(0, 10), freeze=(3,))) == {"freeze": 3.0}


@pytest.mark.parametrize("cluster, kw, expected", [
    ({"CPU": 2}, {}, (0.0, 1, 2, 0)),                                  # CPU slots
    ({"CPU": 16, "GPU": 4}, {}, (1.0, 4, 4, 3)),                        # one GPU per trial
    ({"CPU": 16, "GPU": 2}, {"gpus_per_trial": 0.5}, (0.5, 4, 4, 3)),   # fractional GPUs
    ({"CPU": 2, "GPU": 2}, {"gpus_per_trial": 1.0}, (1.0, 1, 2, 0)),    # fake GPUs in tests
    ({"CPU": 8}, {"cpus_per_trial": 4, "max_concurrent": 1}, (0.0, 4, 1, 3)),
])
def test_resolve_resources(cluster, kw, expected) -> None:
    r = resolve_resources(request(**kw), cluster)
    assert (r.gpus_per_trial, r.cpus_per_trial, r.max_concurrent, r.workers) == expected
    assert r.trial_settings().threads == r.cpus_per_trial


def test_resources_that_never_fit_locally() -> None:
    with pytest.raises(ConfigError, match="asks for 1 GPU"):
        resolve_resources(request(gpus_per_trial=1.0), {"CPU": 2})
    # On a cluster (autoscaling) the same request is allowed to wait for nodes.
    assert resolve_resources(request(gpus_per_trial=1.0, address="auto"), {"CPU": 2})


def test_trial_given_no_gpu_never_touches_one() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    isolate_devices([], env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    env = {"CUDA_VISIBLE_DEVICES": "1"}
    isolate_devices(["1"], env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    isolate_devices(["1"], policy="cpu", env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert trial_device([], "auto", True) == "cpu"
    assert trial_device(["0"], "auto", True) == "0"
    assert trial_device(["0"], "auto", False) == "cpu"   # fake GPU, no CUDA
    assert trial_device(["0"], "cpu", True) == "cpu"


def test_trial_settings_apply_genes_and_evolve_defaults() -> None:
    s = request(early_stop="none").trial_settings({"freeze": 4.4, "prune": 0.25}, seed=7)
    assert s.freeze == (4,) and s.prune_amount == 0.25 and s.seed == 7
    assert s.noval and s.nosave and not s.tensorboard and s.device == "cpu"
    assert not request(early_stop="asha").trial_settings().noval  # ASHA needs every epoch


def test_request_round_trips_through_its_run_file(tmp_path: Path) -> None:
    from yolo_ray.cluster.rundir import load_run_file, save_run_file

    r = request(evolve_prune=(0.1, 0.4), freeze=(2,)).replace(run_dir=tmp_path)
    save_run_file(r, 12)
    loaded, target = load_run_file(tmp_path)
    assert loaded == r and target == 12


def test_seed_csv_from_yolov5_seeds_the_store_without_anchors(tmp_path: Path,
                                                              synthetic_data) -> None:
    from yolo_ray.cluster.launch import prepare_run
    from yolo_ray.evolve.files import read_evolve_csv

    csv = tmp_path / "yolov5_evolve.csv"
    rows = write_yolov5_csv(csv, n=5)
    r = request(seed_csv=str(csv), generations=3).replace(run_dir=tmp_path / "run",
                                                          data=str(synthetic_data))
    prepared = prepare_run(r)
    columns, seeded = read_evolve_csv(tmp_path / "run" / "evolve.csv")
    assert "anchors" not in columns and len(seeded) == 5 and prepared.target_rows == 8
    assert [s.values for s in seeded] == [tuple(v[:7]) for v in rows]
    # The GA's first suggestion already mutates a seeded parent.
    suggestion = prepared.ga.ask(0, prepared.store.rows())
    assert suggestion.parent_rows and "anchors" not in suggestion.hyp
    prepared.store.close()
