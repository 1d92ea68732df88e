"""One parameter and buffer order for every process.

escnn builds some modules by iterating over a ``set`` of representations (``IIDBatchNorm2d`` and
``GNormBatchNorm`` register one parameter per unique field type, ``BlocksBasisExpansion`` one sub-module per
pair of field types). A set iterates in the order of its elements' hashes, and
``Representation.__hash__`` is ``hash(repr(self))``: a string hash, randomised per process
(``PYTHONHASHSEED``). Two processes building the same model then list ``model.parameters()`` in different
orders, which breaks everything that matches parameters by position: ``DistributedDataParallel`` (it
averages gradients between different parameters, or refuses different shapes) and optimiser state.

The fix lives in two places:

* :func:`install_deterministic_hash` (run when ``escnn_soft`` is imported) gives escnn's ``Representation``
  a hash that is a function of the same string, ``repr(self)``, but the same in every process (the first 8
  bytes of its BLAKE2b digest). Equal representations still hash equal, so nothing changes but the
  iteration order of sets, which becomes the same in every process. This is the narrowest patch that
  reaches every escnn model built after the import, including a user's own, with no call to remember.
* :func:`canonical_order_` reorders an already-built model: in every escnn module, ``_parameters`` and
  ``_buffers`` by name, and the sub-modules of escnn's basis managers by name (their forward goes through
  the sorted list of representation pairs, never through the order of registration). Torch containers
  (``Sequential``, ``ModuleList``, ``ParameterList``) are left alone: their order is their meaning. It is for
  models built before ``escnn_soft`` was imported; :func:`escnn_soft.models.build_model`,
  :func:`escnn_soft.soften` and :func:`escnn_soft.harden` call it on what they return.

:func:`optimizer_state_by_name` / :func:`restore_optimizer_state` store and restore an optimiser's state keyed by
parameter name instead of position, so it lands on the right tensors in a process that lists them in another order.

:func:`check_same_order` compares the names and shapes of the parameters and buffers across the ranks of an
initialised process group and names the first difference: call it before wrapping a model in DDP to get a
clear error instead of DDP's ``params[6] ... appears not to match``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

__all__ = ["canonical_order_", "check_same_order", "install_deterministic_hash", "optimizer_state_by_name",
           "order_signature", "restore_optimizer_state"]


def _stable_hash(self) -> int:
    """``hash(repr(self))`` with a process-independent string hash (BLAKE2b, 8 bytes, signed)."""
    digest = hashlib.blake2b(repr(self).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def install_deterministic_hash() -> None:
    """Give ``escnn.group.Representation`` (and its subclasses that inherit its hash) a process-independent
    ``__hash__``; idempotent. Run at ``import escnn_soft``."""
    from escnn.group import Representation

    if Representation.__hash__ is not _stable_hash:
        Representation.__hash__ = _stable_hash  # type: ignore[method-assign]


def _is_escnn_module(module: torch.nn.Module) -> bool:
    return type(module).__module__.split(".")[0] in ("escnn", "escnn_soft")


def _sorted_dict(d: dict) -> dict:
    """The same mapping, keys sorted, as an object of the same class (torch keeps these as plain dicts)."""
    return type(d)(sorted(d.items(), key=lambda kv: kv[0]))


def canonical_order_(model: torch.nn.Module) -> torch.nn.Module:
    """Reorder ``model`` in place so that ``parameters()``, ``buffers()`` and ``state_dict()`` list their
    entries in the same order in every process (module docstring); returns ``model``.

    Names, values and the forward pass are unchanged. Build optimisers *after* this call (an optimiser made
    before keeps its own, older, order).
    """
    from escnn_soft._escnn import BlocksBasisExpansion, BlocksBasisSampler

    ordered_children = (BlocksBasisExpansion, BlocksBasisSampler)
    stack, seen = [model], set()
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        if _is_escnn_module(module):
            module._parameters = _sorted_dict(module._parameters)
            module._buffers = _sorted_dict(module._buffers)
            if isinstance(module, ordered_children):
                module._modules = _sorted_dict(module._modules)
        stack.extend(c for c in module._modules.values() if c is not None)
    return model


def order_signature(model: torch.nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """``[(kind, name, shape)]`` of every parameter (``'parameter'``) and buffer (``'buffer'``) in the order
    that DDP and optimisers see them."""
    return ([("parameter", n, tuple(p.shape)) for n, p in model.named_parameters()]
            + [("buffer", n, tuple(b.shape)) for n, b in model.named_buffers()])


def check_same_order(model: torch.nn.Module, group=None) -> None:
    """Raise ``RuntimeError`` naming the first parameter or buffer whose position, name or shape differs
    between this rank and rank 0 of the process group (``torch.distributed`` must be initialised). Every
    rank must call it (it is a collective)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("check_same_order: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (torchrun sets the environment for it)")
    mine = order_signature(model)
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, mine, group=group)
    reference = gathered[0]
    for rank, theirs in enumerate(gathered[1:], start=1):
        if theirs == reference:
            continue
        for i, (a, b) in enumerate(zip(reference, theirs)):
            if a != b:
                raise RuntimeError(
                    f"check_same_order: entry {i} is {a[0]} '{a[1]}' {a[2]} on rank 0 but {b[0]} '{b[1]}' {b[2]} "
                    f"on rank {rank}; build the model after 'import escnn_soft' or call "
                    "escnn_soft.canonical_order_(model) on every rank before wrapping it")
        raise RuntimeError(f"check_same_order: rank 0 has {len(reference)} parameters and buffers, rank {rank} "
                           f"{len(theirs)}; every rank must build the same model")


def _param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[list[str]]:
    """For each parameter group of ``optimizer``, the names (in ``model``) of its parameters, in order."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for g, group in enumerate(optimizer.param_groups):
        missing = [i for i, p in enumerate(group["params"]) if id(p) not in names]
        if missing:
            raise ValueError(f"optimizer: parameter {missing[0]} of parameter group {g} is not a parameter of "
                             "the model; build the optimizer from model.parameters()")
        out.append([names[id(p)] for p in group["params"]])
    return out


def optimizer_state_by_name(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every parameter index replaced by the parameter's name in ``model``:
    ``{"state": {name: per-parameter state}, "param_groups": [{hyperparameters..., "params": [names]}]}``."""
    names = _param_names(optimizer, model)
    sd = optimizer.state_dict()
    index_to_name = {}
    for group, group_names in zip(sd["param_groups"], names):
        index_to_name.update(zip(group["params"], group_names))
    return {"state": {index_to_name[i]: v for i, v in sd["state"].items()},
            "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "params": group_names}
                             for group, group_names in zip(sd["param_groups"], names)]}


def restore_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, ckpt: dict[str, Any],
                            path: Path | str = "checkpoint") -> None:
    """Load the optimiser state of a checkpoint (``ckpt``, as read by ``torch.load``) into ``optimizer``,
    matching parameters by name, whatever order this process lists them in.

    Raises:
        ValueError: the saved parameter groups name other parameters than ``optimizer``'s (the first
            differences are named), a saved state's shape differs from its parameter's, or the checkpoint
            holds only positional optimiser state (written before 0.2); the message says what to do.
    """
    if "optimizer_by_name" not in ckpt:
        if "optimizer" in ckpt:
            raise ValueError(
                f"{path}: its optimiser state is stored by position (written by escnn-soft before 0.2), in an order "
                "that depended on the writing process's hash seed, so it cannot be restored safely in another "
                "process. Its weights still load without the optimiser state; "
                "to continue training, start a new run folder, or resume in a process with the PYTHONHASHSEED "
                "of the run that wrote it")
        return
    saved = ckpt["optimizer_by_name"]
    names = _param_names(optimizer, model)
    saved_names = [g["params"] for g in saved["param_groups"]]
    if [sorted(g) for g in saved_names] != [sorted(g) for g in names]:
        flat_saved = [n for g in saved_names for n in g]
        flat = [n for g in names for n in g]
        problems = [f"'{n}' is in the checkpoint, not in the optimizer" for n in flat_saved if n not in flat][:3]
        problems += [f"'{n}' is in the optimizer, not in the checkpoint" for n in flat if n not in flat_saved][:3]
        if not problems:
            problems = [(f"the parameter groups differ: checkpoint {[len(g) for g in saved_names]} parameters per "
                        f"group, optimizer {[len(g) for g in names]}")]
        raise ValueError(f"{path}: optimiser state does not match this optimiser: " + "; ".join(problems))
    params = dict(model.named_parameters())
    for name, state in saved["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[name].shape:
                raise ValueError(f"{path}: optimiser state '{key}' of parameter '{name}' has shape "
                                 f"{tuple(value.shape)}, the parameter {tuple(params[name].shape)}; the checkpoint "
                                 "was written by a different model")
    # torch matches saved to current parameters by position within each group: give it this optimiser's order
    position = {n: i for i, n in enumerate(n for g in names for n in g)}
    optimizer.load_state_dict({
        "state": {position[n]: v for n, v in saved["state"].items()},
        "param_groups": [{**{k: v for k, v in g.items() if k != "params"}, "params": [position[n] for n in own]}
                         for g, own in zip(saved["param_groups"], names)]})
