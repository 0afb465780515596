"""Typed configuration: frozen dataclasses and the YAML loaders that build them."""
