"""Optimizers of hf-dals."""

from .dals import DALS, DALS_VARIANTS, DALSVariant, dals_phase_weights
from .grokfast import GrokfastSGD
from .sam import TwoPassSAM

__all__ = ["DALS", "DALS_VARIANTS", "DALSVariant", "GrokfastSGD", "TwoPassSAM", "dals_phase_weights"]
