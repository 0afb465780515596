"""Ship the dataset and start weights from the driver to trial nodes (Ray object store, cached)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from ..config.load import load_data_config
from ..data.files import default_cache_path, img2label_path, list_image_files
from ..data.scan import LabelScan, files_hash, load_cache, save_cache, scan_labels
from ..errors import DataError, YoloRayError

LOGGER = logging.getLogger("yolo_ray")
DATA_YAML = "data.yaml"
SPLITS = ("train", "val", "test")
READY = ".complete"               # written last inside an extracted copy
CACHE_ENV = "YOLO_RAY_DATA_CACHE"  # per-node cache root; default <tmp>/yolo-ray-data
LABEL_CACHES = "labelcache"       # archive folder of the driver's label scans, one per split
PORTABLE = "shipped"              # hash of a portable scan: re-keyed on the node, never matched


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


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """np.savez's layout with fixed timestamps, so equal scans pack to equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arrays[key], allow_pickle=False)
    return buf.getvalue()


def _portable_scan(images: list[Path], nc: int | None, root: Path) -> bytes | None:
    """The driver's label scan of a split, paths as archive members, in the cache's npz format.

    Uses (and refreshes) the driver's own `<labels dir>.cache` like a local run would.
    """
    scan = scan_labels(images, nc, default_cache_path(images), log=LOGGER.debug)
    portable = dataclasses.replace(
        scan, images=[Path(_member_name(p.resolve(), root)) for p in scan.images],
        labels_dir=Path(_member_name(scan.labels_dir.resolve(), root)))
    with tempfile.TemporaryDirectory(prefix="yolo-ray-scan-") as tmp:
        path = Path(tmp) / "scan.cache"
        if not save_cache(path, portable, PORTABLE, log=LOGGER.warning):
            return None
        with np.load(path, allow_pickle=False) as z:
            return _npz_bytes({k: z[k] for k in z.files})


def _rekeyed(portable: LabelScan, dest: Path, files: list[Path]) -> LabelScan | None:
    """`portable` with this node's absolute paths, in the order `files` lists the images."""
    images = [Path(os.path.abspath(dest / p)) for p in portable.images]
    position = {p: i for i, p in enumerate(files)}
    if any(p not in position for p in images):
        return None
    idx = sorted(range(len(images)), key=lambda i: position[images[i]])
    return dataclasses.replace(
        portable, images=[images[i] for i in idx], labels=[portable.labels[i] for i in idx],
        segments=[portable.segments[i] for i in idx],
        shapes=np.asarray(portable.shapes)[idx].reshape(-1, 2),
        labels_dir=Path(os.path.abspath(dest / portable.labels_dir)), from_cache=False)


def write_label_caches(dest: Path) -> list[Path]:
    """Label caches valid for the extracted copy at `dest`, from the shipped driver scans.

    The cache key hashes absolute paths and mtimes, which only exist after extraction, so
    it is computed here (stat calls only, no image is opened). Returns the caches written;
    a split whose scan is missing or does not match its list is left to the usual scan.
    """
    folder = dest / LABEL_CACHES
    if not folder.is_dir():
        return []
    nc = load_data_config(dest / DATA_YAML).nc
    written = []
    for npz in sorted(folder.glob("*.npz")):
        listing = dest / f"{npz.stem}.txt"
        portable = load_cache(npz, PORTABLE)
        if portable is None or not listing.is_file():
            continue
        files = list_image_files(listing)
        scan = _rekeyed(portable, dest, files)
        cache = default_cache_path(files)
        if scan is not None and save_cache(cache, scan, files_hash(files, nc), LOGGER.warning):
            written.append(cache)
    return written


def pack_dataset(data_yaml: str | Path, weights: str | Path | None = None) -> bytes:
    """A deterministic tar: split images + labels, a data.yaml with relative lists, the weights,
    and the driver's label scan of each split (so no node verifies the labels again).

    Raises:
        ConfigError / DataError: a bad data yaml or a missing split.
    """
    cfg = load_data_config(data_yaml)
    files: dict[str, Path] = {}
    lists: dict[str, list[str]] = {}
    label_caches: dict[str, bytes] = {}
    for split in SPLITS:
        sources = getattr(cfg, split)
        if not sources:
            continue
        names = []
        images = list_image_files(sources)
        members_scan = _portable_scan(images, cfg.nc, cfg.root)
        if members_scan is not None:
            label_caches[f"{LABEL_CACHES}/{split}.npz"] = members_scan
        for img in images:
            img = img.resolve()
            name = _member_name(img, cfg.root)
            files[name] = img
            names.append(f"./{name}")
            label = img2label_path(img)
            if label.is_file():
                files[_member_name(label, cfg.root)] = label
        lists[split] = names
    doc: dict[str, Any] = {"path": ".", "names": list(cfg.names), "nc": cfg.nc}
    members: dict[str, bytes] = dict(label_caches)
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
                _write_label_caches_safely(final)  # before READY: no trial ever rescans
                (final / READY).write_text("ok\n")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final / DATA_YAML, weights


def _write_label_caches_safely(dest: Path) -> None:
    try:
        write_label_caches(dest)
    except (OSError, YoloRayError) as e:  # a cache is an optimisation: trials scan instead
        LOGGER.warning(f"shipped dataset: label caches not written in {dest}: {e}")


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
