"""Datasets: YOLO-format scanning, caching, augmentation and loaders."""
