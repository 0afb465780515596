"""Models: YOLOv5 layers, YAML parsing, detection model, weights, freeze and prune."""
