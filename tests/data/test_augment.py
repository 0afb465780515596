"""Each augmentation: zero leaves the sample untouched, non-zero changes it as specified."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo_ray.config.load import load_data_config
from yolo_ray.data import augment as A
from yolo_ray.data.loader import collate, create_dataset


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ letterbox
def test_letterbox_pads_and_scales() -> None:
    img = _noise(48, 64)
    out, ratio, pad = A.letterbox(img, 64)
    assert out.shape == (64, 64, 3) and ratio == (1.0, 1.0) and pad == (0.0, 8.0)
    np.testing.assert_array_equal(out[8:56], img)
    assert (out[:8] == 114).all() and (out[56:] == 114).all()
    up, ratio, _ = A.letterbox(img, 128)
    assert up.shape == (128, 128, 3) and ratio == (2.0, 2.0)
    same, ratio, pad = A.letterbox(img, 128, scaleup=False)  # validation never enlarges
    assert ratio == (1.0, 1.0) and pad == (32.0, 40.0) and same.shape == (128, 128, 3)
    auto, _, pad = A.letterbox(img, 128, auto=True, stride=32)
    assert auto.shape == (96, 128, 3) and pad == (0.0, 0.0)
    odd, _, _ = A.letterbox(_noise(47, 64), (64, 64))
    assert (odd[:8] == 114).all() and (odd[55:] == 114).all() and not (odd[8] == 114).all()
    assert A.letterbox(img, (48, 64))[0] is img  # nothing to do: no copy


# ------------------------------------------------------------------ random_perspective
def _square_scene() -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((100, 120, 3), np.uint8)
    img[20:50, 30:60] = 255
    return img, np.array([[3, 30, 20, 60, 50]], dtype=np.float32)


def test_random_perspective_zero_is_identity() -> None:
    img, labels = _square_scene()
    out, lab = A.random_perspective(img, labels, rng=_rng())
    assert out is img and lab is labels


@pytest.mark.parametrize("param,value", [("degrees", 45.0), ("scale", 0.5), ("shear", 15.0),
                                         ("translate", 0.2), ("perspective", 0.001)])
def test_random_perspective_boxes_follow_pixels(param: str, value: float) -> None:
    img, labels = _square_scene()
    moved = 0
    for seed in range(6):
        out, lab = A.random_perspective(img, labels, rng=_rng(seed), **{param: value})
        assert out.shape == img.shape
        ys, xs = np.nonzero(out[..., 0] > 128)
        if len(lab) == 0:
            continue  # filtered out (too small or mostly outside)
        assert lab[0, 0] == 3
        visible = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        np.testing.assert_allclose(lab[0, 1:], visible, atol=2.5)
        moved += not np.allclose(lab[0, 1:], labels[0, 1:], atol=0.5)
    assert moved >= 4
    assert (img[20:50, 30:60] == 255).all() and labels[0, 1] == 30  # inputs untouched


def test_rotation_keeps_distance_to_centre() -> None:
    img, labels = _square_scene()
    for seed in range(5):
        _, lab = A.random_perspective(img, labels, rng=_rng(seed), degrees=90.0)
        before = labels[0, 1:3] + 15 - (60, 50)
        after = (lab[0, 1:3] + lab[0, 3:5]) / 2 - (60, 50)
        assert abs(np.hypot(*before) - np.hypot(*after)) < 1.5


def test_box_candidates_filters() -> None:
    """w, h > 2 px, kept area > 10% of the (scaled) original, aspect ratio < 100."""
    tiny = A.box_candidates(np.array([[0], [0], [10], [10]]), np.array([[0], [0], [2], [10]]))
    small = A.box_candidates(np.array([[0], [0], [100], [100]]), np.array([[0], [0], [30], [30]]))
    thin = A.box_candidates(np.array([[0], [0], [1000], [1000]]), np.array([[0], [0], [500], [4]]))
    ok = A.box_candidates(np.array([[0], [0], [100], [100]]), np.array([[0], [0], [40], [40]]))
    assert not tiny[0] and not small[0] and not thin[0] and ok[0]


# ------------------------------------------------------------------ HSV, mixup, flips
def test_augment_hsv_zero_is_identity() -> None:
    img = _noise()
    assert A.augment_hsv(img, 0, 0, 0, _rng()) is img


def test_augment_hsv_value_gain_stays_in_bounds() -> None:
    grey = np.full((20, 20, 3), 100, np.uint8)
    seen = set()
    for seed in range(20):
        out = A.augment_hsv(grey, 0.0, 0.0, 0.4, _rng(seed))
        v = int(out[0, 0, 0])
        assert (out == v).all() and 60 <= v <= 140
        seen.add(v)
    assert len(seen) > 5


@pytest.mark.parametrize("gains", [(0.5, 0, 0), (0, 0.9, 0)])
def test_augment_hsv_hue_and_saturation_keep_value(gains) -> None:
    img = _noise(32, 32)
    changed = False
    for seed in range(5):
        out = A.augment_hsv(img, *gains, _rng(seed))
        assert np.abs(out.max(2).astype(int) - img.max(2)).max() <= 2  # V = max(B, G, R)
        changed |= not np.array_equal(out, img)
    assert changed


def test_mixup_blends_and_concatenates() -> None:
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    la, lb = np.ones((2, 5), np.float32), np.zeros((1, 5), np.float32)
    out, lab = A.mixup(a, la, b, lb, _rng())
    assert (out == out[0, 0, 0]).all() and 50 < out[0, 0, 0] < 150  # r ~ Beta(32,32) ≈ 0.5
    assert lab.shape == (3, 5) and (lab[:2] == 1).all()


def test_flips_mirror_boxes() -> None:
    img = _noise()
    labels = np.array([[1, 0.2, 0.3, 0.1, 0.2]], np.float32)
    out, lab = A.fliplr(img, labels)
    np.testing.assert_array_equal(out, img[:, ::-1])
    np.testing.assert_allclose(lab, [[1, 0.8, 0.3, 0.1, 0.2]])
    out, lab = A.flipud(img, labels)
    np.testing.assert_array_equal(out, img[::-1])
    np.testing.assert_allclose(lab, [[1, 0.2, 0.7, 0.1, 0.2]])
    assert labels[0, 1] == np.float32(0.2)
    same = A.random_flips(img, labels, 0.0, 0.0, _rng())
    assert same[0] is img and same[1] is labels
    both = A.random_flips(img, labels, 1.0, 1.0, _rng())
    np.testing.assert_array_equal(both[0], img[::-1, ::-1])
    np.testing.assert_allclose(both[1], [[1, 0.8, 0.7, 0.1, 0.2]])


# ------------------------------------------------------------------ copy-paste
def test_copy_paste_is_a_no_op_without_segments() -> None:
    img, labels = _square_scene()
    out = A.copy_paste(img, labels, [], 1.0, _rng())
    assert out[0] is img and out[1] is labels and out[2] == []
    assert A.copy_paste(img, labels, [np.zeros((3, 2))], 0.0, _rng())[0] is img


def test_copy_paste_mirrors_segment() -> None:
    img, labels = _square_scene()
    seg = [np.array([[30, 20], [59, 20], [59, 49], [30, 49]], np.float32)]
    out, lab, segs = A.copy_paste(img, labels, seg, 1.0, _rng())
    assert len(lab) == 2 and len(segs) == 2
    np.testing.assert_allclose(lab[1], [3, 60, 20, 90, 50])
    assert (out[20:50, 61:90] == 255).all() and (out[20:50, 30:60] == 255).all()
    centred = np.zeros((100, 120, 3), np.uint8)  # its mirror covers itself: IoA ≥ 0.3, skipped
    lab_c = np.array([[0, 50, 20, 70, 50]], np.float32)
    seg_c = [np.array([[50, 20], [69, 20], [69, 49], [50, 49]], np.float32)]
    assert len(A.copy_paste(centred, lab_c, seg_c, 1.0, _rng())[1]) == 1


# ------------------------------------------------------------------ mosaic placement
def test_mosaic_tiles_meet_at_centre() -> None:
    s, xc, yc = 64, 70, 50
    for w, h in [(64, 64), (64, 40), (30, 64)]:
        rects = [A.mosaic_tile(i, xc, yc, w, h, s) for i in range(4)]
        for (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) in rects:
            assert (x2a - x1a, y2a - y1a) == (x2b - x1b, y2b - y1b)
            assert 0 <= x1a <= x2a <= 2 * s and 0 <= x1b <= x2b <= w and 0 <= y1b <= y2b <= h
        assert rects[0][0][2:] == (xc, yc) and rects[3][0][:2] == (xc, yc)


def test_place_mosaic_labels_match_tiles() -> None:
    s = 64
    tiles = [(np.full((s, s, 3), 40 * (i + 1), np.uint8), np.array([[i, .5, .5, 1, 1]], np.float32), [])
             for i in range(4)]
    canvas, labels, segs = A.place_mosaic(tiles, s, _rng(2))
    assert canvas.shape == (2 * s, 2 * s, 3) and labels.shape == (4, 5) and segs == []
    assert labels[:, 1:].min() >= 0 and labels[:, 1:].max() <= 2 * s
    for c, x1, y1, x2, y2 in labels:
        patch = canvas[int(y1):int(y2), int(x1):int(x2)]
        assert patch.size and (patch == 40 * (int(c) + 1)).all()
    assert (canvas == 114).any()  # some canvas stays grey padding


# ------------------------------------------------------------------ whole samples per hyp
@pytest.fixture(scope="module")
def baseline(synth_yaml: Path, hyp_zero):
    ds = create_dataset(load_data_config(synth_yaml), 64, 4, hyp_zero, augment=True,
                        cache_labels=False, log=lambda m: None)
    plain = create_dataset(load_data_config(synth_yaml), 64, 4, None, augment=False,
                           cache_labels=False, log=lambda m: None)
    return ds, plain


def test_all_zero_hyps_leave_samples_untouched(baseline) -> None:
    ds, plain = baseline
    for i in range(len(ds)):
        a, b = ds[i], plain[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("changes", [
    {"hsv_h": 0.5}, {"hsv_s": 0.7}, {"hsv_v": 0.4}, {"degrees": 20.0}, {"translate": 0.1},
    {"scale": 0.5}, {"shear": 10.0}, {"perspective": 0.001}, {"mosaic": 1.0}])
def test_each_hyp_changes_the_sample(baseline, synth_yaml: Path, hyp_zero, changes) -> None:
    base, _ = baseline
    ds = create_dataset(load_data_config(synth_yaml), 64, 4, hyp_zero.replace(**changes),
                        augment=True, cache_labels=False, log=lambda m: None)
    differs = [not (torch.equal(ds[i][0], base[i][0]) and torch.equal(ds[i][1], base[i][1]))
               for i in range(8)]
    assert sum(differs) >= 6
    if "hsv_" in next(iter(changes)):  # colour only: boxes unchanged
        assert all(torch.equal(ds[i][1], base[i][1]) for i in range(8))


@pytest.mark.parametrize("key,col", [("fliplr", 2), ("flipud", 3)])
def test_flip_hyps_mirror_labels(baseline, hyp_zero, key, col) -> None:
    base, _ = baseline
    ds = create_dataset(base.scan.images, 64, 4, hyp_zero.replace(**{key: 1.0}), augment=True,
                        cache_labels=False, log=lambda m: None, nc=3)
    for i in range(len(ds)):
        (img, lab, _, _), (img0, lab0, _, _) = ds[i], base[i]
        flipped = lab0.clone()
        flipped[:, col] = 1 - flipped[:, col]
        torch.testing.assert_close(lab, flipped)
        assert torch.equal(img, img0.flip(2 if key == "fliplr" else 1))


def test_mixup_and_copy_paste_hyps(baseline, hyp_zero) -> None:
    base, _ = baseline
    images = base.scan.images
    mk = lambda **kw: create_dataset(images, 64, 4, hyp_zero.replace(mosaic=1.0, **kw),
                                     augment=True, cache_labels=False, log=lambda m: None, nc=3)
    mosaic, mixed, pasted = mk(), mk(mixup=1.0), mk(copy_paste=1.0)
    n_more = 0
    for i in range(8):
        a, b, c = mosaic[i], mixed[i], pasted[i]
        assert not torch.equal(a[0], b[0])
        n_more += len(b[1]) >= len(a[1])
        # box-only labels: copy_paste has no object masks, so it is a no-op
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert n_more == 8


def test_collate_sets_batch_index(baseline) -> None:
    ds, _ = baseline
    items = [ds[i] for i in range(4)]
    imgs, targets, paths, shapes = collate(items)
    assert imgs.shape == (4, 3, 64, 64) and len(paths) == 4 and len(shapes) == 4
    expected = torch.cat([torch.full((len(it[1]),), float(i)) for i, it in enumerate(items)])
    assert torch.equal(targets[:, 0], expected)
    assert torch.equal(targets[:, 1:], torch.cat([it[1][:, 1:] for it in items]))


def test_hsv_sample_matches_cv2_roundtrip_bounds() -> None:
    img = _noise(16, 16)
    out = A.augment_hsv(img, 0.0, 0.0, 0.5, _rng(1))
    v_in = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 2].astype(float)
    v_out = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)[..., 2].astype(float)
    ratio = v_out[v_in > 20] / v_in[v_in > 20]
    assert ratio.min() >= 0.5 - 0.06 and ratio.max() <= 1.5 + 0.06
