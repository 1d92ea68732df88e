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
FourierELU → ProbabilisticLinear → FourierELU → ProbabilisticLinear to one scalar; Adam on the mean squared error +
``es.regularization_loss``. A strict O(3) network can only fit functions of |x|.

Reported per target and layer: the test R² of the network, and for each candidate subgroup the mean of λ over
its elements relative to the uniform density (``density``: > 1 where λ concentrates; finite subgroups: all
elements; continuous ones: escnn's testing elements), the mass of λ on the rotations SO(3) (the grid-quadrature
share of the SO(3) component, 1/2 for uniform λ) and the layer's ``degree()`` equivariant fraction per subgroup.

Usage::

    python benchmarks/vectors_o3.py [--targets O3 cone_O2 full_octahedral trivial] [--steps 400] [--seed 0]
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

#: candidate subgroups of O(3): name -> escnn id
CANDIDATES = {"O3": None, "SO3": "so3", "full_octahedral": (True, "octa"), "octahedral": (False, "octa"),
              "cone_O2": ("cone", -1)}


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


def run(name: str, steps: int, seed: int, n_train: int = 2048) -> dict:
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
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(steps):
        idx = torch.randint(0, n_train, (128,))
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(v_train[idx]) / scale, y_train[idx] / scale) + es.regularization_loss(net)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(v_test)
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
        deg = layer.degree()
        layers[lname] = {"density": dens, "so3_mass": so3_mass,
                         "equivariant_fraction": {k: v["equivariant_fraction"] for k, v in deg["subgroups"].items()}}
    return {"target": name, "test_r2": r2, "steps": steps, "seed": seed, "layers": layers}


def table(rows: list[dict]) -> str:
    names = [k for k in CANDIDATES if k != "O3"]
    head = ("| target | test R² | layer | " + " | ".join(f"λ density on {n}" for n in names)
            + " | λ mass on SO(3) |")
    lines = [head, "|---|---:|---|" + "---:|" * (len(names) + 1)]
    for r in rows:
        for lname, d in r["layers"].items():
            lines.append(f"| {r['target']} | {r['test_r2']:.3f} | {lname} | "
                         + " | ".join(f"{d['density'][n]:.2f}" for n in names) + f" | {d['so3_mass']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["O3", "cone_O2", "full_octahedral", "trivial"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for name in args.targets:
        rows.append(run(name, args.steps, args.seed))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
