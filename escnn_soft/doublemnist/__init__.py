"""The DoubleMNIST application: the package's headline experiment, built on the library.

One module per concept:

* :mod:`~escnn_soft.doublemnist.networks` — the networks of METHODS section 6 for every method
  (:func:`build_model`; also at its historical path ``escnn_soft.models``);
* :mod:`~escnn_soft.doublemnist.config` — :class:`RunConfig`, the typed configuration of a run (one field per
  ``escnn-soft train`` option);
* :mod:`~escnn_soft.doublemnist.training` — the plain training and evaluation loops;
* :mod:`~escnn_soft.doublemnist.checkpoint` — the checkpoint format (also at ``escnn_soft.checkpoint``);
* :mod:`~escnn_soft.doublemnist.reporting` — what a trained model learned, as text, plots and JSON;
* :mod:`~escnn_soft.doublemnist.run` — :func:`train` and :func:`report_checkpoint`, what the command line runs;
* :mod:`~escnn_soft.doublemnist.bench` — the speed and memory table of ``escnn-soft bench``.

The dataset itself is :class:`escnn_soft.data.DoubleMNIST`. The library (``escnn_soft.nn``, ``laplace``,
``metrics``, ...) never imports this subpackage.
"""
from escnn_soft.doublemnist.checkpoint import load_checkpoint, save_checkpoint
from escnn_soft.doublemnist.config import ConfigError, RunConfig
from escnn_soft.doublemnist.networks import build_model
from escnn_soft.doublemnist.run import report_checkpoint, train

__all__ = ["ConfigError", "RunConfig", "build_model", "load_checkpoint", "report_checkpoint", "save_checkpoint",
           "train"]
