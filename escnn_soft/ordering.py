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

:func:`check_same_order` compares the names and shapes of the parameters and buffers across the ranks of an
initialised process group and names the first difference: call it before wrapping a model in DDP to get a
clear error instead of DDP's ``params[6] ... appears not to match``.
"""
from __future__ import annotations

import hashlib

import torch

__all__ = ["canonical_order_", "check_same_order", "install_deterministic_hash", "order_signature"]


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
