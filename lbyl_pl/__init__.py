"""lbyl_pl: data-free restoration of pruned CNNs (prune / Neuron Merging / LBYL / Intra-Fusion) with PyTorch Lightning."""
from .data_free import auto_hparams, auto_hparams_search, distill_inputs
from .callbacks import RestoreCallback, load_restored_checkpoint
from .checkpoints import find_checkpoint, load_restored, load_weights, save_restored
from .checks import UnitCheck, check_units
from .data import evaluate
from .discovery import Discovery, SkippedGroup, discover, discover_units
from .methods import METHODS
from .models import ARCHITECTURES, build_model
from .refit import RefitReport, refit
from .restoration import RestorationReport, prune_and_restore, restore_from_spec
from .selection import CRITERIA
from .prunable import prunable_units
from .units import CoupledGroup, PrunableUnit
from .budget import Allocation

__version__ = "0.1.0"

__all__ = ["auto_hparams", "auto_hparams_search", "distill_inputs", "Allocation", "ARCHITECTURES", "CRITERIA",
           "CoupledGroup", "Discovery",
           "METHODS", "PrunableUnit", "RefitReport", "RestorationReport", "RestoreCallback", "SkippedGroup", "UnitCheck", "build_model", "check_units", "discover",
           "discover_units", "evaluate", "find_checkpoint", "load_restored", "load_restored_checkpoint",
           "load_weights", "prunable_units", "prune_and_restore", "refit", "restore_from_spec", "save_restored"]
