"""Search space: meta.yaml equals spec §1.1, validation errors, hyp checks and extra genes."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_ray.config.schema import HYP_KEYS
from yolo_ray.errors import ConfigError
from yolo_ray.evolve.space import (
    DEFAULT_META,
    Gene,
    add_default_anchors,
    check_hyp_against_space,
    load_search_space,
    with_freeze_gene,
    with_prune_gene,
    zero_genes,
)

# Spec §1.1, classic column: hyp -> (gain, lower, upper), in the table's order.
SPEC_META = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98),
    "weight_decay": (1, 0.0, 0.001), "warmup_epochs": (1, 0.0, 5.0),
    "warmup_momentum": (1, 0.0, 0.95), "warmup_bias_lr": (1, 0.0, 0.2),
    "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0),
    "obj": (1, 0.2, 4.0), "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7),
    "anchor_t": (1, 2.0, 8.0), "anchors": (2, 2.0, 10.0), "fl_gamma": (0, 0.0, 2.0),
    "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9),
    "degrees": (1, 0.0, 45.0), "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9),
    "shear": (1, 0.0, 10.0), "perspective": (0, 0.0, 0.001), "flipud": (1, 0.0, 1.0),
    "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0), "mixup": (1, 0.0, 1.0),
    "copy_paste": (1, 0.0, 1.0),
}


def _meta(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "meta.yaml"
    p.write_text(text)
    return p


def test_meta_yaml_equals_spec_table() -> None:
    space = load_search_space(DEFAULT_META)
    assert space.names() == tuple(SPEC_META)
    for name, (gain, lower, upper) in SPEC_META.items():
        assert space[name] == Gene(gain, lower, upper, "float"), name
    assert set(space.hyp_names()) == set(HYP_KEYS) | {"anchors"}
    assert space.extra_names() == ()


def test_lower_above_upper_names_file_and_gene(tmp_path: Path) -> None:
    p = _meta(tmp_path, "lr0: [1, 0.5, 0.1]\n")
    with pytest.raises(ConfigError, match=r"meta\.yaml.*'lr0'.*lower limit 0.5 > upper"):
        load_search_space(p)


def test_unknown_gene_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"meta\.yaml.*unknown gene 'lr_zero'.*lr0"):
        load_search_space(_meta(tmp_path, "lr_zero: [1, 0.0, 1.0]\n"))


@pytest.mark.parametrize("text", ["box: [1, low, 0.2]\n", "box: [yes, 0.0, 0.2]\n",
                                  "box: [1, 0.0, .nan]\n", "box: [1, 0.0]\n", "box: 3\n"])
def test_non_numeric_or_malformed_values(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"meta\.yaml.*gene 'box'"):
        load_search_space(_meta(tmp_path, text))


def test_negative_gain_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gain must be >= 0"):
        load_search_space(_meta(tmp_path, "box: [-1, 0.0, 0.2]\n"))


def test_yaml11_exponent_strings_and_mapping_form(tmp_path: Path) -> None:
    # PyYAML reads `1e-5` as a string; it is still a number.
    text = "lr0: [1, 1e-5, 1e-1]\nfreeze: {gain: 1, lower: 0, upper: 24}\nbox: [1, 0.02, 0.2]\n"
    space = load_search_space(_meta(tmp_path, text))
    assert space["lr0"] == Gene(1.0, 1e-5, 0.1)
    assert space.names() == ("lr0", "box", "freeze")  # extra genes after the hyp genes
    assert space["freeze"].kind == "int"


def test_check_hyp_against_space(space, base_hyp) -> None:
    # scratch-low comments out anchors: YOLOv5 inserts anchors=3 as the last key.
    with pytest.raises(ConfigError, match="anchors"):
        check_hyp_against_space(base_hyp, space)
    hyp = add_default_anchors(base_hyp, space)
    assert list(hyp) == list(HYP_KEYS) + ["anchors"] and hyp["anchors"] == 3.0
    check_hyp_against_space(hyp, space)
    del hyp["lr0"]
    with pytest.raises(ConfigError, match="lr0"):
        check_hyp_against_space(hyp, space)
    # --noautoanchor: drop anchors from the space, nothing is appended.
    assert "anchors" not in add_default_anchors(base_hyp, space.without("anchors"))


def test_zero_genes_scratch_low(space, base_hyp) -> None:
    # Spec §1.1: with scratch-low, degrees, shear, flipud, mixup and copy_paste cannot move.
    hyp = add_default_anchors(base_hyp, space)
    assert zero_genes(hyp, space) == ["degrees", "shear", "flipud", "mixup", "copy_paste"]


def test_extra_genes_are_appended_after_hyp_genes(space) -> None:
    s = with_prune_gene(with_freeze_gene(space))
    assert s.names()[-2:] == ("freeze", "prune")
    assert s.hyp_names() == space.hyp_names()
    assert s["freeze"] == Gene(1.0, 0.0, 24.0, "int")
    assert s["prune"] == Gene(1.0, 0.0, 0.9, "float")
    assert zero_genes({"freeze": 0, "prune": 0.3}, s) == ["freeze"]
    with pytest.raises(ConfigError, match="lower limit"):
        with_prune_gene(space, lower=0.9, upper=0.1)
