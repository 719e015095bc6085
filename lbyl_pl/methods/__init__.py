"""Restoration methods: each turns one unit's original tensors and kept indices into a delivery matrix."""
from .lbyl import SingularSystemError, lbyl_delivery
from .merge import merge_delivery
from .prune import prune_delivery

METHODS = ("prune", "merge", "lbyl")

__all__ = ["METHODS", "SingularSystemError", "lbyl_delivery", "merge_delivery", "prune_delivery"]
