"""Benchmark 2 of issue 17: ProbabilisticLinear networks on 3D vectors, targets invariant to a known subgroup of O(3).

Inputs are vectors x ~ N(0, I) in R^3 (escnn's O(3) vector irrep ``(1, 1)`` on ``no_base_space(O(3))``), targets
scalars invariant to a known subgroup S of O(3) and to nothing larger:

* ``O3``: f = |x|^2 — every element of O(3);
* ``cone_O2``: f = z + (x^2 + y^2) / 2 — rotations about z and the mirror planes containing z (escnn id
  ``('cone', -1)``);
* ``full_octahedral``: f = x^4 + y^4 + z^4 — the 48 signed permutations (``(True, 'octa')``);
* ``trivial``: f = x + y z^2 + z / 2 + x y.

(x, y, z are the Cartesian coordinates of escnn's standard representation of O(3); each target's invariance is
checked on elements of its subgroup before training.) The network: ProbabilisticLinear (λ over O(3), L=2) →
FourierELU → ProbabilisticLinear → FourierELU → ProbabilisticLinear to one scalar. A strict O(3) network can only
fit functions of |x|. What moves λ (``--objectives``):

* ``regularisers`` — Adam on the mean squared error + ``es.regularization_loss`` (the paper's alignment and KL
  terms, weights 5 and 3), ``--steps`` steps of batch 128;
* ``task`` — the mean squared error alone (the same steps);
* ``evidence`` — ``marglik_training`` (Gaussian likelihood, Kronecker-factored GGN): the weights by the MAP
  objective, λ by the Laplace evidence alone (``hyperparameters="likelihoods"``), 16-batch epochs of
  batch 128 (``--steps`` weight steps in all), burn-in 5 epochs, then 5 evidence steps per epoch on random 256-sample subsets.

Reported per target and layer: the test R² of the network; for each candidate subgroup the mean of λ over its
elements relative to the uniform density (``density``: > 1 where λ concentrates; finite subgroups: all elements;
continuous ones: escnn's testing elements) and the mass of λ on the rotations SO(3) (the grid-quadrature share of
the SO(3) component, 1/2 for uniform λ); the layer's ``degree()`` equivariant fraction per candidate S
(:math:`1 - \\lVert k_{\\lambda - P_S\\lambda}\\rVert / \\lVert k_\\lambda\\rVert`) and, derived from it, the share of
the layer's O(3)-breaking part that still respects S, :math:`(f_S - f_{O(3)}) / (1 - f_{O(3)})` (1: the layer
breaks O(3) only in S-equivariant directions; 0: nothing of its break respects S).

The fields are of band limit 1 (scalars, vectors, pseudo-scalars, pseudo-vectors). Their irreps restrict to
irreducible, distinct representations of the octahedral groups (A1, T1 and their parity partners), so a linear
map between such fields is octahedral-equivariant exactly when it is SO(3)-equivariant (full octahedral:
O(3)-equivariant): at this band limit no layer can keep the octahedral symmetry while breaking SO(3), and the
octahedral columns equal the SO(3) (O(3)) ones. Separating them needs fields of band limit 4 (the first
octahedral invariant of SO(3)), beyond this CPU benchmark.

Usage::

    python benchmarks/vectors_o3.py [--targets O3 cone_O2 full_octahedral trivial]
        [--objectives regularisers task evidence] [--steps 400] [--seed 0]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from escnn import group as egroup
from escnn import gspaces
from escnn import nn as enn

import escnn_soft as es
from escnn_soft.laplace import marglik_training

#: candidate subgroups of O(3): name -> escnn id
CANDIDATES = {"O3": None, "SO3": "so3", "full_octahedral": (True, "octa"), "octahedral": (False, "octa"),
              "cone_O2": ("cone", -1)}
OBJECTIVES = ("regularisers", "task", "evidence")


def target(name: str, p: torch.Tensor) -> torch.Tensor:
    x, y, z = p.unbind(-1)
    if name == "O3":
        return (p * p).sum(-1)
    if name == "cone_O2":
        return z + (x * x + y * y) / 2
    if name == "full_octahedral":
        return x ** 4 + y ** 4 + z ** 4
    if name == "trivial":
        return x + y * z * z + z / 2 + x * y
    raise ValueError(f"targets: {name!r} is not one of O3, cone_O2, full_octahedral, trivial")


def _elements(group, sid, n: int = 64) -> list:
    sub, inclusion, _ = group.subgroup(sid) if sid is not None else (group, lambda h: h, None)
    els = list(sub.elements) if not sub.continuous else list(sub.testing_elements())[:n]
    if sub.continuous and len(els) < n:
        els += [sub.sample() for _ in range(n - len(els))]
    return [inclusion(s) for s in els]


class _Column(torch.nn.Module):
    """``net(x)[:, None]``: the network's output as an ``(N, 1)`` regression target for the Laplace evidence."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v)[:, None]


class VectorNet(torch.nn.Module):
    def __init__(self, channels: int = 8, L: int = 2):
        super().__init__()
        gs = gspaces.no_base_space(egroup.o3_group(maximum_frequency=2))
        self.gspace = gs
        self.in_type = enn.FieldType(gs, [gs.irrep(1, 1)])
        act1 = enn.FourierELU(gs, channels, irreps=gs.fibergroup.bl_irreps(1), type="thomson_cube", N=2)
        act2 = enn.FourierELU(gs, channels, irreps=gs.fibergroup.bl_irreps(1), type="thomson_cube", N=2)
        out = enn.FieldType(gs, [gs.trivial_repr])
        self.l1 = es.nn.ProbabilisticLinear(self.in_type, act1.in_type, L=L)
        self.a1 = act1
        self.l2 = es.nn.ProbabilisticLinear(act1.out_type, act2.in_type, L=L)
        self.a2 = act2
        self.l3 = es.nn.ProbabilisticLinear(act2.out_type, out, L=L)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = self.a1(self.l1(self.in_type(v)))
        h = self.a2(self.l2(h))
        return self.l3(h).tensor[:, 0]


def cartesian(group) -> np.ndarray:
    """Q with standard(g) = Q vector_irrep(g) Q^T: the Cartesian coordinates p = Q v of an irrep-(1,1) vector v."""
    std = group.standard_representation()
    q = np.asarray(std.change_of_basis, dtype=np.float64)
    assert [tuple(i) for i in std.irreps] == [(1, 1)], std.irreps
    return q


def fit(net: VectorNet, v_train: torch.Tensor, y_train: torch.Tensor, objective: str, steps: int, seed: int
        ) -> None:
    """Train ``net`` on standardised targets with ``objective`` (module docstring)."""
    if objective == "evidence":
        data = torch.utils.data.TensorDataset(v_train, y_train[:, None])
        loader = torch.utils.data.DataLoader(data, batch_size=128, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        marglik_training(_Column(net), loader, likelihood="regression", n_epochs=max(steps // len(loader), 6),
                         lr=3e-3, lr_hyp=0.05, n_epochs_burnin=5, marglik_frequency=1, n_hypersteps=5,
                         marglik_batch_size=256, hyperparameters="likelihoods", progress=False, seed=seed)
        return
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(v_train), (128,))
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(v_train[idx]), y_train[idx])
        if objective == "regularisers":
            loss = loss + es.regularization_loss(net)
        loss.backward()
        opt.step()


def run(name: str, steps: int, seed: int, objective: str = "regularisers", n_train: int = 2048) -> dict:
    torch.manual_seed(seed)
    net = VectorNet()
    group = net.gspace.fibergroup
    q = torch.as_tensor(cartesian(group), dtype=torch.float32)
    sid = CANDIDATES.get(name) if name != "trivial" else None
    if name != "trivial":   # the target is invariant to its subgroup (a check of the benchmark itself)
        v = torch.randn(256, 3)
        for h in _elements(group, sid, 16):
            rho = torch.as_tensor(group.irrep(1, 1)(h), dtype=torch.float32)
            torch.testing.assert_close(target(name, (v @ rho.T) @ q.T), target(name, v @ q.T), rtol=1e-4, atol=1e-4)
    v_train, v_test = torch.randn(n_train, 3), torch.randn(1024, 3)
    y_train, y_test = target(name, v_train @ q.T), target(name, v_test @ q.T)
    scale = y_train.std()
    fit(net, v_train, y_train / scale, objective, steps, seed)
    net.eval()
    with torch.no_grad():
        pred = net(v_test) * scale
    r2 = float(1 - ((pred - y_test) ** 2).mean() / y_test.var())
    layers = {}
    for lname in ("l1", "l2", "l3"):
        layer = getattr(net, lname)
        lik = layer.likelihood
        with torch.no_grad():
            dens = {s: float(lik.density(_elements(group, i)).mean()) for s, i in CANDIDATES.items() if i is not None}
            grid = lik.grid_density()
            _, _, child = group.subgroup("so3")
            member = torch.tensor([child(g) is not None for g in lik.grid])
            so3_mass = float(grid[member].sum() / grid.sum())
        deg = layer.degree({s: i for s, i in CANDIDATES.items() if i is not None})
        fractions = {k: v["equivariant_fraction"] for k, v in deg["subgroups"].items()}
        fractions["O3"] = 1.0 - deg["nonequivariant_fraction"]
        broken = max(1.0 - fractions["O3"], 1e-12)
        layers[lname] = {"density": dens, "so3_mass": so3_mass, "equivariant_fraction": fractions,
                         "break_respecting": {k: (f - fractions["O3"]) / broken for k, f in fractions.items()
                                              if k != "O3"}}
    return {"target": name, "objective": objective, "test_r2": r2, "steps": steps, "seed": seed, "layers": layers}


def table(rows: list[dict]) -> str:
    """Two tables: λ's density on each candidate, and the layers' equivariant fractions and break shares."""
    names = [k for k in CANDIDATES if k != "O3"]
    head = ("| target | objective | test R² | layer | " + " | ".join(f"λ density on {n}" for n in names)
            + " | λ mass on SO(3) |")
    lines = [head, "|---|---|---:|---|" + "---:|" * (len(names) + 1)]
    for r in rows:
        for lname, d in r["layers"].items():
            lines.append(f"| {r['target']} | {r['objective']} | {r['test_r2']:.3f} | {lname} | "
                         + " | ".join(f"{d['density'][n]:.2f}" for n in names) + f" | {d['so3_mass']:.2f} |")
    lines += ["", "| target | objective | layer | equivariant fraction O3 | "
              + " | ".join(f"{n}: fraction (share of the break)" for n in names) + " |",
              "|---|---|---|---:|" + "---:|" * len(names)]
    for r in rows:
        for lname, d in r["layers"].items():
            f, share = d["equivariant_fraction"], d["break_respecting"]
            lines.append(f"| {r['target']} | {r['objective']} | {lname} | {f['O3']:.3f} | "
                         + " | ".join(f"{f[n]:.3f} ({share[n]:.2f})" for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["O3", "cone_O2", "full_octahedral", "trivial"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for name in args.targets:
        for objective in args.objectives:
            rows.append(run(name, args.steps, args.seed, objective))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
