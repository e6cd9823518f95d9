"""Optimizers of hf-dals."""

from .dals import DALS, DALS_VARIANTS, DALSVariant, dals_phase_weights
from .grokfast import GrokfastSGD
from .layerwise import LARS, Lamb
from .sam import TwoPassSAM

__all__ = ["DALS", "DALS_VARIANTS", "DALSVariant", "GrokfastSGD", "LARS", "Lamb", "TwoPassSAM", "dals_phase_weights"]
