"""Restoration methods, registered in ``METHODS`` (name -> ``RestorationMethod`` subclass).

Importing a method's module registers it; adding a method is one file and one line below.
"""
from .base import (METHODS, Hyperparameter, ProducerUpdate, RestorationMethod, UnitRestoration, describe_methods,
                   get_method, make_method, register)
from .prune import Prune, prune_delivery
from .merge import NeuronMerging, merge_delivery
from .lbyl import LBYL, SingularSystemError, lbyl_delivery
from .fusion import IntraFusion

__all__ = ["METHODS", "Hyperparameter", "IntraFusion", "LBYL", "NeuronMerging", "ProducerUpdate", "Prune",
           "RestorationMethod", "SingularSystemError", "UnitRestoration", "describe_methods", "get_method",
           "lbyl_delivery", "make_method", "merge_delivery", "prune_delivery", "register"]
