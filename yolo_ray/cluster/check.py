"""Offline check of a Ray cluster yaml: Ray's own schema and preparation, then yolo-ray's rules."""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config.load import load_yaml
from ..errors import ConfigError
from .check_rules import ERROR, RULES, Cluster, summarize

# Ray leaves `metadata` to users; yolo-ray reads metadata.yolo_ray, checked like Ray's own keys.
_YOLO_METADATA = {"type": "object", "properties": {"yolo_ray": {
    "type": "object", "additionalProperties": False,
    "properties": {"storage": {"type": "string"}, "gpu": {"type": "boolean"}}}}}


@dataclass
class CheckReport:
    """What `check_cluster_config` found: errors mean `ray up` or the evolution would fail."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def check_cluster_config(path: str | Path, ray_version: str | None = None) -> CheckReport:
    """Validate a cluster yaml offline (no cloud calls) the way `ray up` would, plus our rules.

    Args:
        path: the cluster launcher yaml (cluster.yaml, configs/cluster/*.yaml).
        ray_version: the Ray every node must run; defaults to the installed ray (the one that
            runs `ray up`, which Ray expects to match the cluster).

    Returns:
        A CheckReport; its messages start with the key path at fault.

    Raises:
        ConfigError: the file is missing or not YAML, or Ray is not installed.
    """
    p = Path(path)
    raw = load_yaml(p, "cluster")
    report = CheckReport(summary=str(p))
    if not isinstance(raw, dict):
        report.errors.append("top level: a cluster file is a mapping (cluster_name, provider, ...)")
        return report
    report.errors += _schema_errors(raw) + _local_errors(raw)
    if report.errors:
        return report
    cfg, defaults, ray_errors = _prepare(raw)
    report.errors += ray_errors
    if cfg is None or cfg.get("head_node_type") not in cfg.get("available_node_types", {}):
        return report
    cluster = Cluster(raw, cfg, defaults, ray_version or _installed_ray())
    report.summary = f"{p}: {summarize(cluster)}"
    for rule in RULES:
        for level, message in rule(cluster):
            (report.errors if level == ERROR else report.warnings).append(message)
    return report


def format_report(report: CheckReport) -> str:
    """Lines for the CLI: the summary, then `error: ...` and `warning: ...`, then a verdict."""
    lines = [report.summary] if report.summary else []
    lines += [f"error: {e}" for e in report.errors]
    lines += [f"warning: {w}" for w in report.warnings]
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"{verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


# --- Ray's schema and config preparation -------------------------------------------------------

def _installed_ray() -> str:
    try:
        import ray
    except ImportError:
        raise ConfigError("checking a cluster file needs Ray: pip install 'ray[tune]'") from None
    return str(ray.__version__)


def _ray_schema() -> dict[str, Any]:
    """Ray's ray-schema.json (what validate_config uses) with metadata.yolo_ray added."""
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    schema["properties"]["metadata"] = _YOLO_METADATA
    return schema


def _schema_errors(raw: dict[str, Any]) -> list[str]:
    """Every violation of Ray's ray-schema.json (not just the first, as validate_config gives)."""
    try:
        import jsonschema
    except ImportError:
        raise ConfigError("checking a cluster file needs Ray: pip install 'ray[tune]'") from None
    schema = _ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    found = sorted(validator.iter_errors(raw), key=lambda e: [str(x) for x in e.absolute_path])
    return [msg for e in found for msg in _describe(e)]


def _describe(e: Any) -> list[str]:
    where = _keypath(e.absolute_path)
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        known = sorted(k for k in e.schema.get("properties", {}) if k != "no_restart")
        return [_unknown_key(k, known, where) for k in e.instance if k not in known]
    if e.validator == "required":
        missing = e.message.replace(" is a required property", "")
        return [f"{where or 'top level'}: missing required key {missing}"]
    return [f"{where or 'top level'}: {e.message}"]


def _keypath(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key(key: Any, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(known)
    return f"unknown key '{key}' at {where or 'top level'} ({hint})"


def _local_errors(raw: dict[str, Any]) -> list[str]:
    """On-prem rules that Ray enforces with cli_logger.abort (a bare exit) in prepare_config."""
    provider = raw.get("provider") or {}
    if provider.get("type") != "local":
        return []
    errors = [f"{k}: not supported for on-prem clusters (provider type local); Ray builds one "
              "node type from provider.worker_ips" for k in ("available_node_types", "head_node",
                                                             "worker_nodes") if raw.get(k)]
    if "coordinator_address" in provider:
        need_max = "max_workers" not in raw
        return errors + ["max_workers: required with provider.coordinator_address"] * need_max
    return errors + [f"provider.{k}: required for an on-prem cluster (or set "
                     "provider.coordinator_address)" for k in ("head_ip", "worker_ips")
                     if k not in provider]


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Silence prepare_config's logging and cli_logger prints; the report says what matters."""
    log = logging.getLogger("ray.autoscaler")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _prepare(raw: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """Mirror `ray up`'s offline part: prepare_config (defaults merged) then validate_config."""
    from ray.autoscaler._private.providers import _get_default_config
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        defaults = _get_default_config(raw["provider"])
    except NotImplementedError as e:
        return None, {}, [f"provider.type: {e}"]
    with _quiet_ray():
        try:
            cfg = prepare_config(copy.deepcopy(raw))
        # Ray raises whatever its helpers raise here (KeyError, AssertionError, ClickException).
        except Exception as e:  # noqa: BLE001
            return None, defaults, [f"Ray cannot prepare this config: {type(e).__name__}: {e}"]
        try:
            validate_config(cfg)
        except Exception as e:  # noqa: BLE001
            return cfg, defaults, [_ray_error(e, cfg)]
    return cfg, defaults, []


def _ray_error(e: Exception, cfg: dict[str, Any]) -> str:
    if hasattr(e, "absolute_path") and hasattr(e, "validator"):  # a jsonschema ValidationError
        return _describe(e)[0]
    msg = str(e)
    types = cfg.get("available_node_types", {})
    if "head_node_type" in msg:
        return (f"head_node_type: {msg} (got {cfg.get('head_node_type')!r}; node types: "
                f"{', '.join(types)})")
    if "max_workers" in msg:
        total = sum(t.get("min_workers", 0) for t in types.values())
        return f"max_workers: {msg} ({cfg.get('max_workers')} < {total})"
    return f"Ray rejects this config: {msg}"


