"""Optimizer classes: thin torch.optim.Optimizer subclasses over agd_kernels.ops."""
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .agd import AGD
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["AGD", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad"]
