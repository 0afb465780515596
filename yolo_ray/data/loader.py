"""DataLoader construction: collate, seeded shuffling, train/val loader helpers."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config.schema import DataConfig, Hyp
from ..errors import ConfigError
from .dataset import Shapes, YoloDataset
from .files import Sources, default_cache_path, list_image_files
from .scan import scan_labels

Batch = tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple[Shapes, ...]]
Log = Callable[[str], None]


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, str, Shapes]]) -> Batch:
    """Stack images (B, 3, H, W) and concatenate labels (N, 6) with column 0 = batch index."""
    imgs, labels, paths, shapes = zip(*batch)
    counts = torch.tensor([len(lb) for lb in labels])
    targets = torch.cat(labels, 0)
    targets[:, 0] = torch.repeat_interleave(torch.arange(len(labels), dtype=targets.dtype), counts)
    return torch.stack(imgs, 0), targets, paths, shapes


def _worker_init(_: int) -> None:
    # Worker processes are already one per core; cv2's own thread pool would oversubscribe.
    cv2.setNumThreads(0)


def build_dataloader(dataset: YoloDataset, batch_size: int, shuffle: bool, workers: int,
                     seed: int = 0, pin_memory: bool | None = None,
                     sampler: Sampler | None = None) -> DataLoader:
    """A DataLoader with YOLOv5's worker count and a seeded shuffle.

    workers = min(cpu count, batch_size if > 1 else 0, workers); workers stay alive between
    epochs (`persistent_workers`); memory is pinned only when CUDA is available. A `sampler`
    (e.g. image-weighted indices) replaces shuffling.
    """
    nw = min(os.cpu_count() or 1, batch_size if batch_size > 1 else 0, max(0, workers))
    generator = torch.Generator()
    generator.manual_seed(int(seed))  # our own generator, never the global torch RNG
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
        sampler=sampler, num_workers=nw,
        collate_fn=collate, generator=generator, persistent_workers=nw > 0,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=_worker_init if nw > 0 else None)


def _sources_and_nc(data: DataConfig | Sources, split: str, nc: int | None
                    ) -> tuple[Sources, int | None]:
    if isinstance(data, DataConfig):
        sources = getattr(data, split)
        if not sources:
            raise ConfigError(f"{data.source}: no {split!r} images configured")
        return sources, data.nc if nc is None else nc
    return data, nc


def create_dataset(data: DataConfig | Sources, imgsz: int, batch_size: int, hyp: Hyp | None,
                   stride: int = 32, augment: bool = False, rect: bool = False,
                   pad: float = 0.0, cache: bool | str = False, seed: int = 0,
                   single_cls: bool = False, nc: int | None = None, split: str = "train",
                   cache_labels: bool = True, log: Log = print) -> YoloDataset:
    """Discover, scan (with the `<labels dir>.cache` label cache) and wrap a dataset split."""
    sources, nc = _sources_and_nc(data, split, nc)
    files = list_image_files(sources)
    scan = scan_labels(files, nc, default_cache_path(files) if cache_labels else None, log=log)
    return YoloDataset(scan, imgsz=imgsz, batch_size=batch_size, augment=augment, hyp=hyp,
                       rect=rect, stride=stride, pad=pad, cache_ram=bool(cache), seed=seed,
                       single_cls=single_cls, log=log)


def create_train_loader(data: DataConfig | Sources, imgsz: int, batch_size: int, hyp: Hyp,
                        stride: int = 32, augment: bool = True, rect: bool = False,
                        cache: bool | str = False, workers: int = 2, seed: int = 0,
                        single_cls: bool = False, nc: int | None = None,
                        cache_labels: bool = True, log: Log = print) -> DataLoader:
    """Training loader: augmented, shuffled (unless rect), rect pad 0.

    `cache` is False/"" or True/"ram". The dataset is `loader.dataset`; call
    `loader.dataset.set_epoch(e)` before iterating epoch e.
    """
    ds = create_dataset(data, imgsz, batch_size, hyp, stride, augment, rect, 0.0, cache, seed,
                        single_cls, nc, "train", cache_labels, log)
    return build_dataloader(ds, batch_size, shuffle=not rect, workers=workers, seed=seed)


def create_val_loader(data: DataConfig | Sources, imgsz: int, batch_size: int,
                      hyp: Hyp | None = None, stride: int = 32, rect: bool = True,
                      pad: float = 0.5, cache: bool | str = False, workers: int = 2,
                      seed: int = 0, single_cls: bool = False, nc: int | None = None,
                      split: str = "val", cache_labels: bool = True,
                      log: Log = print) -> DataLoader:
    """Validation loader: no augmentation, no shuffle, rect batches with pad 0.5 (YOLOv5 val)."""
    ds = create_dataset(data, imgsz, batch_size, hyp, stride, False, rect, pad, cache, seed,
                        single_cls, nc, split, cache_labels, log)
    return build_dataloader(ds, batch_size, shuffle=False, workers=workers, seed=seed)


def create_dataloaders(data_cfg: DataConfig, imgsz: int, batch_size: int, hyp: Hyp,
                       stride: int = 32, rect: bool = False, cache: bool | str = False,
                       workers: int = 2, seed: int = 0, single_cls: bool = False,
                       log: Log = print) -> tuple[DataLoader, DataLoader]:
    """YOLOv5 train.py's pair: train loader, and a val loader with batch ×2, rect, pad 0.5."""
    train = create_train_loader(data_cfg, imgsz, batch_size, hyp, stride, True, rect, cache,
                                workers, seed, single_cls, log=log)
    val = create_val_loader(data_cfg, imgsz, batch_size * 2, hyp, stride, True, 0.5, cache,
                            workers * 2, seed, single_cls, log=log)
    return train, val


# ---------------------------------------------------------------- image weights (--image-weights)
def labels_to_class_weights(labels: Sequence[np.ndarray], nc: int) -> np.ndarray:
    """Inverse class frequency, normalised to sum 1 (absent classes count as 1 instance)."""
    classes = np.concatenate([lb[:, 0] for lb in labels] or [np.zeros(0)]).astype(int)
    counts = np.bincount(classes, minlength=nc).astype(np.float64)
    counts[counts == 0] = 1
    w = 1 / counts
    return w / w.sum()


def labels_to_image_weights(labels: Sequence[np.ndarray], nc: int,
                            class_weights: np.ndarray) -> np.ndarray:
    """Per image: sum over its labels of the class weight (YOLOv5's image weights)."""
    return np.array([class_weights[lb[:, 0].astype(int)].sum() for lb in labels])


def sample_image_indices(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn with replacement ∝ weights (an epoch's order with --image-weights)."""
    p = weights / weights.sum() if weights.sum() > 0 else None
    return rng.choice(len(weights), size=len(weights), replace=True, p=p)

