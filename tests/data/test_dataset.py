"""Image discovery, label verification, label cache and YoloDataset samples."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yolo_ray.config.load import load_data_config
from yolo_ray.data.dataset import YoloDataset
from yolo_ray.data.files import default_cache_path, img2label_path, list_image_files
from yolo_ray.data.labels import parse_label_text, verify_image_label
from yolo_ray.data.loader import build_dataloader, create_dataset, create_val_loader
from yolo_ray.data.scan import LabelScan, scan_labels
from yolo_ray.errors import DataError

from .conftest import COCO128, make_image

BOX = "0 0.5 0.5 0.2 0.2\n"


def _scan(images: list[Path], nc: int | None = 80, cache: Path | None = None) -> tuple[LabelScan, list[str]]:
    logs: list[str] = []
    return scan_labels(images, nc, cache, log=logs.append), logs


# ------------------------------------------------------------------ COCO128 (real data)
@pytest.mark.skipif(not COCO128.is_dir(), reason="shared/datasets/coco128 not present")
def test_coco128_counts_and_quirks(tmp_path: Path) -> None:
    files = list_image_files(COCO128 / "images" / "train2017")
    assert len(files) == 128  # the 2 label files without images are not images
    scan, logs = _scan(files, 80, cache=tmp_path / "coco128.cache")  # never write into shared/
    assert (len(scan.images), scan.backgrounds, scan.corrupt) == (128, 2, 0)
    assert (scan.found, scan.missing, scan.empty) == (126, 2, 0)
    assert logs[-1] == f"Scanning {COCO128 / 'labels' / 'train2017'}... 128 images, 2 backgrounds, 0 corrupt"
    assert sum(len(x) for x in scan.labels) == 929
    assert len({int(c) for x in scan.labels for c in x[:, 0]}) == 71
    by_name = dict(zip([p.name for p in scan.images], scan.labels))
    assert len(by_name["000000000250.jpg"]) == 0 and len(by_name["000000000508.jpg"]) == 0
    assert scan.shapes.min() >= 218 and scan.shapes.max() <= 640
    again, logs = _scan(files, 80, cache=tmp_path / "coco128.cache")
    assert again.from_cache and logs[-1].endswith("0 corrupt (cached)")


# ------------------------------------------------------------------ discovery
def test_img2label_path_uses_last_images_folder() -> None:
    assert img2label_path("/d/images/x/images/train/a.b.JPG") == Path("/d/images/x/labels/train/a.b.txt")
    assert img2label_path("/d/pics/a.png") == Path("/d/pics/a.txt")
    assert img2label_path("/d/images.png") == Path("/d/images.txt")  # a file, not a folder


def test_list_image_files_dirs_lists_and_errors(tmp_path: Path) -> None:
    a = make_image(tmp_path / "ds" / "images" / "a.jpg")
    b = make_image(tmp_path / "ds" / "images" / "sub" / "b.PNG")
    (tmp_path / "ds" / "images" / "notes.txt").write_text("x")
    (tmp_path / "ds" / "images" / "anim.gif").write_bytes(b"GIF89a")
    assert list_image_files(tmp_path / "ds" / "images") == [a, b]
    lst = tmp_path / "ds" / "train.txt"
    lst.write_text("./images/sub/b.PNG\n\nimages/a.jpg\n")
    assert list_image_files(lst) == [a, b]
    assert list_image_files([str(a), a, lst]) == [a, b]  # de-duplicated
    with pytest.raises(DataError, match="data path does not exist: .*nope"):
        list_image_files([a, tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in .*empty"):
        list_image_files(tmp_path / "empty")


def test_missing_data_yaml_path_is_named(tmp_path: Path) -> None:
    y = tmp_path / "d.yaml"
    y.write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a]\n")
    with pytest.raises(Exception, match="train path does not exist: .*images/train"):
        load_data_config(y)


# ------------------------------------------------------------------ label verification
BAD_LABELS = [
    ("0 0.5 0.5\n", 1, "expected 5 values (class x y w h) or a polygon, got 3"),
    (BOX + "0 0.5 0.5 0.2 0.2 0.3\n", 2, "expected 5 values (class x y w h) or a polygon, got 6"),
    ("0 0.5 -0.1 0.2 0.2\n", 1, "negative coordinate (-0.1)"),
    ("0 0.5 1.2 0.2 0.2\n", 1, "coordinate > 1 (1.2); labels must be normalised 0-1"),
    (BOX + BOX.replace("0 ", "85 ", 1), 2, "class id 85 >= nc 80"),
    ("-1 0.5 0.5 0.2 0.2\n", 1, "negative class id -1"),
    ("1.5 0.5 0.5 0.2 0.2\n", 1, "class id 1.5 is not an integer"),
    ("0 0.5 abc 0.2 0.2\n", 1, "not a number: 'abc'"),
    ("\n0 nan 0.5 0.2 0.2\n", 2, "non-finite value 'nan'"),
    ("0 0.1 0.1 0.2 0.2 0.3 0.3 0.4\n", 1, "polygon needs x y pairs after the class, got 7 values"),
]


@pytest.mark.parametrize("text,line,reason", BAD_LABELS)
def test_bad_label_file_is_counted_corrupt_with_reason(make_sample, text, line, reason) -> None:
    good, _ = make_sample("good", BOX)
    img, lab = make_sample("bad", text)
    scan, logs = _scan([good, img])
    assert scan.corrupt == 1 and scan.images == [good]
    assert f"WARNING: {img}: ignoring corrupt image/label: {lab}:{line}: {reason}" in logs
    assert logs[-1].endswith("1 images, 0 backgrounds, 1 corrupt")


def test_non_utf8_label_file_is_corrupt(make_sample) -> None:
    img, lab = make_sample("bin", None)
    lab.write_bytes(b"0 0.5 \xff\xfe")
    scan, logs = _scan([img])
    assert scan.corrupt == 1
    assert f"WARNING: {img}: ignoring corrupt image/label: {lab}: not UTF-8 text (byte 6)" in logs


def test_corrupt_and_tiny_images_are_counted(make_sample, tmp_path: Path) -> None:
    good, _ = make_sample("good", BOX)
    garbage, _ = make_sample("garbage", BOX)
    garbage.write_bytes(b"this is not a jpeg")
    tiny, _ = make_sample("tiny", BOX, w=8, h=30, suffix=".png")
    header_only, _ = make_sample("header", BOX, w=200, h=200)
    header_only.write_bytes(header_only.read_bytes()[:150])
    gone = tmp_path / "images" / "gone.jpg"
    scan, logs = _scan([good, garbage, tiny, header_only, gone])
    assert scan.images == [good] and scan.corrupt == 4
    text = "\n".join(logs)
    assert f"{garbage}: ignoring corrupt image/label: unreadable image (UnidentifiedImageError" in text
    assert f"{tiny}: ignoring corrupt image/label: image size 8x30 < 10 pixels" in text
    assert f"{header_only}: ignoring corrupt image/label: unreadable image (OSError" in text
    assert f"{gone}: ignoring corrupt image/label: image file not found" in text


def _truncate(path: Path) -> bytes:
    data = path.read_bytes()
    cut = data[: len(data) * 2 // 3]
    path.write_bytes(cut)
    return cut


def test_truncated_jpeg_is_restored_when_writable(make_sample) -> None:
    img, _ = make_sample("trunc", BOX, w=120, h=90)
    _truncate(img)
    scan, logs = _scan([img])
    assert scan.images == [img] and scan.corrupt == 0
    assert f"WARNING: {img}: corrupt JPEG restored and saved" in logs
    assert img.read_bytes()[-2:] == b"\xff\xd9"
    assert cv2.imread(str(img)).shape == (90, 120, 3)


def test_truncated_jpeg_in_read_only_folder_is_decoded_not_written(make_sample) -> None:
    img, _ = make_sample("trunc", BOX, w=120, h=90)
    cut = _truncate(img)
    img.chmod(0o444)
    img.parent.chmod(0o555)
    try:
        scan, logs = _scan([img])
    finally:
        img.parent.chmod(0o755)
        img.chmod(0o644)
    assert scan.images == [img] and scan.corrupt == 0
    assert any("corrupt JPEG (no end marker); file is read-only" in m for m in logs)
    assert img.read_bytes() == cut


def test_duplicates_polygons_and_backgrounds(make_sample) -> None:
    dup, _ = make_sample("dup", BOX + "1 0.2 0.2 0.1 0.1\n" + BOX)
    poly, _ = make_sample("poly", "2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    missing, _ = make_sample("missing", None)
    empty, _ = make_sample("empty", "\n  \n")
    scan, logs = _scan([dup, poly, missing, empty])
    assert (scan.found, scan.missing, scan.empty, scan.corrupt, scan.duplicates) == (3, 1, 1, 0, 1)
    assert any(m.startswith(f"WARNING: {dup}: 1 duplicate labels removed") for m in logs)
    assert logs[-1].endswith("4 images, 2 backgrounds, 0 corrupt")
    labels = dict(zip(scan.images, scan.labels))
    np.testing.assert_allclose(labels[dup], [[0, .5, .5, .2, .2], [1, .2, .2, .1, .1]])
    np.testing.assert_allclose(labels[poly], [[2, .3, .4, .4, .4]], atol=1e-6)
    segs = dict(zip(scan.images, scan.segments))
    assert len(segs[poly]) == 1 and segs[poly][0].shape == (4, 2) and segs[dup] == []


def test_mixed_boxes_and_polygons_keep_aligned_segments() -> None:
    labels, segs, _ = parse_label_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.3 0.1 0.2 0.3\n", 2)
    assert len(labels) == len(segs) == 2
    np.testing.assert_allclose(segs[0], [[.4, .3], [.6, .3], [.6, .7], [.4, .7]], atol=1e-6)


def test_training_set_without_labels_is_an_error(make_sample, hyp_low) -> None:
    a, _ = make_sample("a", None)
    b, _ = make_sample("b", "")
    scan, _ = _scan([a, b])
    with pytest.raises(DataError, match=f"no labels found in {scan.labels_dir}"):
        YoloDataset(scan, imgsz=64, augment=True, hyp=hyp_low)
    assert len(YoloDataset(scan, imgsz=64, augment=False)) == 2  # fine for validation


# ------------------------------------------------------------------ label cache
def test_label_cache_reused_then_rebuilt(make_sample) -> None:
    img, lab = make_sample("a", BOX)
    img2, _ = make_sample("b", "1 0.3 0.3 0.1 0.1\n")
    files = [img, img2]
    cache = default_cache_path(files)
    assert cache == lab.parent.with_name("labels.cache")
    first, _ = _scan(files, cache=cache)
    assert not first.from_cache and cache.is_file()
    with np.load(cache, allow_pickle=False) as z:  # a safe format: no pickle inside
        assert set(z.files) >= {"meta", "labels", "shapes"}
    second, logs = _scan(files, cache=cache)
    assert second.from_cache and logs[-1].endswith("(cached)")
    for a, b in zip(first.labels, second.labels):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.shapes, second.shapes)
    lab.write_text("1 0.5 0.5 0.4 0.4\n0 0.5 0.5 0.2 0.2\n")
    third, _ = _scan(files, cache=cache)
    assert not third.from_cache and len(third.labels[0]) == 2
    cache.write_bytes(b"garbage")  # a damaged cache is rebuilt, never trusted
    fourth, _ = _scan(files, cache=cache)
    assert not fourth.from_cache and _scan(files, cache=cache)[0].from_cache


def test_label_cache_skipped_in_read_only_folder(make_sample) -> None:
    img, _ = make_sample("a", BOX)
    cache = default_cache_path([img])
    cache.parent.chmod(0o555)
    try:
        scan, logs = _scan([img], cache=cache)
    finally:
        cache.parent.chmod(0o755)
    assert len(scan.images) == 1 and not cache.exists()
    assert f"WARNING: cache directory {cache.parent} is not writeable, label cache not saved" in logs


# ------------------------------------------------------------------ fuzzing the parser
_token = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-5, 100).map(str),
    st.sampled_from(["0", "1", "0.5", "1e400", "-0", "1e-9", "0x1", "nan", "inf", "", "١"]),
    st.text(max_size=4))
_line = st.lists(_token, max_size=12).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=6).map("\n".join), st.sampled_from([None, 1, 80]))
def test_fuzz_label_parser_only_clear_outcomes(text: str, nc: int | None) -> None:
    try:
        labels, segs, dups = parse_label_text(text, nc, "f.txt")
    except DataError as e:
        assert str(e).startswith("f.txt:") or str(e).startswith("f.txt")
        return
    assert labels.dtype == np.float32 and labels.shape[1] == 5 and np.isfinite(labels).all()
    assert (labels[:, 1:] >= 0).all() and (labels[:, 1:] <= 1).all()
    assert (labels[:, 0] == np.floor(labels[:, 0])).all() and (labels[:, 0] >= 0).all()
    assert nc is None or (labels[:, 0] < nc).all()
    assert segs == [] or len(segs) == len(labels)
    assert dups >= 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=80))
def test_fuzz_label_files_never_raise(tmp_path: Path, raw: bytes) -> None:
    img = tmp_path / "images" / "a.png"
    if not img.exists():
        make_image(img)
    lab = img2label_path(img)
    lab.parent.mkdir(exist_ok=True)
    lab.write_bytes(raw)
    rec = verify_image_label(img, lab, 80)
    assert rec.status in ("found", "empty", "corrupt")
    assert rec.status != "corrupt" or "ignoring corrupt image/label" in rec.messages[-1]


# ------------------------------------------------------------------ YoloDataset samples
def test_val_sample_shapes_map_boxes_back(synth_yaml: Path) -> None:
    loader = create_val_loader(load_data_config(synth_yaml), 64, 4, workers=0, cache_labels=False,
                               log=lambda m: None)
    ds: YoloDataset = loader.dataset
    assert ds.batch_shapes is not None and (ds.batch_shapes % 32 == 0).all()
    for i in range(len(ds)):
        img, labels, path, ((h0, w0), ((rh, rw), (pw, ph))) = ds[i]
        assert img.dtype == torch.uint8 and tuple(img.shape[1:]) == tuple(ds.batch_shapes[ds.batch_index[i]])
        assert (h0, w0) == cv2.imread(path).shape[:2]
        raw = np.array([r.split() for r in img2label_path(path).read_text().splitlines()],
                       dtype=float).reshape(-1, 5)
        H, W = img.shape[1:]
        # normalised → letterboxed pixels → original pixels with the returned ratio/pad
        x0 = (labels[:, 2].numpy() * W - pw) / rw / w0
        y0 = (labels[:, 3].numpy() * H - ph) / rh / h0
        np.testing.assert_allclose(np.sort(x0), np.sort(raw[:, 1]), atol=2e-3)
        np.testing.assert_allclose(np.sort(y0), np.sort(raw[:, 2]), atol=2e-3)


def _train_ds(synth_yaml: Path, hyp, seed: int = 0, **kw) -> YoloDataset:
    return create_dataset(load_data_config(synth_yaml), 64, 4, hyp, augment=True, seed=seed,
                          cache_labels=False, log=lambda m: None, **kw)


def test_mosaic_sample_size_and_valid_labels(synth_yaml: Path, hyp_low) -> None:
    ds = _train_ds(synth_yaml, hyp_low.replace(mixup=0.5, degrees=10.0, shear=2.0))
    n_labels = 0
    for i in range(len(ds)):
        img, labels, _, shapes = ds[i]
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8 and shapes is None
        assert labels.dtype == torch.float32 and labels.shape[1] == 6
        xywh = labels[:, 2:]
        assert ((xywh >= 0) & (xywh <= 1)).all() and (xywh[:, 2:] > 0).all()
        assert (labels[:, 0] == 0).all() and (labels[:, 1] < 3).all()
        lo, hi = labels[:, 2:4] - labels[:, 4:] / 2, labels[:, 2:4] + labels[:, 4:] / 2
        assert (lo >= -1e-4).all() and (hi <= 1 + 1e-4).all()
        n_labels += len(labels)
    assert n_labels > len(ds)


def test_same_seed_same_batch_any_workers(synth_yaml: Path, hyp_low) -> None:
    def batch(seed: int, workers: int, epoch: int = 0):
        ds = _train_ds(synth_yaml, hyp_low, seed=seed, cache="ram")
        ds.set_epoch(epoch)
        return next(iter(build_dataloader(ds, 4, shuffle=True, workers=workers, seed=seed)))

    a, b, c = batch(0, 0), batch(0, 2), batch(1, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], batch(0, 0, epoch=1)[0])


def test_set_epoch_reaches_persistent_workers(synth_yaml: Path, hyp_low) -> None:
    ds = _train_ds(synth_yaml, hyp_low, cache="ram")
    loader = build_dataloader(ds, 4, shuffle=False, workers=2, seed=0)
    first = next(iter(loader))[0]
    ds.set_epoch(5)
    fifth = next(iter(loader))[0]
    expected = torch.stack([ds[i][0] for i in range(4)])  # computed in this process at epoch 5
    assert torch.equal(fifth, expected) and not torch.equal(first, fifth)


def test_single_cls_and_ram_cache(synth_yaml: Path, hyp_zero) -> None:
    plain = _train_ds(synth_yaml, hyp_zero)
    cached = _train_ds(synth_yaml, hyp_zero, cache="ram", single_cls=True)
    for i in range(4):
        a, b = plain[i], cached[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1][:, 2:], b[1][:, 2:])
        assert (b[1][:, 1] == 0).all()


def test_rect_training_disables_mosaic(synth_yaml: Path, hyp_low) -> None:
    ds = _train_ds(synth_yaml, hyp_low, rect=True)
    assert not ds.mosaic
    shapes = {tuple(ds[i][0].shape[1:]) for i in range(len(ds))}
    assert all(h % 32 == 0 and w % 32 == 0 and max(h, w) == 64 for h, w in shapes)


def test_unreadable_image_at_load_time_is_a_data_error(make_sample) -> None:
    img, _ = make_sample("a", BOX)
    scan, _ = _scan([img])
    img.write_bytes(b"")
    with pytest.raises(DataError, match="image cannot be read"):
        YoloDataset(scan, imgsz=64)[0]


def test_no_global_rng_is_touched(synth_yaml: Path, hyp_low) -> None:
    state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    ds = _train_ds(synth_yaml, hyp_low.replace(mixup=1.0))
    for i in range(4):
        ds[i]
    assert (np.random.get_state()[1] == state).all() and torch.equal(torch.get_rng_state(), torch_state)
