"""yolo-ray: YOLOv5 hyperparameter evolution, freezing and pruning on a Ray cluster."""

__version__ = "0.1.0"
