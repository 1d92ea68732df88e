"""The checkpoint format of ``escnn-soft train``, at its historical import path:
:mod:`escnn_soft.doublemnist.checkpoint` (the optimiser-state-by-name helpers are in :mod:`escnn_soft.ordering`)."""
from escnn_soft.doublemnist.checkpoint import load_checkpoint, model_kwargs, resume_state, save_checkpoint
from escnn_soft.ordering import optimizer_state_by_name, restore_optimizer_state

__all__ = ["load_checkpoint", "model_kwargs", "optimizer_state_by_name", "restore_optimizer_state", "resume_state",
           "save_checkpoint"]
