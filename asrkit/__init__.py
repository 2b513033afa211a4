"""asrkit: speech recognition in pure PyTorch, in the spirit of k2/icefall.

The library (models, losses, decoding, training, data) lives here; recipes in ``egs/``
drive it through the ``asrkit`` command line.
"""

__version__ = "0.1.0"
