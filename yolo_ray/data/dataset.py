"""YoloDataset: scanned images → augmented (image, labels) samples, reproducible per index."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..config.schema import Hyp
from ..errors import ConfigError, DataError
from .augment import (
    augment_hsv,
    copy_paste,
    letterbox,
    mixup,
    place_mosaic,
    random_flips,
    random_perspective,
    xywhn2xyxy,
    xyxy2xywhn,
)
from .files import default_cache_path, img2label_path, list_image_files
from .scan import LabelScan, scan_labels

__all__ = ["YoloDataset", "LabelScan", "scan_labels", "list_image_files", "img2label_path",
           "default_cache_path", "Shapes"]

# ((h0, w0), ((h / h0, w / w0), (pad_w, pad_h))) maps boxes back to the original image;
# None for mosaic samples, which have no single original image.
Shapes = tuple[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] | None


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _shared_epoch() -> torch.Tensor:
    """An epoch counter that DataLoader workers (even persistent ones) see updated."""
    t = torch.zeros((), dtype=torch.int64)
    try:
        return t.share_memory_()
    except RuntimeError:  # no shared memory: set_epoch then only reaches workers=0
        return t


class YoloDataset(Dataset):
    """YOLOv5's LoadImagesAndLabels over a `LabelScan`.

    A training sample (augment=True) is a mosaic with probability hyp.mosaic (then MixUp
    with a second mosaic with probability hyp.mixup), else one letterboxed image through
    random_perspective; then HSV, flipud, fliplr. Validation samples are letterboxed without
    upscaling. Each sample draws from `np.random.default_rng([seed, epoch, index])`, so a
    batch does not depend on worker count or order; call `set_epoch(e)` before each epoch.

    `__getitem__` returns (image uint8 (3, H, W) RGB tensor, labels float32 (n, 6)
    [0, cls, x, y, w, h] normalised (collate sets column 0), image path, Shapes).
    """

    def __init__(self, scan: LabelScan, imgsz: int = 640, batch_size: int = 16,
                 augment: bool = False, hyp: Hyp | None = None, rect: bool = False,
                 stride: int = 32, pad: float = 0.0, cache_ram: bool = False, seed: int = 0,
                 single_cls: bool = False, log: Callable[[str], None] = print) -> None:
        if augment and hyp is None:
            raise ConfigError("YoloDataset(augment=True) needs hyperparameters (hyp)")
        if not scan.images:
            raise DataError(f"no usable images in {scan.labels_dir} ({scan.corrupt} corrupt)")
        if augment and not any(len(x) for x in scan.labels):
            raise DataError(f"no labels found in {scan.labels_dir}: cannot start training "
                            "(every image is a background)")
        self.scan, self.imgsz, self.batch_size, self.stride = scan, imgsz, batch_size, stride
        self.augment, self.rect, self.seed = augment, rect, seed
        self.hyp = {k: float(v) for k, v in (hyp.as_dict() if hyp else {}).items()}
        self.mosaic = augment and not rect  # rect batches need whole, unmosaicked images
        self.im_files = [str(p) for p in scan.images]
        self.labels = [x.copy() for x in scan.labels]
        if single_cls:
            for x in self.labels:
                x[:, 0] = 0
        self.segments = [list(s) for s in scan.segments]
        self.shapes = np.asarray(scan.shapes, dtype=np.int64)  # (w, h), as YOLOv5's dataset
        self.n = len(self.im_files)
        self.batch_shapes: np.ndarray | None = None
        self.batch_index = np.arange(self.n) // batch_size
        if rect:
            self._sort_for_rect(pad)
        self._epoch = _shared_epoch()
        self._ram: list[np.ndarray] | None = None
        self._hw0: list[tuple[int, int]] = []
        if cache_ram:
            self.cache_images(log)

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return self.n

    @property
    def epoch(self) -> int:
        """Current epoch (part of every sample's seed)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; visible to DataLoader workers, even persistent ones."""
        self._epoch.fill_(int(epoch))

    def _sort_for_rect(self, pad: float) -> None:
        """Order images by aspect ratio and give each batch the smallest stride-multiple shape."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort(kind="stable")
        self.im_files = [self.im_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.segments = [self.segments[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = int(self.batch_index[-1]) + 1
        shapes = np.ones((nb, 2))  # (h, w) relative to imgsz
        for b in range(nb):
            ari = ar[self.batch_index == b]
            if ari.max() < 1:
                shapes[b] = ari.max(), 1
            elif ari.min() > 1:
                shapes[b] = 1, 1 / ari.min()
        steps = np.ceil(shapes * self.imgsz / self.stride + pad).astype(int)
        self.batch_shapes = steps * self.stride

    # ------------------------------------------------------------------ image loading
    def _resized_hw(self, h0: int, w0: int) -> tuple[int, int]:
        r = self.imgsz / max(h0, w0)
        # The long side is exactly imgsz; the -1e-6 keeps float error from ceiling one pixel up.
        return (min(self.imgsz, math.ceil(h0 * r - 1e-6)),
                min(self.imgsz, math.ceil(w0 * r - 1e-6)))

    def _read(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        path = self.im_files[i]
        im = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR, EXIF-rotated, grey → 3 channels
        if im is None:
            raise DataError(f"{path}: image cannot be read (changed since the label scan?)")
        h0, w0 = im.shape[:2]
        h, w = self._resized_hw(h0, w0)
        if (h, w) != (h0, w0):
            up = h > h0 or w > w0
            interp = cv2.INTER_LINEAR if (self.augment or up) else cv2.INTER_AREA
            im = cv2.resize(im, (w, h), interpolation=interp)
        return im, (h0, w0)

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i (BGR, long side = imgsz), its original (h0, w0) and resized (h, w)."""
        if self._ram is not None:
            im, hw0 = self._ram[i], self._hw0[i]
        else:
            im, hw0 = self._read(i)
        return im, hw0, im.shape[:2]

    def cache_images(self, log: Callable[[str], None] = print) -> bool:
        """Keep every resized image in RAM if it fits (estimate ×1.1 < available memory)."""
        need = sum(h * w * 3 for w0, h0 in self.shapes for h, w in [self._resized_hw(h0, w0)])
        avail = _available_memory()
        if need * 1.1 > avail:
            log(f"WARNING: not caching images: {need / 2**30:.1f} GB needed, "
                f"{avail / 2**30:.1f} GB available")
            return False
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            loaded = list(pool.map(self._read, range(self.n)))  # cv2 releases the GIL
        self._ram = [im for im, _ in loaded]
        self._hw0 = [hw for _, hw in loaded]
        log(f"Caching images ({need / 2**30:.2f} GB ram)")
        return True

    # ------------------------------------------------------------------ samples
    def _warp(self, img: np.ndarray, labels: np.ndarray, segs: list[np.ndarray],
              rng: np.random.Generator, border: int = 0) -> tuple[np.ndarray, np.ndarray]:
        h = self.hyp
        return random_perspective(img, labels, segs, rng=rng, degrees=h["degrees"],
                                  translate=h["translate"], scale=h["scale"], shear=h["shear"],
                                  perspective=h["perspective"], border=(border, border))

    def load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic around `index` (+3 random images): s × s image, pixel-xyxy labels."""
        s = self.imgsz
        idx = [index, *rng.integers(0, self.n, 3).tolist()]
        rng.shuffle(idx)
        tiles = [(self.load_image(i)[0], self.labels[i], self.segments[i]) for i in idx]
        img, labels, segs = place_mosaic(tiles, s, rng)
        img, labels, segs = copy_paste(img, labels, segs, self.hyp["copy_paste"], rng)
        return self._warp(img, labels, segs, rng, border=-s // 2)

    def load_letterboxed(self, index: int, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray, Shapes]:
        """One image letterboxed to imgsz (or its rect batch shape): image, pixel labels, Shapes."""
        img, (h0, w0), (h, w) = self.load_image(index)
        bs = self.batch_shapes
        shape = self.imgsz if bs is None else bs[self.batch_index[index]]
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        shapes = ((h0, w0), ((h / h0, w / w0), pad))
        labels = self.labels[index].copy()
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
        if self.augment:
            segs = [] if not self.segments[index] else [
                s * (ratio[0] * w, ratio[1] * h) + pad for s in self.segments[index]]
            img, labels = self._warp(img, labels, segs, rng)
        return img, labels, shapes

    def _sample(self, index: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, Shapes]:
        h = self.hyp
        if self.mosaic and h["mosaic"] and rng.random() < h["mosaic"]:
            img, labels = self.load_mosaic(index, rng)
            if h["mixup"] and rng.random() < h["mixup"]:
                img2, labels2 = self.load_mosaic(int(rng.integers(0, self.n)), rng)
                img, labels = mixup(img, labels, img2, labels2, rng)
            return img, labels, None
        return self.load_letterboxed(index, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, Shapes]:
        index = int(index)
        rng = np.random.default_rng([self.seed, int(self._epoch), index])
        img, labels, shapes = self._sample(index, rng)
        hh, ww = img.shape[:2]
        xywh = np.concatenate((labels[:, :1], xyxy2xywhn(labels[:, 1:5], ww, hh)), 1)
        if self.augment:
            h = self.hyp
            img = augment_hsv(img, h["hsv_h"], h["hsv_s"], h["hsv_v"], rng)
            img, xywh = random_flips(img, xywh, h["flipud"], h["fliplr"], rng)
        out = np.zeros((len(xywh), 6), dtype=np.float32)
        out[:, 1:] = xywh
        chw = np.ascontiguousarray(img.transpose(2, 0, 1)[::-1])  # HWC BGR → CHW RGB, one copy
        return torch.from_numpy(chw), torch.from_numpy(out), self.im_files[index], shapes

    def __repr__(self) -> str:
        return (f"YoloDataset({self.n} images, imgsz={self.imgsz}, augment={self.augment}, "
                f"rect={self.rect}, cache_ram={self._ram is not None})")

