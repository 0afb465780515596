"""Config loaders: hyp, data and model yaml files parse into dataclasses or fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from yolo_ray.config.load import (CONFIGS_DIR, load_data_config, load_hyp, load_model_yaml,
                                  resolve_model_cfg)
from yolo_ray.config.schema import HYP_KEYS, Hyp
from yolo_ray.errors import ConfigError

from ..conftest import COCO128_YAML, requires_shared


def test_scratch_low_order_and_values() -> None:
    hyp = load_hyp()
    assert hyp.keys() == HYP_KEYS  # evolve.csv columns follow this order
    assert (hyp.lr0, hyp.lrf, hyp.momentum, hyp.mosaic, hyp["fliplr"]) == (0.01, 0.01, 0.937, 1.0, 0.5)
    assert "anchors" not in hyp


@pytest.mark.parametrize("name,key,value", [
    ("hyp.scratch-med.yaml", "mixup", 0.1), ("hyp.scratch-high.yaml", "copy_paste", 0.1),
    ("hyp.no-augmentation.yaml", "mosaic", 0.0)])
def test_shipped_hyp_files(name: str, key: str, value: float) -> None:
    assert load_hyp(CONFIGS_DIR / "hyps" / name)[key] == value


def test_unknown_hyp_key_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "hyp.yaml"
    p.write_text((CONFIGS_DIR / "hyps" / "hyp.scratch-low.yaml").read_text() + "lr00: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{p}: unknown hyperparameter 'lr00'; valid keys"):
        load_hyp(p)


def test_hyp_missing_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing hyperparameter"):
        Hyp.from_mapping({"lr0": 0.01})
    with pytest.raises(ConfigError, match="'lr0' must be a number"):
        Hyp.from_mapping({**load_hyp().as_dict(), "lr0": "fast"})
    p = tmp_path / "broken.yaml"
    p.write_text("lr0: 0.01\n  lrf: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+: invalid YAML"):
        load_hyp(p)


def test_hyp_replace_keeps_order() -> None:
    hyp = load_hyp().replace(lr0=0.02, anchors=3.0)
    assert hyp.lr0 == 0.02 and hyp.keys()[-1] == "anchors" and hyp.keys()[0] == "lr0"


def _data_yaml(tmp_path: Path, body: str) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    p = tmp_path / "data.yaml"
    p.write_text(body)
    return p


def test_data_yaml_relative_path_and_names(tmp_path: Path) -> None:
    p = _data_yaml(tmp_path, "path: .\ntrain: images\nval: images\nnames: {0: a, 1: b}\n")
    cfg = load_data_config(p)
    assert cfg.root == tmp_path.resolve() and cfg.names == ("a", "b") and cfg.nc == 2
    assert cfg.train == ((tmp_path / "images").resolve(),)


@pytest.mark.parametrize("body,message", [
    ("train: images\nnames: [a]\n", "missing required key(s): val"),
    ("train: images\nval: nowhere\nnames: [a]\n", "val path does not exist"),
    ("path: missing_root\ntrain: images\nval: images\nnames: [a]\n", "dataset root 'path' does not exist"),
    ("train: images\nval: images\nnames: {0: a, 2: b}\n", "'names' keys must be the class ids"),
    ("train: images\nval: images\nnames: [a, b]\nnc: 3\n", "nc is 3 but 2 names"),
    ("train: []\nval: images\nnames: [a]\n", "key 'train' is an empty list"),
    ("train: images\nval: images\nnames: []\n", "'names' is empty"),
])
def test_bad_data_yaml(tmp_path: Path, body: str, message: str) -> None:
    p = _data_yaml(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_data_config(p)
    assert str(p) in str(e.value) and message in str(e.value)


@requires_shared(COCO128_YAML)
def test_coco128_yaml() -> None:
    cfg = load_data_config(COCO128_YAML)
    assert cfg.nc == 80 and cfg.names[0] == "person" and cfg.train == cfg.val


def test_model_short_names_and_errors() -> None:
    assert resolve_model_cfg("yolov5s").name == "yolov5s.yaml"
    assert load_model_yaml("yolov5n.yaml")["width_multiple"] == 0.25
    with pytest.raises(ConfigError, match="model config not found: yolov5q"):
        resolve_model_cfg("yolov5q")


def _yaml_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                        st.text(max_size=8), st.sampled_from([".", "images", "missing", "/"]))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.integers(0, 3), st.text(max_size=5)),
                                                     inner, max_size=3)), max_leaves=6)


def test_fuzz_data_yaml_only_clear_errors(tmp_path: Path) -> None:
    """Any mapping in a data yaml either loads or raises ConfigError (never a deep traceback)."""
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    (tmp_path / "images").mkdir(exist_ok=True)
    keys = st.sampled_from(["path", "train", "val", "test", "names", "nc", "download", "x"])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.dictionaries(keys, _yaml_values(), max_size=6))
    def check(doc: dict) -> None:
        p = tmp_path / "fuzz.yaml"
        p.write_text(yaml.safe_dump(doc))
        try:
            cfg = load_data_config(p)
        except ConfigError as e:
            assert str(p) in str(e) or "not found" in str(e)
        else:
            assert cfg.nc == len(cfg.names) > 0 and cfg.train and cfg.val

    check()
