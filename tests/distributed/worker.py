"""One rank of the multi-process tests (tests/distributed/test_*.py), run as a script in a new process.

``python worker.py TASK OUT`` (``WORKER_DEVICE=cuda``: nccl, one GPU per rank) with torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) set by the test, each rank with its own ``PYTHONHASHSEED``. ``WORLD_SIZE=1`` is the
single-process reference on the concatenated data. Results go to ``OUT/rank{r}.pt``.

Tasks:
* ``signature:<model>``: the order signature of a model (no process group);
* ``ddp:<model>``: 3 Adam steps of DDP on this rank's half of a fixed batch (float64; the DoubleMNIST
  networks in float32);
* ``marglik:-``: ``marglik_training`` of a softened escnn net under DDP (float64);
* ``laplace:<hessian>``: the Laplace evidence of a softened escnn net on this rank's shard (float64),
  differentiable, with the gradients w.r.t. prior precisions and λ coefficients averaged over ranks
  (``<hessian>-lowmem``: the gradients from ``LaplaceEvidence.evidence_gradient`` instead).
"""
from __future__ import annotations

import os
import sys

import torch


def escnn_net(soft: str | None = None, batch_norm: bool = False) -> torch.nn.Module:
    """A user-style escnn network on C4 (conv, optional IID batch norm, norm non-linearity, conv, spatial mean,
    linear), optionally softened with ``soft``."""
    import escnn.nn as enn
    from escnn import gspaces

    import escnn_soft as es

    g = gspaces.rot2dOnR2(4)
    t_in = enn.FieldType(g, [g.trivial_repr])
    t_mid = enn.FieldType(g, [g.regular_repr] * 2 + [g.irrep(1)] + [g.trivial_repr] * 2)
    t_out = enn.FieldType(g, [g.regular_repr] * 2)
    layers = [enn.R2Conv(t_in, t_mid, 5, padding=2)]
    if batch_norm:
        layers.append(enn.IIDBatchNorm2d(t_mid))
    layers += [enn.NormNonLinearity(t_mid), enn.R2Conv(t_mid, t_out, 3, padding=1)]
    body = enn.SequentialModule(*layers)
    if soft is not None:
        body = es.soften(body, method=soft)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.in_type, self.body = t_in, body
            self.head = torch.nn.Linear(t_out.size, 3)

        def forward(self, x):
            return self.head(self.body(enn.GeometricTensor(x, self.in_type)).tensor.mean((2, 3)))

    return Net()


def build(name: str) -> torch.nn.Module:
    """The models the tests name."""
    from escnn_soft.models import build_model

    torch.manual_seed(0)
    if name == "doublemnist-probabilistic":
        return build_model("probabilistic", group="SO2", width=1)
    if name == "doublemnist-relaxed":
        return build_model("relaxed", group="C4", width=1)
    if name.startswith("escnn-"):  # escnn-<method|strict>[-bn]
        parts = name.split("-")
        return escnn_net(None if parts[1] == "strict" else parts[1], batch_norm="bn" in parts)
    raise ValueError(f"unknown model {name!r}")


def data(n: int, size: int, n_classes: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, size, size, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def signature(model_name: str) -> dict:
    import escnn_soft as es

    return {"signature": es.ordering.order_signature(build(model_name))}


def ddp(model_name: str, ctx) -> dict:
    import torch.distributed as dist

    import escnn_soft as es

    rank, world = ctx.rank, ctx.world_size
    model = build(model_name)
    if not model_name.startswith("doublemnist"):  # escnn's masking and gates allocate float32 there
        model = model.double()
        torch.set_default_dtype(torch.float64)  # what escnn allocates in the forward pass
    size, n_classes = (56, 100) if model_name.startswith("doublemnist") else (11, 3)
    model = model.to(ctx.device)
    x, y = (t.to(ctx.device) for t in data(8, size, n_classes))
    initial = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    net = model
    if world > 1:
        es.check_same_order(model)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ctx.device_ids)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[shard]), y[shard]) + es.regularization_loss(model)
        loss.backward()
        opt.step()
    # DDP copies rank 0's buffers (batch-norm statistics) to every rank at the start of a forward: one more
    # (eval) forward brings each rank's last update into line; the single process runs it too, so the states
    # hold the same entries (escnn's eval-mode filters)
    net.eval()
    with torch.no_grad():
        net(x[:2])
    if world > 1:
        dist.barrier()
    return {"initial": initial, "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def laplace(hessian: str, ctx) -> dict:
    import escnn_soft as es

    rank, world = ctx.rank, ctx.world_size
    model = build("escnn-probabilistic").double().to(ctx.device)
    torch.set_default_dtype(torch.float64)
    with torch.no_grad():  # a non-uniform λ, so the evidence depends on its coefficients
        for name, p in model.named_parameters():
            if "likelihood" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    x, y = (t.to(ctx.device) for t in data(12, 11, 3))
    shard = torch.arange(rank, len(x), world, device=ctx.device)  # interleaved shards
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[shard], y[shard]), batch_size=4)
    hessian, _, mode = hessian.partition("-")
    ev = es.laplace.LaplaceEvidence(model, hessian=hessian)
    hyper = ev.hyperparameters()
    if mode == "lowmem":
        value, grads = ev.evidence_gradient(loader, hyper)
    else:
        ev.fit(loader, differentiable=True)
        value = ev.log_marginal_likelihood()
        grads = torch.autograd.grad(value, hyper)
    for t, g in zip(hyper, grads):
        t.grad = g
    es.distributed.average_gradients(hyper)
    return {"value": value.detach().cpu(), "n_data": ev.n_data, "grads": [t.grad.detach().cpu() for t in hyper]}


def marglik(_: str, ctx) -> dict:
    """2 epochs of ``marglik_training`` (1 burn-in, then 2 evidence steps on λ and the prior precisions), DDP over
    a ``DistributedSampler`` without shuffling: global batch i is the same 4 samples on 1 or 2 ranks."""
    import escnn_soft as es

    model = build("escnn-probabilistic").double().to(ctx.device)
    torch.set_default_dtype(torch.float64)
    x, y = (t.to(ctx.device) for t in data(8, 11, 3))
    dataset = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4 // ctx.world_size, sampler=sampler)
    net = torch.nn.parallel.DistributedDataParallel(model) if ctx.world_size > 1 else model
    _, hist = es.laplace.marglik_training(net, loader, n_epochs=2, n_epochs_burnin=1, marglik_frequency=1,
                                         n_hypersteps=2, lr=1e-2, lr_hyp=1e-1, progress=False)
    return {"state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "marglik": torch.tensor(hist["marglik"]), "prior_precision": torch.tensor(hist["prior_precision"]),
            "loss": torch.tensor(hist["loss"])}


def main() -> None:
    task, out = sys.argv[1], sys.argv[2]
    kind, arg = task.split(":")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    if kind == "signature":
        result = signature(arg)
    else:
        import escnn_soft as es

        ctx = es.distributed.init_from_env(os.environ.get("WORKER_DEVICE", "cpu"))
        result = {"ddp": ddp, "laplace": laplace, "marglik": marglik}[kind](arg, ctx)
        if world > 1:
            torch.distributed.destroy_process_group()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main()
