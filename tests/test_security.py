"""Static guarantees: no unsafe deserialisation, no eval, dashboards on localhost only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "yolo_ray"
SOURCES = sorted(PKG.rglob("*.py"))


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    f = call.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_unsafe_loading_or_eval(path: Path) -> None:
    for call in _calls(path):
        name = _name(call)
        kw = {k.arg: k.value for k in call.keywords}
        if name.endswith("torch.load") or name == "load" and "map_location" in kw:
            wo = kw.get("weights_only")
            assert isinstance(wo, ast.Constant) and wo.value is True, \
                f"{path.name}:{call.lineno}: torch.load without weights_only=True"
        bare = isinstance(call.func, ast.Name) and call.func.id in ("eval", "exec")
        assert not bare and name != "builtins.eval", f"{path.name}:{call.lineno}: {name}"
        assert name not in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load"), \
            f"{path.name}:{call.lineno}: {name}"
        if name.endswith("np.load") or name.endswith("numpy.load"):
            ap = kw.get("allow_pickle")
            assert ap is None or (isinstance(ap, ast.Constant) and ap.value is False), \
                f"{path.name}:{call.lineno}: np.load with allow_pickle"


def test_only_the_restricted_unpickler_subclasses_unpickler() -> None:
    users = [p.name for p in SOURCES if re.search(r"pickle\.Unpickler\b", p.read_text())]
    assert users == ["weights.py"]
    text = (PKG / "models" / "weights.py").read_text()
    assert "def find_class" in text  # the allow-list hook


def test_embedded_ray_keeps_the_dashboard_local() -> None:
    text = (PKG / "cluster" / "launch.py").read_text()
    inits = re.findall(r"ray\.init\(([^)]*)\)", text)
    # The embedded default starts its own Ray (address="local", never an existing cluster).
    local = [a for a in inits if 'address="local"' in a]
    assert len(local) == 1 and all("include_dashboard=False" in a and '"127.0.0.1"' in a for a in local)
