"""Lockstep batched MCTS with the code-augmented step protocol (DESIGN §1.1, §1.2, §2.2).

Public API:
  MCTS, run_search, SearchConfig, Problem       the host driver (driver.py)
  beam_search, BeamConfig, best_answer          step-level beam search (beam.py)
  Policy, Scorer, StepCandidate, CodeExecutor   the interfaces the search drives (interfaces.py)
  Tree, init_tree, select, expand_and_backup    the jitted tree kernels (tree.py, kernels.py)
  write_trees, read_trees, validate_tree        Q-annotated tree JSONL (records.py)
"""

from rstar_jax.search.beam import BeamConfig, beam_search, best_answer
from rstar_jax.search.driver import MCTS, Problem, SearchConfig, SearchStats, run_search
from rstar_jax.search.interfaces import CodeExecutor, Policy, Scorer, StepCandidate
from rstar_jax.search.kernels import Expansion, SelectionRule, SelectOutput, expand_and_backup, select
from rstar_jax.search.records import read_trees, validate_tree, write_trees
from rstar_jax.search.tree import Reason, Tree, init_tree

__all__ = [
    "BeamConfig", "beam_search", "best_answer",
    "MCTS", "Problem", "SearchConfig", "SearchStats", "run_search",
    "CodeExecutor", "Policy", "Scorer", "StepCandidate",
    "Expansion", "SelectionRule", "SelectOutput", "expand_and_backup", "select",
    "read_trees", "validate_tree", "write_trees",
    "Reason", "Tree", "init_tree",
]
