"""Private sampled steerable bases and escnn's He initialisation (re-exported from :mod:`escnn_soft._escnn`).

escnn caches sampled bases in a process-wide dictionary and hands the *same* module to every layer with the same
representations and grid; escnn_soft layers keep private copies instead (:func:`privatize_`,
:func:`private_sampled_basis`, :func:`private_blocks_expansion`). :func:`he_stds` gives escnn's generalised He
initialisation without escnn's per-coefficient loop. They walk escnn's private internals, so they live in the
adapter :mod:`escnn_soft._escnn`; this module keeps their historical import path.
"""
from escnn_soft._escnn import he_stds, private_blocks_expansion, private_sampled_basis, privatize_

__all__ = ["he_stds", "private_blocks_expansion", "private_sampled_basis", "privatize_"]
