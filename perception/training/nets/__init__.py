"""Torch model definitions: one file per model family."""

from perception.training.nets.crf import RecurrentCRF
from perception.training.nets.squeezeseg import SqueezeSeg, squeezeseg, squeezeseg_without_crf

__all__ = ["RecurrentCRF", "SqueezeSeg", "squeezeseg", "squeezeseg_without_crf"]
