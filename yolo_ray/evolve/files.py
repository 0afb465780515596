"""File helpers for the evolution store: durable appends, atomic rewrites, evolve.csv reading."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import StoreError
from ..train.results import RESULT_KEYS
from .records import Row, TrialRecord, format_row, make_row, parse_header, parse_values

SIDECAR_NAME = "evolve_trials.jsonl"

_LOG = logging.getLogger(__name__)


def append_durable(path: Path, data: bytes) -> None:
    """Append `data` with one os.write on an O_APPEND fd, then fsync (and the folder if new)."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop only for safety
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temporary file, fsync it, then os.replace it into place (readers never see half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """Split off complete lines; returns them and the number of bytes they span."""
    end = data.rfind(b"\n") + 1
    return (data[:end].split(b"\n")[:-1] if end else []), end


def truncate_torn(path: Path, keep: int, size: int) -> None:
    """Drop a last line that has no newline (a write cut by a kill); complete rows stay."""
    _LOG.warning("%s: removing a torn last line (%d bytes without a newline)", path, size - keep)
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())


def read_evolve_csv_bytes(data: bytes, path: str) -> tuple[list[str], list[list[float]]]:
    """Parse a whole evolve.csv (ours or YOLOv5's); a torn last line is ignored."""
    lines, _ = complete_lines(data)
    if not lines:
        raise StoreError(f"{path}: empty evolve.csv (no header line)")
    try:
        text = [raw.decode("utf-8") for raw in lines]
    except UnicodeDecodeError:
        raise StoreError(f"{path}: not UTF-8 text") from None
    columns = parse_header(text[0], path)
    return columns, [parse_values(t, len(columns), path, i + 2) for i, t in enumerate(text[1:])]


def read_evolve_csv(path: str | Path) -> tuple[list[str], list[Row]]:
    """Read an evolve.csv by column name, with the sidecar beside it when there is one."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise StoreError(f"{p}: cannot read: {e.strerror or e}") from None
    columns, values = read_evolve_csv_bytes(data, str(p))
    meta: Mapping[int, Mapping[str, Any]] = {}
    side = p.with_name(SIDECAR_NAME)
    if side.is_file():
        meta = _sidecar_by_row(side)
    return columns, [make_row(i, columns, v, meta.get(i)) for i, v in enumerate(values)]


def _sidecar_by_row(path: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            _LOG.warning("%s: line %d: skipping a line that is not JSON", path, lineno)
            continue
        if isinstance(entry, dict) and isinstance(entry.get("row"), int):
            out[entry["row"]] = entry
    return out


def decode_line(raw: bytes, path: Path, lineno: int) -> str:
    """UTF-8 text of one line; StoreError naming the file and line otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{path}: line {lineno}: not UTF-8 text") from None


def parse_sidecar_line(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    """One sidecar entry (a JSON object with at least row, trial_id and status)."""
    where = f"{path}: line {lineno}"
    try:
        entry = json.loads(decode_line(raw, path, lineno))
    except json.JSONDecodeError as e:
        raise StoreError(f"{where}: invalid JSON: {e.msg}") from None
    if not isinstance(entry, dict) or not {"row", "trial_id", "status"} <= set(entry):
        raise StoreError(f"{where}: a sidecar entry needs row, trial_id and status")
    row = entry["row"]
    if row is not None and (isinstance(row, bool) or not isinstance(row, int) or row < 0):
        raise StoreError(f"{where}: row must be a non-negative integer or null, got {row!r}")
    return entry


def json_scalar(value: object) -> object:
    """numpy scalars (np.int64 seeds, np.float32 times) become plain JSON numbers."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def read_from(path: Path, offset: int) -> bytes:
    """The bytes of `path` after `offset` (nothing when the file does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror or e}") from None


def seed_records(data: bytes, source: str, hyp_keys: Sequence[str] | None,
                 drop: Sequence[str] = ()) -> tuple[tuple[str, ...], list[TrialRecord]]:
    """The hyp columns and one "seed" TrialRecord per row of an evolve.csv's bytes.

    Columns are matched by name; the file must have exactly `hyp_keys` (when given) apart
    from `drop`. Trial ids derive from the line contents, so importing twice adds nothing.
    """
    columns, rows = read_evolve_csv_bytes(data, source)
    file_hyp = [c for c in columns if c not in RESULT_KEYS and c not in drop]
    keys = tuple(hyp_keys) if hyp_keys is not None else tuple(file_hyp)
    extra = [c for c in file_hyp if c not in keys]
    if extra:
        raise StoreError(f"{source}: hyp column(s) not in this run's search space/hyps: "
                         f"{', '.join(extra)}")
    missing = [k for k in keys if k not in file_hyp]
    if missing:
        raise StoreError(f"{source}: lacks hyp column(s) of this run: {', '.join(missing)}")
    records = []
    for i, values in enumerate(rows):
        by_name = dict(zip(columns, values))
        digest = hashlib.sha1(format_row(values).encode()).hexdigest()[:12]
        records.append(TrialRecord(
            f"seed-{digest}-{i}", "finished", {k: by_name[k] for k in keys},
            [by_name[k] for k in RESULT_KEYS], strategy="seed",
            reason=f"seeded from {source} row {i}"))
    return keys, records
