"""Ship the dataset and start weights from the driver to trial nodes (Ray object store, cached)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from ..config.load import load_data_config
from ..data.files import img2label_path, list_image_files
from ..errors import DataError

DATA_YAML = "data.yaml"
SPLITS = ("train", "val", "test")
READY = ".complete"               # written last inside an extracted copy
CACHE_ENV = "YOLO_RAY_DATA_CACHE"  # per-node cache root; default <tmp>/yolo-ray-data


@dataclass(frozen=True)
class ShippedData:
    """A packed dataset (+ weights) and its content hash, as passed to trials."""

    blob: bytes
    digest: str
    weights_name: str | None = None   # archive member of the weights, if any


def default_cache_root() -> Path:
    """Where a node keeps extracted copies: $YOLO_RAY_DATA_CACHE or <tmp>/yolo-ray-data."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "yolo-ray-data")


def _member_name(path: Path, root: Path) -> str:
    """Archive name of a dataset file: relative to the data root, else mirrored under ext/."""
    try:
        rel = path.relative_to(root)
        return str(PurePosixPath("files", *rel.parts))
    except ValueError:
        return str(PurePosixPath("ext", *path.parts[1:]))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def pack_dataset(data_yaml: str | Path, weights: str | Path | None = None) -> bytes:
    """A deterministic tar: split images + labels, a data.yaml with relative lists, the weights.

    Raises:
        ConfigError / DataError: a bad data yaml or a missing split.
    """
    cfg = load_data_config(data_yaml)
    files: dict[str, Path] = {}
    lists: dict[str, list[str]] = {}
    for split in SPLITS:
        sources = getattr(cfg, split)
        if not sources:
            continue
        names = []
        for img in list_image_files(sources):
            img = img.resolve()
            name = _member_name(img, cfg.root)
            files[name] = img
            names.append(f"./{name}")
            label = img2label_path(img)
            if label.is_file():
                files[_member_name(label, cfg.root)] = label
        lists[split] = names
    doc: dict[str, Any] = {"path": ".", "names": list(cfg.names), "nc": cfg.nc}
    members: dict[str, bytes] = {}
    for split, names in lists.items():
        members[f"{split}.txt"] = ("\n".join(names) + "\n").encode()
        doc[split] = f"{split}.txt"
    members[DATA_YAML] = yaml.safe_dump(doc, sort_keys=True).encode()
    if weights:
        members[f"weights/{Path(weights).name}"] = Path(weights).read_bytes()
    for name, path in files.items():
        members[name] = path.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            _add_bytes(tar, name, members[name])
    return buf.getvalue()


def digest_of(blob: bytes) -> str:
    """Content hash of a packed blob (the cache key on every node)."""
    return hashlib.sha256(blob).hexdigest()[:32]


def ship(data_yaml: str | Path, weights: str | Path | None = None) -> ShippedData:
    """Pack once on the driver: the blob, its hash and the weights' member name."""
    blob = pack_dataset(data_yaml, weights)
    return ShippedData(blob, digest_of(blob), f"weights/{Path(weights).name}" if weights else None)


def _check_member(m: tarfile.TarInfo) -> None:
    p = PurePosixPath(m.name)
    if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
        raise DataError(f"shipped dataset: unsafe archive member {m.name!r}")


def _extract(blob: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m)
        for m in members:
            target = dest / m.name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    (dest / READY).write_text("ok\n")


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) so one trial per node extracts; others wait."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialize(blob: bytes, digest: str, cache_root: str | Path | None = None,
                weights_name: str | None = None) -> tuple[Path, Path | None]:
    """Extract `blob` once per node into `<cache_root>/<digest>/`; later calls reuse it.

    Returns (data yaml, weights path or None). Extraction goes to a temp folder that is
    renamed into place, under a file lock, so concurrent trials never see a partial copy.

    Raises:
        DataError: the blob does not match `digest`, or it holds unsafe member names.
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / digest
    weights = final / weights_name if weights_name else None
    if (final / READY).is_file():
        return final / DATA_YAML, weights
    root.mkdir(parents=True, exist_ok=True)
    with _node_lock(root / f"{digest}.lock"):
        if not (final / READY).is_file():
            if digest_of(blob) != digest:
                raise DataError(f"shipped dataset: content hash mismatch for {digest}")
            tmp = root / f".tmp-{digest}-{uuid.uuid4().hex[:8]}"
            try:
                tmp.mkdir()
                _extract(blob, tmp)
                if final.exists():  # a stale, incomplete copy (crash mid-way, no lock)
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final / DATA_YAML, weights


def shipped_for(request: Any) -> ShippedData | None:
    """The driver's pack for `request` (None unless request.ship_data)."""
    if not getattr(request, "ship_data", False):
        return None
    return ship(request.data, request.weights)


def localize(settings: Any, shipped: ShippedData | None) -> Any:
    """TrainSettings pointed at this node's extracted copy (unchanged when nothing shipped)."""
    if shipped is None:
        return settings
    data, weights = materialize(shipped.blob, shipped.digest, weights_name=shipped.weights_name)
    return settings.replace(data=str(data),
                            weights=str(weights) if weights is not None else settings.weights)
