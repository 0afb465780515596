"""The evolution search space: per-gene mutation gain, limits and kind (YOLOv5's `meta`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Mapping

from ..config.load import CONFIGS_DIR, load_yaml
from ..config.schema import ALL_HYP_KEYS, HYP_KEYS, OPTIONAL_HYP_KEYS, Hyp
from ..errors import ConfigError

DEFAULT_META = CONFIGS_DIR / "evolve" / "meta.yaml"

# Genes that are not YOLOv5 hyps: they travel in the sidecar (evolve_trials.jsonl), never as
# evolve.csv columns, so YOLOv5's tools keep parsing evolve.csv (its hyp columns = hyp keys).
EXTRA_GENES: dict[str, Literal["float", "int"]] = {"freeze": "int", "prune": "float"}

# YOLOv5 appends `anchors = 3` to a hyp that lacks it before evolving (spec §1.0).
DEFAULT_ANCHORS = 3.0

GeneKind = Literal["float", "int"]
HypLike = Mapping[str, float] | Hyp  # a plain mapping or the config layer's Hyp


@dataclass(frozen=True)
class Gene:
    """One gene: mutation gain (0 = frozen), inclusive limits and value kind."""

    gain: float
    lower: float
    upper: float
    kind: GeneKind = "float"


@dataclass(frozen=True)
class SearchSpace:
    """Ordered genes: the hyp genes first, then any extra genes (freeze, prune)."""

    genes: tuple[tuple[str, Gene], ...]
    source: str = "<space>"
    _by_name: dict[str, Gene] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # name -> gene lookup cache (frozen dataclass: set once here).
        object.__setattr__(self, "_by_name", dict(self.genes))
        if len(self._by_name) != len(self.genes):
            raise ConfigError(f"{self.source}: a gene is listed twice")
        hyp = [n for n, _ in self.genes if n not in EXTRA_GENES]
        extra = [n for n, _ in self.genes if n in EXTRA_GENES]
        if [n for n, _ in self.genes] != hyp + extra:
            raise ConfigError(f"{self.source}: extra genes {extra} must come after the hyp genes")

    def __getitem__(self, name: str) -> Gene:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.genes)

    def names(self) -> tuple[str, ...]:
        """All gene names in order."""
        return tuple(n for n, _ in self.genes)

    def hyp_names(self) -> tuple[str, ...]:
        """Genes that are YOLOv5 hyps (evolve.csv columns)."""
        return tuple(n for n, _ in self.genes if n not in EXTRA_GENES)

    def extra_names(self) -> tuple[str, ...]:
        """Genes kept in the sidecar only (freeze, prune)."""
        return tuple(n for n, _ in self.genes if n in EXTRA_GENES)

    def without(self, *names: str) -> "SearchSpace":
        """A copy without some genes (e.g. `anchors` under --noautoanchor, as YOLOv5)."""
        return SearchSpace(tuple((n, g) for n, g in self.genes if n not in names), self.source)

    def with_gene(self, name: str, gene: Gene) -> "SearchSpace":
        """A copy with `name` replaced or added (extra genes stay after the hyp genes)."""
        _check_gene(name, gene, self.source)
        genes = [(n, g) for n, g in self.genes if n != name]
        if name in EXTRA_GENES:
            genes.append((name, gene))
        else:
            cut = len([n for n, _ in genes if n not in EXTRA_GENES])
            genes.insert(cut, (name, gene))
        return SearchSpace(tuple(genes), self.source)


def with_freeze_gene(space: SearchSpace, lower: int = 0, upper: int = 24,
                     gain: float = 1.0) -> SearchSpace:
    """Add the integer `freeze` gene (number of leading modules frozen; 24 = all but Detect).

    Its value is kept in the sidecar, not in evolve.csv. Mutation is multiplicative, so a
    base value of 0 never moves (see `zero_genes`).
    """
    return space.with_gene("freeze", Gene(float(gain), float(lower), float(upper), "int"))


def with_prune_gene(space: SearchSpace, lower: float = 0.0, upper: float = 0.9,
                    gain: float = 1.0) -> SearchSpace:
    """Add the float `prune` gene (global sparsity fraction); kept in the sidecar only."""
    return space.with_gene("prune", Gene(float(gain), float(lower), float(upper), "float"))


def _number(raw: object, where: str) -> float:
    # YAML 1.1 reads `1e-5` as a string, so numeric strings are accepted; booleans are not.
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{where} must be a number, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{where} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {raw!r}")
    return value


def _check_gene(name: str, gene: Gene, source: str) -> None:
    if name not in ALL_HYP_KEYS and name not in EXTRA_GENES:
        valid = ", ".join(HYP_KEYS + OPTIONAL_HYP_KEYS + tuple(EXTRA_GENES))
        raise ConfigError(f"{source}: unknown gene {name!r}; valid genes are: {valid}")
    if gene.gain < 0:
        raise ConfigError(f"{source}: gene {name!r}: gain must be >= 0, got {gene.gain}")
    if gene.lower > gene.upper:
        raise ConfigError(
            f"{source}: gene {name!r}: lower limit {gene.lower} > upper limit {gene.upper}")
    if gene.kind not in ("float", "int"):
        raise ConfigError(f"{source}: gene {name!r}: kind must be 'float' or 'int'")


def _parse_gene(name: str, raw: object, source: str) -> Gene:
    where = f"{source}: gene {name!r}"
    kind: object = EXTRA_GENES.get(name, "float")
    if isinstance(raw, (list, tuple)) and len(raw) == 3:
        gain, lower, upper = raw
    elif isinstance(raw, Mapping) and {"gain", "lower", "upper"} <= set(raw):
        unknown = set(raw) - {"gain", "lower", "upper", "kind"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        gain, lower, upper = raw["gain"], raw["lower"], raw["upper"]
        kind = raw.get("kind", kind)
    else:
        raise ConfigError(f"{where} must be [gain, lower, upper] or a mapping with "
                          f"gain, lower, upper (and optional kind), got {raw!r}")
    if kind not in ("float", "int"):
        raise ConfigError(f"{where}: kind must be 'float' or 'int', got {kind!r}")
    gene = Gene(_number(gain, f"{where} gain"), _number(lower, f"{where} lower"),
                _number(upper, f"{where} upper"), "int" if kind == "int" else "float")
    _check_gene(name, gene, source)
    return gene


def load_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read a meta yaml (`gene: [gain, lower, upper]`); default configs/evolve/meta.yaml.

    Raises:
        ConfigError: naming the file and gene for an unknown gene, a non-numeric value or
            lower > upper.
    """
    p = Path(path) if path is not None else DEFAULT_META
    raw = load_yaml(p, "evolve meta")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: an evolve meta file must be a mapping of gene: "
                          "[gain, lower, upper]")
    genes = [(str(k), _parse_gene(str(k), v, str(p))) for k, v in raw.items()]
    # Extra genes written in the file are moved after the hyp genes (csv columns first).
    genes.sort(key=lambda item: item[0] in EXTRA_GENES)
    return SearchSpace(tuple(genes), str(p))


def add_default_anchors(hyp: HypLike, space: SearchSpace) -> dict[str, float]:
    """YOLOv5's rule: if the space evolves `anchors` and the hyp lacks it, append anchors=3."""
    out = {str(k): float(hyp[k]) for k in hyp.keys()}
    if "anchors" in space and "anchors" not in out:
        out["anchors"] = DEFAULT_ANCHORS
    return out


def check_hyp_against_space(hyp: HypLike, space: SearchSpace) -> None:
    """Every hyp gene of the space must be in the hyp (hyp keys outside the space stay fixed).

    Raises:
        ConfigError: listing the missing genes and the space's file.
    """
    missing = [n for n in space.hyp_names() if n not in hyp]
    if missing:
        hint = " (add_default_anchors inserts anchors=3)" if missing == ["anchors"] else ""
        raise ConfigError(f"{space.source}: hyp lacks evolved gene(s): "
                          f"{', '.join(missing)}{hint}")


def zero_genes(hyp: HypLike, space: SearchSpace) -> list[str]:
    """Genes with gain > 0 whose value in `hyp` is 0: multiplicative mutation cannot move them."""
    return [n for n, g in space.genes if g.gain > 0 and n in hyp and float(hyp[n]) == 0.0]
