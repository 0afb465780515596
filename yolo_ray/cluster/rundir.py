"""Evolution run folders: fresh exp/exp2 names, --resume lookup and the saved request file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..train.assemble import increment_path

from ..errors import ConfigError
from ..evolve.files import write_text_atomic
from .request import EvolveRequest

RUN_FILE = "evolve_run.yaml"   # the resolved request + target row count, for --resume
DEFAULT_PROJECT = "runs/evolve"


def increment_run_dir(base: Path, exist_ok: bool = False) -> Path:
    """runs/evolve/exp, exp2, exp3 … (YOLOv5's naming), or `base` itself when exist_ok."""
    return increment_path(base, exist_ok)


def make_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """Create a fresh (or, with exist_ok, reuse the) run folder; absolute path returned.

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    path = increment_run_dir(Path(project) / name, exist_ok).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output folder {path} is not writable: {e.strerror or e}") from None
    return path


def find_run(spec: str, project: str | Path = DEFAULT_PROJECT) -> Path:
    """The run folder that `--resume SPEC` names: a path, or a name under `project`.

    Raises:
        ConfigError: no such run, or the folder holds no evolution run file.
    """
    candidates = [Path(spec), Path(project) / spec]
    for path in candidates:
        if (path / RUN_FILE).is_file():
            return path.resolve()
    known = sorted(p.parent.name for p in Path(project).glob(f"*/{RUN_FILE}"))
    hint = f"; runs in {project}: {', '.join(known)}" if known else f"; {project} has no runs"
    if any(p.is_dir() for p in candidates):
        raise ConfigError(f"--resume {spec}: {next(p for p in candidates if p.is_dir())} is not "
                          f"an evolution run (no {RUN_FILE}){hint}")
    raise ConfigError(f"--resume {spec}: no evolution run named {spec!r}{hint}")


def save_run_file(request: EvolveRequest, target_rows: int) -> Path:
    """Write the resolved request and the run's final row count into the run folder."""
    data = {"target_rows": int(target_rows), "request": request.to_dict()}
    path = request.run_dir / RUN_FILE
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
    return path


def load_run_file(run_dir: Path) -> tuple[EvolveRequest, int]:
    """The request and target row count saved by `save_run_file`.

    Raises:
        ConfigError: unreadable or malformed file.
    """
    path = run_dir / RUN_FILE
    try:
        data: Any = yaml.safe_load(path.read_text())
        request = EvolveRequest.from_dict(data["request"], str(path))
        return request.replace(run_dir=run_dir.resolve()), int(data["target_rows"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the saved evolution run: {e}") from None
