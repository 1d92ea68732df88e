"""Datasets for softly equivariant models: :class:`DoubleMNIST` (METHODS.md §6), :class:`Tetris3D` (3D chirality)."""
from escnn_soft.data.doublemnist import SPLITS, SYMMETRIES, DoubleMNIST, clear_cache
from escnn_soft.data.sources import SOURCES, load_digits
from escnn_soft.data.tetris import Tetris3D

__all__ = ["SOURCES", "SPLITS", "SYMMETRIES", "DoubleMNIST", "Tetris3D", "clear_cache", "load_digits"]
