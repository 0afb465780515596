"""User-facing error types: each carries a message that names the file, line or key at fault."""

from __future__ import annotations


class YoloRayError(Exception):
    """Base class for errors caused by user input; the CLI prints them without a traceback."""


class ConfigError(YoloRayError):
    """A YAML file (hyp, data, model, meta, cluster) or a CLI value is invalid."""


class DataError(YoloRayError):
    """A dataset cannot be used (missing paths, no labels, unreadable files)."""


class WeightsError(YoloRayError):
    """A weights/checkpoint file cannot be loaded safely or does not fit the model."""


class StoreError(YoloRayError):
    """The evolution store (evolve.csv and its sidecar) is malformed or cannot be written."""
