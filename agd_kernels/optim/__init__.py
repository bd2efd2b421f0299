"""Optimizer classes: thin torch.optim.Optimizer subclasses over agd_kernels.ops."""
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .agd import AGD
from .lamb import LAMB
from .rmsprop import RMSprop
from .sgd import SGD
from .yellowfin import YellowFin

__all__ = ["AGD", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LAMB", "YellowFin"]
