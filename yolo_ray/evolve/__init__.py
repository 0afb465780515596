"""Evolution: the pure genetic-algorithm core and the evolution store (no torch, no ray)."""

from .ga import GeneticAlgorithm, Suggestion, trial_seed
from .operators import clip_to_space, mutate, select_parent, top_parents
from .plot import plot_evolve
from .records import Row, RowTable, TrialRecord
from .space import (
    Gene, SearchSpace, add_default_anchors, check_hyp_against_space, load_search_space,
    with_freeze_gene, with_prune_gene, zero_genes,
)
from .store import EvolutionStore

__all__ = [
    "EvolutionStore", "Gene", "GeneticAlgorithm", "Row", "RowTable", "SearchSpace", "Suggestion",
    "TrialRecord", "add_default_anchors", "check_hyp_against_space", "clip_to_space",
    "load_search_space", "mutate", "plot_evolve", "select_parent", "top_parents", "trial_seed",
    "with_freeze_gene", "with_prune_gene", "zero_genes",
]
