"""Read YAML files into the config dataclasses; the only file access in the config layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .schema import DataConfig, Hyp

# configs/ sits at the repository root, beside the package (installed editable).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
MODEL_NAMES = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")
DEFAULT_HYP = CONFIGS_DIR / "hyps" / "hyp.scratch-low.yaml"


def load_yaml(path: str | Path, what: str = "yaml") -> Any:
    """Parse a YAML file; missing files and syntax errors name the file (and line)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read {what} file: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{p}:{where}: invalid YAML: {problem}") from None


def load_hyp(path: str | Path | None = None) -> Hyp:
    """Load a YOLOv5 hyp yaml (default: hyp.scratch-low.yaml)."""
    p = Path(path) if path else DEFAULT_HYP
    raw = load_yaml(p, "hyp")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a hyp file must be a mapping of name: value")
    return Hyp.from_mapping(raw, source=str(p))


def resolve_model_cfg(cfg: str | Path) -> Path:
    """Map a short name ('yolov5s', 'yolov5s.yaml') or a path to an existing model yaml."""
    p = Path(cfg)
    if p.is_file():
        return p.resolve()
    stem = p.name[:-5] if p.name.endswith(".yaml") else p.name
    candidate = CONFIGS_DIR / "models" / f"{stem}.yaml"
    if candidate.is_file() and len(p.parts) == 1:
        return candidate
    raise ConfigError(
        f"model config not found: {cfg} (give a yaml path or one of {', '.join(MODEL_NAMES)})")


def load_model_yaml(cfg: str | Path) -> dict:
    """Read a YOLOv5 model yaml into a dict (validated later by models.parse)."""
    p = resolve_model_cfg(cfg)
    raw = load_yaml(p, "model")
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: a model yaml must be a mapping")
    raw = dict(raw)
    raw.setdefault("yaml_file", str(p))
    return raw


def _as_paths(value: Any, root: Path, key: str, source: Path) -> tuple[Path, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ConfigError(f"{source}: key {key!r} is an empty list; give at least one path")
    out = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{source}: key {key!r} must be a path or a list of paths, got {item!r}")
        p = Path(item)
        p = p if p.is_absolute() else root / p
        if not p.exists():
            raise ConfigError(f"{source}: {key} path does not exist: {p}")
        out.append(p.resolve())
    return tuple(out)


def _names(raw: Any, source: Path) -> tuple[str, ...]:
    if isinstance(raw, list):
        return tuple(str(n) for n in raw)
    if isinstance(raw, dict):
        keys = list(raw)
        if not all(isinstance(k, int) for k in keys) or sorted(keys) != list(range(len(keys))):
            raise ConfigError(f"{source}: 'names' keys must be the class ids 0..nc-1, got {keys}")
        return tuple(str(raw[i]) for i in range(len(keys)))
    raise ConfigError(f"{source}: 'names' must be a list or a {{id: name}} mapping")


def load_data_config(path: str | Path) -> DataConfig:
    """Parse a YOLOv5 data yaml; `path:` is relative to the yaml's folder."""
    source = Path(path).resolve()
    raw = load_yaml(source, "data")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a data yaml must be a mapping")
    missing = [k for k in ("train", "val", "names") if k not in raw]
    if missing:
        raise ConfigError(f"{source}: missing required key(s): {', '.join(missing)}")
    root = Path(str(raw.get("path") or "."))
    root = root if root.is_absolute() else source.parent / root
    if not root.is_dir():
        raise ConfigError(f"{source}: dataset root 'path' does not exist: {root}")
    names = _names(raw["names"], source)
    if "nc" in raw and raw["nc"] != len(names):
        raise ConfigError(f"{source}: nc is {raw['nc']} but {len(names)} names are given")
    if not names:
        raise ConfigError(f"{source}: 'names' is empty")
    test = _as_paths(raw["test"], root, "test", source) if raw.get("test") else ()
    return DataConfig(
        source=source, root=root.resolve(),
        train=_as_paths(raw["train"], root, "train", source),
        val=_as_paths(raw["val"], root, "val", source),
        test=test, names=names,
    )
