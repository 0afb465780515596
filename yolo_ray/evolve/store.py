"""The evolution store: evolve.csv (YOLOv5 format), its JSON-lines sidecar and hyp_evolve.yaml."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import StoreError
from ..train.results import RESULT_KEYS
from .files import (
    SIDECAR_NAME, append_durable, complete_lines, decode_line, json_scalar, parse_sidecar_line,
    read_from, seed_records, truncate_torn, write_text_atomic,
)
from .records import (
    Row, RowTable, TrialRecord, best_row_index, format_header, format_row, hyp_evolve_text,
    make_row, parse_header, parse_values,
)

CSV_NAME = "evolve.csv"
YAML_NAME = "hyp_evolve.yaml"
LOCK_NAME = ".evolve.lock"  # flock target, so agents sharing the folder append in turn

_LOG = logging.getLogger(__name__)
# The stores open in this process, by folder: unpickling one (a restored Tune scheduler or
# searcher) hands back the live object, so the driver sees its write errors and fault hooks.
_OPEN: "weakref.WeakValueDictionary[Path, EvolutionStore]" = weakref.WeakValueDictionary()


class EvolutionStore:
    """evolve.csv + evolve_trials.jsonl + hyp_evolve.yaml in one folder, append-only.

    evolve.csv holds finished and early-stopped trials in YOLOv5's exact format; failed trials
    go to the sidecar only (row None). Early-stopped rows are data but never parents nor the
    "best generation" of hyp_evolve.yaml (their fitness is from a shorter training). Rows are
    kept in memory and only appended bytes are parsed. Writers in several processes take
    turns through a flock on `.evolve.lock`. Pickles as (folder, hyp_keys) and reopens.

    Args:
        directory: output folder (created if needed).
        hyp_keys: hyp columns for a new evolve.csv; an existing file's header must hold the
            same names (order may differ: rows are then written in the file's order).

    Raises:
        StoreError: unwritable folder, malformed csv/sidecar line, or mismatching columns.
    """

    def __init__(self, directory: str | Path, hyp_keys: Sequence[str] | None = None) -> None:
        self.dir = Path(directory)
        self.csv_path = self.dir / CSV_NAME
        self.sidecar_path = self.dir / SIDECAR_NAME
        self.yaml_path = self.dir / YAML_NAME
        self._hyp_keys = tuple(hyp_keys) if hyp_keys is not None else None
        self._mutex = threading.RLock()
        self._lock_fd = self._open_lock()
        self._finalizer = weakref.finalize(self, os.close, self._lock_fd)
        self._columns: list[str] | None = None
        self._csv_offset = self._csv_lineno = 0
        self._side_offset = self._side_lineno = 0
        self._rows: list[Row] = []
        self._fitness = np.empty(64)
        self._eligible = np.zeros(64, dtype=bool)
        self._table: RowTable | None = None
        self._entry_by_row: dict[int, dict[str, Any]] = {}
        self._by_trial: dict[str, dict[str, Any]] = {}
        self._recovered: dict[int, None] = {}  # rows re-labelled after a kill (ordered set)
        # Tests only (cluster/faults.py): called as (point, row, path, bytes) before each
        # write, so a kill, a torn write or a full disk can be staged at an exact point.
        self.fault_hook: Any = None
        self.write_error: StoreError | None = None  # the first failed write (disk full, …)
        try:
            with self._locked(exclusive=True):
                self._open_files()
        except BaseException:
            self.close()
            raise
        _OPEN.setdefault(self.dir.resolve(), self)

    # ----------------------------------------------------------------- lifecycle / locking
    def _open_lock(self) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"evolution output folder {self.dir} is not writable: "
                             f"{e.strerror or e}") from None
        if not os.access(self.dir, os.W_OK):
            os.close(fd)
            raise StoreError(f"evolution output folder {self.dir} is not writable")
        return fd

    def close(self) -> None:
        """Release the lock file descriptor (the store cannot be used afterwards)."""
        if getattr(self, "_lock_fd", -1) >= 0:
            self._finalizer()  # closes the fd once, also when the store is garbage-collected
            self._lock_fd = -1
            if _OPEN.get(self.dir.resolve()) is self:
                del _OPEN[self.dir.resolve()]

    def __reduce__(self) -> tuple[type["EvolutionStore"], tuple[Path, tuple[str, ...] | None]]:
        # Locks and fds do not travel (e.g. a Tune searcher checkpoint): reopen from disk, or
        # share the store this process already has open for the folder.
        return (reopen_store, (self.dir, self._hyp_keys))

    def __enter__(self) -> "EvolutionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        if self._lock_fd < 0:
            raise StoreError(f"evolution store {self.dir} is closed")
        with self._mutex:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # ----------------------------------------------------------------------- reading
    def _open_files(self) -> None:
        """Validate both files completely before changing anything, then repair and reconcile."""
        csv_torn = self._consume_csv()
        side_torn = self._consume_sidecar()
        orphans = [e for e in self._entry_by_row.values() if e["row"] >= len(self._rows)]
        if orphans:  # a writer was killed after the sidecar line, before the csv row
            _LOG.warning("%s: %d entr%s for rows that never reached %s (a killed write); "
                         "ignored, the trial will be recorded when it is retried",
                         self.sidecar_path, len(orphans), "y" if len(orphans) == 1 else "ies",
                         self.csv_path)
        self._check_columns()
        if csv_torn:
            truncate_torn(self.csv_path, self._csv_offset, self._csv_offset + csv_torn)
        if side_torn:
            truncate_torn(self.sidecar_path, self._side_offset, self._side_offset + side_torn)
        self._reconcile()
        self._catch_up_yaml()

    def _catch_up_yaml(self) -> None:
        """Rewrite hyp_evolve.yaml when it lags evolve.csv (a kill between a row and the yaml)."""
        if not self._rows:
            return
        try:
            text = self.yaml_path.read_text()
        except FileNotFoundError:
            text = ""
        except OSError as e:
            raise StoreError(f"{self.yaml_path}: cannot read: {e.strerror or e}") from None
        if f"# Last generation: {len(self._rows) - 1}\n" in text:
            return
        _LOG.warning("%s: behind %s (%d rows; a killed write); rewritten for the best row",
                     self.yaml_path, self.csv_path, len(self._rows))
        self._write_hyp_yaml()

    def _consume_csv(self) -> int:
        """Parse appended complete csv lines; returns the length of a trailing partial line."""
        data = read_from(self.csv_path, self._csv_offset)
        lines, used = complete_lines(data)
        path, new_rows = str(self.csv_path), []
        lineno, columns = self._csv_lineno, self._columns
        for raw in lines:  # parse everything first: a bad line must leave the state unchanged
            lineno += 1
            text = decode_line(raw, self.csv_path, lineno)
            if columns is None:
                columns = parse_header(text, path)
                continue
            new_rows.append(parse_values(text, len(columns), path, lineno))
        self._columns, self._csv_lineno, self._csv_offset = columns, lineno, self._csv_offset + used
        for values in new_rows:
            self._add_row(values)
        return len(data) - used

    def _consume_sidecar(self) -> int:
        """Parse appended sidecar lines (one JSON object each); returns a torn tail's length."""
        data = read_from(self.sidecar_path, self._side_offset)
        lines, used = complete_lines(data)
        entries, lineno = [], self._side_lineno
        for raw in lines:
            lineno += 1
            entries.append(parse_sidecar_line(raw, self.sidecar_path, lineno))
        self._side_lineno, self._side_offset = lineno, self._side_offset + used
        for entry in entries:
            self._add_entry(entry)
        return len(data) - used

    def _add_row(self, values: list[float]) -> None:
        assert self._columns is not None
        i = len(self._rows)
        row = make_row(i, self._columns, values, self._entry_by_row.get(i))
        self._rows.append(row)
        if i >= self._fitness.size:  # amortised growth keeps appends O(1)
            self._fitness = np.resize(self._fitness, 2 * self._fitness.size)
            self._eligible = np.resize(self._eligible, 2 * self._eligible.size)
        self._fitness[i], self._eligible[i] = row.fitness, row.eligible
        self._table = None

    def _add_entry(self, entry: dict[str, Any]) -> None:
        if entry.get("trial_id") is not None:
            self._by_trial[str(entry["trial_id"])] = entry
        i = entry["row"]
        if i is None:
            return
        self._entry_by_row[i] = entry
        if entry.get("trial_id") is None and entry.get("strategy") == "unknown":
            self._recovered[i] = None
        else:
            self._recovered.pop(i, None)
        if i < len(self._rows):  # the csv row is already known: attach its metadata
            old = self._rows[i]
            self._rows[i] = Row(i, old.values, old.hyp, old.fitness, dict(entry))
            self._eligible[i] = self._rows[i].eligible
            self._table = None

    def _check_columns(self) -> None:
        if self._columns is None:
            return
        file_hyp = [c for c in self._columns if c not in RESULT_KEYS]
        if self._hyp_keys is None:
            self._hyp_keys = tuple(file_hyp)
            return
        missing = [k for k in self._hyp_keys if k not in file_hyp]
        extra = [k for k in file_hyp if k not in self._hyp_keys]
        if missing or extra:
            raise StoreError(f"{self.csv_path}: columns do not match this run's hyps "
                             f"(missing: {', '.join(missing) or '-'}; "
                             f"unexpected: {', '.join(extra) or '-'})")

    def _reconcile(self) -> None:
        """A csv row whose sidecar entry was never written (killed in between) gets one."""
        lost = [r.index for r in self._rows if r.index not in self._entry_by_row]
        if not lost:
            return
        _LOG.warning("%s: %d row(s) had no sidecar entry; recording them as recovered",
                     self.sidecar_path, len(lost))
        entries = []
        for i in lost:
            rec = TrialRecord(f"recovered-row-{i}", "finished", self._rows[i].hyp,
                              self._rows[i].values, strategy="unknown",
                              reason="recovered: evolve.csv row had no sidecar entry")
            entries.append(rec.sidecar_entry(i) | {"trial_id": None})
        self._append_sidecar(entries)
        self._consume_sidecar()

    def refresh(self) -> None:
        """Pick up rows appended by other processes (reads only the new bytes)."""
        with self._locked(exclusive=False):
            self._consume_csv()
            self._consume_sidecar()

    def rows(self) -> RowTable:
        """All evolve.csv rows (read by column name) with their sidecar metadata."""
        with self._mutex:
            self.refresh()
            if self._table is None:
                n = len(self._rows)
                self._table = RowTable(self._rows, self._fitness[:n].copy(),
                                       self._eligible[:n].copy())
            return self._table

    def row(self, index: int) -> Row:
        """One evolve.csv row with its metadata; O(1), unlike a rows() snapshot."""
        with self._mutex:
            self.refresh()
            return self._rows[index]

    @property
    def hyp_keys(self) -> tuple[str, ...] | None:
        """The hyp columns (from the constructor or the existing file)."""
        return self._hyp_keys

    def entries(self) -> list[dict[str, Any]]:
        """Latest committed sidecar entry per trial id (failed trials included)."""
        self.refresh()
        return [e for e in map(self._committed, self._by_trial.values()) if e is not None]

    def recovered_rows(self) -> list[Row]:
        """Rows whose sidecar entry was lost to a kill and re-labelled 'recovered'; O(those)."""
        self.refresh()
        return [self._rows[i] for i in self._recovered if i < len(self._rows)]

    def trial_rows(self, trial_ids: Iterable[str]) -> dict[str, int | None]:
        """Committed csv row (None: failed) per recorded trial id; O(ids), not O(entries)."""
        self.refresh()
        out: dict[str, int | None] = {}
        for tid in trial_ids:
            entry = self._committed(self._by_trial.get(str(tid)))
            if entry is not None:
                out[str(tid)] = entry["row"]
        return out

    def _committed(self, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        """`entry` if its trial really was recorded: failed (no row) or owning its csv row.

        An entry whose row never reached evolve.csv (writer killed between the sidecar and the
        csv append), or whose row index was later taken by another trial, is not committed.
        """
        if entry is None or entry["row"] is None:
            return entry
        i = entry["row"]
        return entry if i < len(self._rows) and self._entry_by_row.get(i) is entry else None

    def best_row(self) -> Row | None:
        """The eligible row of maximum fitness (None when there is none)."""
        table = self.rows()
        j = best_row_index(table.fitness, table.eligible)
        return None if j is None else table[j]

    # ----------------------------------------------------------------------- writing
    def append(self, record: TrialRecord) -> int | None:
        """Record one trial; returns its evolve.csv row (None for a failed trial).

        Idempotent: a trial id that already has a csv row (or a failed entry, when the record
        is failed again) is not written twice; the existing row is returned.
        """
        return self._append_many([record])[0]

    def _append_many(self, records: Sequence[TrialRecord]) -> list[int | None]:
        with self._locked(exclusive=True):
            self._sync_for_write()
            out: list[int | None] = []
            csv_lines: list[str] = []
            entries: list[dict[str, Any]] = []
            seen: dict[str, int | None] = {}
            for rec in records:
                done = self._committed(self._by_trial.get(rec.trial_id))
                if rec.trial_id in seen:
                    out.append(seen[rec.trial_id])
                    continue
                if done is not None and (done["row"] is not None or rec.status == "failed"):
                    out.append(done["row"])
                    continue
                row: int | None = None
                if rec.status != "failed":
                    row = len(self._rows) + len(csv_lines)
                    csv_lines.append(self._csv_line(rec))
                seen[rec.trial_id] = row
                out.append(row)
                entries.append(rec.sidecar_entry(row))
            # Sidecar first: a kill in between leaves an entry whose row never reached
            # evolve.csv; it is ignored (`_committed`), so a retry writes the trial once.
            self._append_sidecar(entries)
            self._write_csv(csv_lines)
            self._consume_csv()
            self._consume_sidecar()
            if csv_lines:
                self._write_hyp_yaml()
            return out

    def _sync_for_write(self) -> None:
        """Catch up with other writers and drop a torn tail a killed writer left behind."""
        csv_torn, side_torn = self._consume_csv(), self._consume_sidecar()
        if csv_torn:
            truncate_torn(self.csv_path, self._csv_offset, self._csv_offset + csv_torn)
        if side_torn:
            truncate_torn(self.sidecar_path, self._side_offset, self._side_offset + side_torn)
        self._check_columns()

    def _csv_line(self, rec: TrialRecord) -> str:
        if self._hyp_keys is None:
            raise StoreError(f"{self.csv_path}: no hyp keys given and no existing file to "
                             "take them from")
        missing = [k for k in self._hyp_keys if k not in rec.hyp]
        extra = [k for k in rec.hyp if k not in self._hyp_keys]
        if missing or extra:  # never drop a value silently
            raise StoreError(f"trial {rec.trial_id}: hyp does not match the columns of "
                             f"{self.csv_path} (missing: {', '.join(missing) or '-'}; "
                             f"unexpected: {', '.join(extra) or '-'})")
        by_name = dict(zip(RESULT_KEYS, rec.result_values())) | dict(rec.hyp)
        columns = self._columns or list(RESULT_KEYS + self._hyp_keys)
        return format_row([by_name[c] for c in columns])

    def _write_csv(self, lines: list[str]) -> None:
        if not lines:
            return
        header = ""
        if self._columns is None:  # new (or empty) file: header and rows in one write
            assert self._hyp_keys is not None
            header = format_header(RESULT_KEYS + self._hyp_keys)
        data = (header + "".join(lines)).encode("utf-8")
        try:
            self._fault("store.csv", len(self._rows), self.csv_path, data)
            append_durable(self.csv_path, data)
            self._fault("store.after_csv", len(self._rows), self.csv_path, data)
        except OSError as e:
            raise self._failed(f"{self.csv_path}: cannot append: {e.strerror or e}") from None

    def _append_sidecar(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        text = "".join(json.dumps(e, default=json_scalar) + "\n" for e in entries)
        try:
            self._fault("store.sidecar", entries[0]["row"], self.sidecar_path, text.encode())
            append_durable(self.sidecar_path, text.encode("utf-8"))
        except OSError as e:
            raise self._failed(f"{self.sidecar_path}: cannot append: {e.strerror or e}") from None

    def _write_hyp_yaml(self) -> None:
        """Rewrite hyp_evolve.yaml for the current best row (YOLOv5's header, §1.4)."""
        j = best_row_index(self._fitness[: len(self._rows)], self._eligible[: len(self._rows)])
        if j is None:
            return
        try:
            self._fault("store.yaml", j, self.yaml_path, b"")
            write_text_atomic(self.yaml_path, hyp_evolve_text(self._rows[j], len(self._rows)))
        except OSError as e:
            raise self._failed(f"{self.yaml_path}: cannot write: {e.strerror or e}") from None

    def _failed(self, message: str) -> StoreError:
        """A write error, remembered so a caller that swallowed it (Tune) can re-raise it."""
        error = StoreError(message)
        self.write_error = self.write_error or error
        return error

    def _fault(self, point: str, row: int | None, path: Path, data: bytes) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point, row, path, data)

    def seed_from_csv(self, path: str | Path, drop: Sequence[str] = ()) -> int:
        """Import every row of a (YOLOv5-made) evolve.csv; returns how many rows were added.

        Columns are matched by name; the file must have exactly this store's hyp columns,
        apart from `drop` (e.g. YOLOv5's `anchors` when evolving as --noautoanchor).
        Importing the same file again adds nothing (trial ids derive from the line contents).
        """
        src = Path(path)
        try:
            data = src.read_bytes()
        except OSError as e:
            raise StoreError(f"{src}: cannot read evolve.csv to seed from: "
                             f"{e.strerror or e}") from None
        self._hyp_keys, records = seed_records(data, str(src), self._hyp_keys, drop)
        before = len(self._rows)
        self._append_many(records)
        return len(self._rows) - before


def reopen_store(directory: Path, hyp_keys: Sequence[str] | None = None) -> EvolutionStore:
    """The store this process has open for `directory`, else a newly opened one (unpickling)."""
    live = _OPEN.get(Path(directory).resolve())
    if live is not None and live._lock_fd >= 0 and (
            hyp_keys is None or live.hyp_keys is None or tuple(hyp_keys) == live.hyp_keys):
        return live
    return EvolutionStore(directory, hyp_keys)


__all__ = ["EvolutionStore", "reopen_store", "TrialRecord", "Row", "RowTable", "CSV_NAME", "SIDECAR_NAME",
           "YAML_NAME", "LOCK_NAME"]
