"""Shipping the dataset and weights to trial nodes: pack, cache per node, train from the copy."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from yolo_ray.cluster import shipping
from yolo_ray.cluster.shipping import digest_of, materialize, pack_dataset, ship
from yolo_ray.config.load import load_data_config
from yolo_ray.data.files import img2label_path, list_image_files
from yolo_ray.errors import DataError


@pytest.fixture
def data_copy(tmp_path: Path, synthetic_data: Path) -> Path:
    """A private copy of the synthetic dataset (tests edit and move it)."""
    src = synthetic_data.parent
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    return dst / synthetic_data.name


def _weights(tmp_path: Path) -> Path:
    w = tmp_path / "start.pt"
    w.write_bytes(b"fake weights \x00\x01")
    return w


def test_round_trip(tmp_path: Path, data_copy: Path) -> None:
    w = _weights(tmp_path)
    s = ship(data_copy, w)
    assert s.digest == digest_of(s.blob) and pack_dataset(data_copy, w) == s.blob  # deterministic
    data, weights = materialize(s.blob, s.digest, tmp_path / "cache", s.weights_name)
    assert data.parent == tmp_path / "cache" / s.digest
    assert weights is not None and weights.read_bytes() == w.read_bytes()
    orig, copy = load_data_config(data_copy), load_data_config(data)
    assert copy.names == orig.names
    for split in ("train", "val"):
        a = list_image_files(getattr(orig, split))
        b = list_image_files(getattr(copy, split))
        assert len(a) == len(b) > 0
        assert [x.read_bytes() for x in a] == [y.read_bytes() for y in b]
        labels = [img2label_path(x) for x in a if img2label_path(x).is_file()]
        assert labels
        assert all(img2label_path(y).is_file() for y in b)
        assert all(str(y).startswith(str(tmp_path / "cache")) for y in b)


def test_cache_hit_does_not_extract(tmp_path: Path, data_copy: Path, monkeypatch) -> None:
    s = ship(data_copy)
    calls = []
    real = shipping._extract
    monkeypatch.setattr(shipping, "_extract", lambda *a: (calls.append(1), real(*a)))
    first = materialize(s.blob, s.digest, tmp_path / "c")
    second = materialize(s.blob, s.digest, tmp_path / "c")
    assert first == second and first[1] is None and len(calls) == 1
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".tmp")]


def test_shipped_label_caches_mean_no_rescan(tmp_path: Path, data_copy: Path,
                                             monkeypatch) -> None:
    """The node's label caches exist right after extraction and match the driver's scan."""
    import yolo_ray.data.scan as scan_mod
    from yolo_ray.data.files import default_cache_path
    from yolo_ray.data.scan import scan_labels

    orig = load_data_config(data_copy)
    broken = list_image_files(orig.train)[3]
    broken.write_bytes(b"not a jpeg")  # corrupt: dropped and counted, on both sides alike
    driver = {split: scan_labels(list_image_files(getattr(orig, split)), orig.nc, log=str)
              for split in ("train", "val")}
    assert driver["train"].corrupt == 1
    s = ship(data_copy)
    data, _ = materialize(s.blob, s.digest, tmp_path / "cache")
    copy = load_data_config(data)
    caches = sorted(p.relative_to(data.parent) for p in data.parent.rglob("*.cache"))
    assert caches == [Path("files/labels/train.cache"), Path("files/labels/val.cache")]

    def no_rescan(*args, **kwargs):
        raise AssertionError("a label file was verified again on the node")

    monkeypatch.setattr(scan_mod, "verify_image_label", no_rescan)
    lines: list[str] = []
    for split, want in driver.items():
        files = list_image_files(getattr(copy, split))
        got = scan_labels(files, copy.nc, default_cache_path(files), log=lines.append)
        assert got.from_cache
        assert [p.relative_to(data.parent / "files") for p in got.images] == \
            [p.relative_to(data_copy.parent) for p in want.images]
        assert all(np.array_equal(a, b) for a, b in zip(got.labels, want.labels, strict=True))
        assert np.array_equal(got.shapes, want.shapes)
        assert (got.found, got.missing, got.empty, got.corrupt) == \
            (want.found, want.missing, want.empty, want.corrupt)
    train_dir = data.parent / "files" / "labels" / "train"
    assert lines[-2] == (f"Scanning {train_dir}... {len(driver['train'].images)} images, "
                         f"{driver['train'].backgrounds} backgrounds, 1 corrupt (cached)")


def test_label_caches_do_not_break_determinism(data_copy: Path) -> None:
    """The first pack builds the driver's cache, the second reads it: same bytes."""
    from yolo_ray.data.files import default_cache_path

    train = list_image_files(load_data_config(data_copy).train)
    default_cache_path(train).unlink(missing_ok=True)
    assert pack_dataset(data_copy) == pack_dataset(data_copy)


def test_label_change_changes_hash(data_copy: Path) -> None:
    before = ship(data_copy).digest
    image = list_image_files(load_data_config(data_copy).train)[0]
    label = img2label_path(image)
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert ship(data_copy).digest != before


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "a/../../evil"])
def test_unsafe_member_refused(tmp_path: Path, name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    blob = buf.getvalue()
    with pytest.raises(DataError, match="unsafe"):
        materialize(blob, digest_of(blob), tmp_path / "c")
    assert not (tmp_path / "evil").exists()
    assert not list((tmp_path / "c").glob(".tmp-*")) and not (tmp_path / "c" / digest_of(blob)).exists()


def test_hash_mismatch_refused(tmp_path: Path, data_copy: Path) -> None:
    s = ship(data_copy)
    with pytest.raises(DataError, match="hash"):
        materialize(s.blob, "0" * 32, tmp_path / "c")


def test_cli_default_ships_only_with_address() -> None:
    from yolo_ray.cli.evolve_cmds import _ship

    class A:
        data_on_nodes, address = False, None
    a = A()
    assert not _ship(a, False)
    a.address = "auto"
    assert _ship(a, False)
    a.data_on_nodes = True
    assert not _ship(a, True)


@pytest.mark.ray
def test_trial_trains_from_the_shipped_copy(tmp_path: Path, data_copy: Path,
                                            tiny_model_yaml: Path, monkeypatch) -> None:
    """ship_data=True on a local Ray: the original folder is gone before any trial starts."""
    ray = pytest.importorskip("ray")
    from yolo_ray.cluster.launch import run_classic
    from yolo_ray.cluster.request import EvolveRequest
    from yolo_ray.config.load import load_hyp
    from yolo_ray.evolve.files import read_evolve_csv

    cache = tmp_path / "node-cache"
    monkeypatch.setenv(shipping.CACHE_ENV, str(cache))  # inherited by Ray's workers
    moved = data_copy.parent.with_name("moved-away")
    real_ship = shipping.ship

    def ship_then_hide(data, weights=None):
        out = real_ship(data, weights)
        data_copy.parent.rename(moved)  # trials can only read the shipped copy now
        return out

    monkeypatch.setattr(shipping, "ship", ship_then_hide)
    request = EvolveRequest(
        run_dir=tmp_path / "run", data=str(data_copy), hyp=load_hyp(None),
        cfg=str(tiny_model_yaml), strategy="classic", epochs=1, generations=1, imgsz=64,
        batch_size=8, workers=0, cpus_per_trial=1, max_concurrent=1, device_policy="cpu",
        tensorboard=False, verbose=0, ship_data=True)
    # address="local": never join a `ray start` cluster someone else runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        summary = run_classic(request)
    finally:
        ray.shutdown()
    assert moved.is_dir() and not data_copy.exists()
    assert summary.rows == 1
    assert len(read_evolve_csv(tmp_path / "run" / "evolve.csv")[1]) == 1
    used = [json.loads(line)["data"]
            for f in (tmp_path / "run").rglob("result.json")
            for line in f.read_text().splitlines() if line.strip()]
    assert used and all(u.startswith(str(cache)) for u in used)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    copy = next(p for p in cache.iterdir() if p.is_dir())
    assert (copy / "files" / "labels" / "train.cache").is_file()  # shipped, not rebuilt
