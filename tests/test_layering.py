"""Dependency direction: config → data → models → train → evolve → cluster → cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "yolo_ray"
LAYERS = {"__init__": 0, "errors": 0, "config": 1, "data": 2, "models": 3, "train": 4,
          "evolve": 5, "cluster": 6, "cli": 7}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Absolute module names imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    pkg = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


FILES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_downwards(path: Path) -> None:
    me = _layer(_module_name(path))
    for mod in _imports(path):
        if mod.startswith("yolo_ray.") and mod.split(".")[1] in LAYERS:
            assert _layer(mod) <= me, f"{path.name} (layer {me}) imports higher layer {mod}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PKG)))
def test_only_cluster_imports_ray(path: Path) -> None:
    if _module_name(path).startswith("yolo_ray.cluster"):
        return
    assert not any(m == "ray" or m.startswith("ray.") for m in _imports(path)), path


def _closure(module: str, seen: set[str]) -> set[str]:
    """Every module reachable from `module` through yolo_ray's own imports."""
    if module in seen:
        return seen
    seen.add(module)
    rel = Path(*module.split("."))
    for cand in (PKG.parent / rel.with_suffix(".py"), PKG.parent / rel / "__init__.py"):
        if cand.is_file():
            for imp in _imports(cand):
                if imp.startswith("yolo_ray"):
                    _closure(imp, seen)
                else:
                    seen.add(imp)
    return seen


def test_evolve_core_imports_neither_torch_nor_ray() -> None:
    mods: set[str] = set()
    for path in (PKG / "evolve").glob("*.py"):
        mods |= _closure(_module_name(path), set())
    bad = sorted(m for m in mods if m.split(".")[0] in ("torch", "ray", "torchvision"))
    assert not bad, f"evolve/ reaches {bad}"


def test_layering_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("from ..cluster import launch\nimport torch\n")
    found = _imports(bad, "yolo_ray.data.x")
    assert "yolo_ray.cluster" in found and "torch" in found
    assert any(_layer(m) > _layer("yolo_ray.data.x") for m in found if m.startswith("yolo_ray."))
