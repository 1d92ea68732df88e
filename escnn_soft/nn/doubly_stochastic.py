"""Doubly-stochastic weight sharing over a finite group (van der Linden et al., NeurIPS 2024).

A group convolution over a finite group :math:`G` uses, for every output element :math:`g`, the canonical
filter transformed by :math:`g`: :math:`W_g = P_g\\,w`. For the true group action :math:`P_g` is a
permutation (or, for rotations that do not map the pixel grid onto itself, an interpolation matrix). Here
every :math:`P_g` is learned as a soft permutation

.. math::
    P_g = S^K(\\Theta_g) \\quad(\\text{Sinkhorn operator, } K \\text{ log-space iterations; see } \\texttt{sinkhorn.py}),

optionally with :math:`P_e = I` fixed for the identity.

* :class:`DSLiftingConv` (scalar fields → regular fields of :math:`G`): one :math:`k^2\\times k^2` matrix per
  element acting on the pixels of the canonical filter :math:`w \\in \\mathbb{R}^{C_o\\times C_i\\times k^2}`,
  :math:`W[o, g, c, x] = \\sum_y P_g[x, y]\\, w[o, c, y]`.
* :class:`DSGroupConv` (regular → regular): one :math:`|G|k^2\\times |G|k^2` matrix per element acting jointly on
  the group axis and the pixels of :math:`\\kappa \\in \\mathbb{R}^{C_o\\times C_i\\times |G|k^2}`,
  :math:`W[o, g, c, (h, x)] = \\sum_{(h', y)} Q_g[(h, x), (h', y)]\\, \\kappa[o, c, (h', y)]`; the true
  :math:`Q_g = \\rho_{\\mathrm{reg}}(g)\\otimes M_g`.

The kernel is built by one ``einsum`` and applied by one ``conv2d``. Output channels are laid out as escnn's
regular fields (field-major, group axis in the order of ``G.elements``, :math:`\\rho_{\\mathrm{reg}}(g)e_h =
e_{gh}`), so with the true matrices the layer *is* escnn's regular group convolution and composes with
escnn pooling, batch-norm and non-linearities.

The true action :math:`M_g` of :math:`g` on the sampled kernel positions is escnn's own base-space action
(the one :meth:`GeometricTensor.transform` uses; ``escnn_soft._escnn.interpolate_transform_basespace``), applied
to the :math:`k^2` pixel impulses: :math:`(M_g w)(x) = w(g^{-1}x)`. It is an exact permutation for rotations by
multiples of 90 degrees and flips, and a spline interpolation matrix (bilinear by default) otherwise.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from escnn.group import Group
from escnn.gspaces import GSpace
from escnn.nn import EquivariantModule, FieldType, GeometricTensor
from scipy.optimize import linear_sum_assignment

from escnn_soft._escnn import interpolate_transform_basespace
from escnn_soft.metrics.equivariance import is_grid_exact
from escnn_soft.metrics.partition import partition_distance
from escnn_soft.nn._filter import plain_conv
from escnn_soft.nn.base import SoftModule
from escnn_soft.nn.sinkhorn import sinkhorn
from escnn_soft.subgroups import resolve_subgroup

__all__ = [
    "DSGroupConv",
    "DSLiftingConv",
    "kernel_grid_action",
    "nearest_permutation",
    "regular_permutations",
    "true_action",
]


# ---------------------------------------------------------------------------------------------------------
# the true action of G on the kernel grid
# ---------------------------------------------------------------------------------------------------------

def _check_kernel_size(kernel_size: int) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd integer >= 1, got {kernel_size!r}; an odd kernel has a "
                         f"centre pixel, which rotations and flips fix (use 3, 5, 7, ...)")


def _finite_group(gspace: GSpace, name: str = "gspace") -> Group:
    group = gspace.fibergroup
    if gspace.dimensionality != 2:
        raise ValueError(f"{name}: doubly-stochastic layers act on 2D images, got a {gspace.dimensionality}D "
                         f"gspace {gspace}; use an escnn 2D gspace (gspaces.rot2dOnR2(N), gspaces.flipRot2dOnR2(N))")
    if group.continuous:
        raise ValueError(f"{name}: {group} is not finite; doubly-stochastic sharing needs a finite group — name "
                         f"a finite subgroup, e.g. subgroup_id=4 for C4 in SO(2) or (0., 4) for D4 in O(2)")
    return group


def kernel_grid_action(gspace: GSpace, kernel_size: int, order: int = 1) -> torch.Tensor:
    """Matrices :math:`M_g` of every element of a finite 2D gspace acting on a ``k x k`` kernel grid.

    :math:`(M_g w)(x) = w(g^{-1}x)` computed with escnn's base-space action on the ``k^2`` pixel impulses:
    an exact permutation for grid-exact elements (multiples of 90 degrees, flips), a spline interpolation
    of the given ``order`` (1 = bilinear) otherwise.

    Returns:
        float64 tensor of shape ``(|G|, k^2, k^2)`` in the order of ``gspace.fibergroup.elements``.
    """
    _check_kernel_size(kernel_size)
    group = _finite_group(gspace)
    n = kernel_size ** 2
    impulses = np.eye(n).reshape(n, kernel_size, kernel_size)
    mats = []
    for g in group.elements:
        moved = interpolate_transform_basespace(gspace, impulses, g, order=order)
        mats.append(np.asarray(moved, dtype=np.float64).reshape(n, n).T)   # column j = g acting on impulse j
    return torch.from_numpy(np.ascontiguousarray(np.stack(mats)))


def _regular_matrices(group: Group) -> np.ndarray:
    """:math:`\\rho_{\\mathrm{reg}}(g)` for every element, shape ``(|G|, |G|, |G|)``, 0/1 entries."""
    rho = group.regular_representation
    return np.stack([np.rint(np.asarray(rho(g))) for g in group.elements])


def true_action(gspace: GSpace, kernel_size: int, lifting: bool = True, order: int = 1) -> torch.Tensor:
    """The matrices the learned :math:`P_g` replace: :math:`M_g` (lifting) or :math:`\\rho_{reg}(g)\\otimes M_g` (group).

    Returns:
        float64 tensor ``(|G|, n, n)`` with ``n = k^2`` (lifting) or ``n = |G| k^2`` (group layer).
    """
    M = kernel_grid_action(gspace, kernel_size, order)
    if lifting:
        return M
    R = torch.from_numpy(_regular_matrices(gspace.fibergroup))
    return torch.stack([torch.kron(R[i], M[i]) for i in range(M.shape[0])])


def nearest_permutation(P: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """The permutation :math:`\\Pi^*` maximising :math:`\\langle P, \\Pi\\rangle` (Hungarian) and the distance to it.

    Returns:
        ``(perm, dist)``: ``perm[a]`` is the column of row ``a`` in :math:`\\Pi^*`, and
        ``dist = 1 - <P, Pi*> / n``, which equals :math:`\\lVert P-\\Pi^*\\rVert_1 / 2n` for a doubly stochastic
        ``P`` (0 for a permutation, at most ``1 - 1/n``).
    """
    A = P.detach().cpu().double().numpy() if isinstance(P, torch.Tensor) else np.asarray(P, dtype=np.float64)
    rows, cols = linear_sum_assignment(A, maximize=True)
    perm = np.empty(A.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm, float(1.0 - A[rows, cols].sum() / A.shape[0])


def regular_permutations(gspace: GSpace, kernel_size: int, lifting: bool = True, order: int = 1) -> np.ndarray:
    """The true action hardened to permutations, as index maps ``perm[g, a]`` (row ``a`` → column).

    Grid-exact elements give exact permutations. For the other elements the interpolation matrix is
    hardened by the Hungarian algorithm once per coset :math:`Eg` of the grid-exact subgroup :math:`E`, and
    :math:`\\Pi_{rg} = \\Pi_r\\Pi_g` for :math:`r\\in E`, so the hardened matrices are exactly consistent with
    the grid-exact elements (a layer built from them is exactly :math:`E`-equivariant).

    Returns:
        int array ``(|G|, n)`` with ``n = k^2`` (lifting) or ``|G| k^2`` (group layer, flattened ``(h, x)``).
    """
    group = _finite_group(gspace)
    elements = list(group.elements)
    index = {g: i for i, g in enumerate(elements)}
    M = kernel_grid_action(gspace, kernel_size, order).numpy()
    perms: list[np.ndarray | None] = [None] * len(elements)
    exact = [i for i, g in enumerate(elements) if is_grid_exact(gspace, g)]
    for i in exact:
        perms[i], _ = nearest_permutation(M[i])
    for i, g in enumerate(elements):
        if perms[i] is None:
            p, _ = nearest_permutation(M[i])
            for j in exact:
                perms[index[elements[j] @ g]] = p[perms[j]]
    pix = np.stack(perms)                                                       # (|G|, k^2)
    if lifting:
        return pix
    n_pix = kernel_size ** 2
    R = _regular_matrices(group)
    out = []
    for i in range(len(elements)):
        group_perm = np.argmax(R[i], axis=1)                                    # row h -> column g^{-1} h
        out.append((group_perm[:, None] * n_pix + pix[i][None, :]).reshape(-1))
    return np.stack(out)


# ---------------------------------------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------------------------------------

def _is_regular(field_type: FieldType, group: Group) -> bool:
    reg = group.regular_representation
    return all(r == reg for r in field_type.representations)


class _DSConv(EquivariantModule, SoftModule):
    """Shared machinery of :class:`DSLiftingConv` and :class:`DSGroupConv`."""

    _lifting: bool

    def _setup(self, gspace: GSpace, out_type: FieldType | int, kernel_size: int,
               padding: int, stride: int, dilation: int, bias: bool, n_iter: int, fix_identity: bool,
               init: str, init_scale: float | None, norm_weight: float, entropy_weight: float,
               interpolation_order: int, in_channels: int) -> None:
        _check_kernel_size(kernel_size)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter: expected an integer >= 1, got {n_iter!r}; 20 is the usual choice")
        for name, value, low in (("padding", padding, 0), ("stride", stride, 1), ("dilation", dilation, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
        if isinstance(interpolation_order, bool) or not isinstance(interpolation_order, int) or \
                not 0 <= interpolation_order <= 5:
            raise ValueError(f"interpolation_order: expected a spline order 0..5, got {interpolation_order!r}; "
                             f"1 (bilinear) is the default")
        if init_scale is not None and (isinstance(init_scale, bool) or not isinstance(init_scale, (int, float))
                                       or not init_scale >= 0):
            raise ValueError(f"init_scale: expected a non-negative number or None (the default of the init), "
                             f"got {init_scale!r}")
        if init not in ("random", "regular"):
            raise ValueError(f"init: expected 'random' or 'regular', got {init!r}")
        for name, value in (("norm_weight", norm_weight), ("entropy_weight", entropy_weight)):
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
        group = gspace.fibergroup
        if isinstance(out_type, bool) or not isinstance(out_type, (int, FieldType)):
            raise TypeError(f"out_type: expected an escnn FieldType of regular fields or a number of fields, "
                            f"got {type(out_type).__name__}")
        if isinstance(out_type, int):
            if out_type < 1:
                raise ValueError(f"out_type: the number of regular fields must be >= 1, got {out_type}")
            out_type = FieldType(gspace, [group.regular_representation] * out_type)
        if out_type.gspace != gspace:
            raise ValueError(f"out_type: lives on {out_type.gspace} but the layer acts with {gspace}; build it "
                             f"as FieldType(gspace, [gspace.regular_repr] * n) on that gspace, or pass an int")
        if not _is_regular(out_type, group):
            names = sorted({r.name for r in out_type.representations})
            raise ValueError(f"out_type: doubly-stochastic layers output regular fields of {group}, got "
                             f"representations {names}; use FieldType(gspace, [gspace.regular_repr] * n)")
        self.gspace = gspace
        self.group = group
        self.out_type = out_type
        self.kernel_size = kernel_size
        self.padding = padding
        self.stride = stride
        self.dilation = dilation
        self.n_iter = n_iter
        self.fix_identity = fix_identity
        self.norm_weight = float(norm_weight)
        self.entropy_weight = float(entropy_weight)
        self.interpolation_order = interpolation_order
        self.order = group.order()
        self.out_fields = len(out_type)
        self.in_channels = in_channels

        n_pix = kernel_size ** 2
        n = n_pix if self._lifting else self.order * n_pix
        self.n = n
        self._identity_index = list(group.elements).index(group.identity)
        learned = [i for i in range(self.order) if not (fix_identity and i == self._identity_index)]
        n_learned = len(learned)
        perms = regular_permutations(gspace, kernel_size, lifting=self._lifting, order=interpolation_order)
        self.register_buffer("true_permutations", torch.from_numpy(perms), persistent=False)
        self.register_buffer("identity", torch.eye(n), persistent=False)
        if init == "regular":
            scale = 50.0 if init_scale is None else float(init_scale)
            logits = torch.full((n_learned, n, n), -scale)       # 0 on the permutation: log-sum-exps ~ 0
            for i, j in enumerate(learned):
                logits[i, torch.arange(n), torch.from_numpy(perms[j])] = 0.0
        else:
            scale = 1.0 if init_scale is None else float(init_scale)
            logits = scale * torch.rand(n_learned, n, n)
        self.logits = torch.nn.Parameter(logits)
        fan_in = in_channels * n
        self.weight = torch.nn.Parameter(torch.randn(self.out_fields, in_channels, n) * math.sqrt(2.0 / fan_in))
        self.bias = torch.nn.Parameter(torch.zeros(self.out_fields)) if bias else None

    # -- the learned matrices -----------------------------------------------------------------------------
    def representations(self) -> torch.Tensor:
        """The matrices :math:`P_g` for every element, ``(|G|, n, n)`` in the order of ``G.elements``."""
        P = sinkhorn(self.logits, self.n_iter)
        if self.fix_identity:
            e = self._identity_index
            P = torch.cat([P[:e], self.identity.to(P.dtype).unsqueeze(0), P[e:]], dim=0)
        return P

    def expand_filter(self) -> torch.Tensor:
        """The conv2d filter :math:`W` of shape ``(C_out |G|, C_in', k, k)`` built by one einsum."""
        k = self.kernel_size
        # W[o, g, c, x] = sum_y P_g[x, y] w[o, c, y]; for the group layer x = (h, pixel) flattened
        W = torch.einsum("gxy,ocy->ogcx", self.representations(), self.weight)
        in_channels = self.in_channels if self._lifting else self.in_channels * self.order
        return W.reshape(self.out_fields * self.order, in_channels, k, k)

    def expanded_bias(self) -> torch.Tensor | None:
        """The bias, one value per field repeated over its ``|G|`` channels (the trivial component)."""
        return None if self.bias is None else self.bias.repeat_interleave(self.order)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        if not isinstance(input, GeometricTensor):
            raise TypeError(f"input: expected a GeometricTensor, got {type(input).__name__}; wrap it with "
                            f"layer.in_type(tensor)")
        if input.type != self.in_type:
            raise ValueError(f"input: its field type {input.type} differs from the layer's in_type {self.in_type}")
        y = F.conv2d(input.tensor, self.expand_filter(), self.expanded_bias(), stride=self.stride,
                     padding=self.padding, dilation=self.dilation)
        return GeometricTensor(y, self.out_type)

    def evaluate_output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_type.size:
            raise ValueError(f"input_shape: expected (batch, {self.in_type.size}, H, W), got {tuple(input_shape)}")
        b, _, hi, wi = input_shape
        span = self.dilation * (self.kernel_size - 1)
        ho = (hi + 2 * self.padding - span - 1) // self.stride + 1
        wo = (wi + 2 * self.padding - span - 1) // self.stride + 1
        return b, self.out_type.size, ho, wo

    def export(self) -> torch.nn.Conv2d:
        """A plain :class:`torch.nn.Conv2d` with the current expanded filter and bias (eval mode)."""
        self.eval()
        with torch.no_grad():
            W = self.expand_filter()
            b = self.expanded_bias()
        return plain_conv(W, b, stride=self.stride, padding=self.padding, dilation=self.dilation)

    # -- regularisers and read-out ------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """``norm_weight * N(Θ) + entropy_weight * H(P)``.

        :math:`N(\\Theta) = \\operatorname{mean}\\big[\\operatorname{lse}_{\\text{row}}(\\Theta)^2\\big] +
        \\operatorname{mean}\\big[\\operatorname{lse}_{\\text{col}}(\\Theta)^2\\big]` keeps the logits centred (paper
        weight 0.1); :math:`H(P) = \\operatorname{mean}_{g, x}\\big[-\\sum_y P_g[x,y]\\log P_g[x,y]\\big]`, the
        mean row entropy of the learned matrices, is 0 exactly for permutations.
        """
        L = self.logits
        norm = torch.logsumexp(L, dim=-1).pow(2).mean() + torch.logsumexp(L, dim=-2).pow(2).mean()
        out = self.norm_weight * norm
        if self.entropy_weight > 0:
            P = sinkhorn(L, self.n_iter)
            ent = -(P * P.clamp_min(1e-30).log()).sum(dim=-1).mean()
            out = out + self.entropy_weight * ent
        return out

    @torch.no_grad()
    def degree(self) -> dict[str, Any]:
        """What the layer learned, as a JSON-able dict.

        Keys:
            ``group``: name of :math:`G`; ``order``: :math:`|G|`; ``matrix_size``: ``n``;
            ``perm_distance``: per element (``G.elements`` order), :math:`1-\\langle P_g,\\Pi^*_g\\rangle/n` with
            :math:`\\Pi^*_g` the nearest permutation (Hungarian) — 0 for a permutation;
            ``max_perm_distance``: their maximum;
            ``partition_distance``: partition distance, over the :math:`|G|\\,n` entries of the expanded filter,
            between the scheme of the hardened matrices (entry :math:`(g, x)` shares the canonical weight
            :math:`\\Pi^*_g(x)`) and the scheme of the true action of :math:`G` (:func:`regular_permutations`);
            0 means the hardened layer is escnn's regular group convolution;
            ``partition_distance_matched``: the same after matching learned matrices to group elements
            (Hungarian on their disagreement), i.e. up to relabelling the group channels — what an
            invariant read-out can identify;
            ``element_matching``: the element each learned matrix was matched to (``str``).
        """
        P = self.representations().detach().float()
        hard, dists = [], []
        for Pg in P:
            perm, d = nearest_permutation(Pg)
            hard.append(perm)
            dists.append(d)
        hard_arr = np.stack(hard)                                                # (|G|, n)
        true = self.true_permutations.cpu().numpy()
        dist = partition_distance(hard_arr.reshape(-1), true.reshape(-1))
        # match learned matrices to elements, after undoing a relabelling of the canonical weights
        inv_e = np.argsort(hard_arr[self._identity_index])
        normalised = inv_e[hard_arr]
        cost = (normalised[:, None, :] != true[None, :, :]).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        matched = np.empty_like(true)
        matched[cols] = hard_arr[rows]
        dist_matched = partition_distance(matched.reshape(-1), true.reshape(-1))
        elements = list(self.group.elements)
        return {
            "group": self.group.name,
            "order": int(self.order),
            "matrix_size": int(self.n),
            "perm_distance": [round(float(d), 6) for d in dists],
            "max_perm_distance": round(float(max(dists)), 6),
            "partition_distance": int(dist),
            "partition_distance_matched": int(dist_matched),
            "element_matching": {str(elements[r]): str(elements[c]) for r, c in zip(rows, cols)},
        }

    plot_kind = "matrices"

    def hyperparameter_parameters(self) -> dict[str, torch.Tensor]:
        """The Sinkhorn ``logits``, which the Laplace evidence tunes."""
        return {"logits": self.logits}

    @torch.no_grad()
    def plot(self):
        """The learned matrices :math:`P_g` (one panel per element of ``G.elements``, white = 1) next to the
        true action :math:`M_g` they would be for the regular group convolution; returns the figure."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        P = self.representations().detach().float().cpu().numpy()
        true = self.true_permutations.cpu().numpy()
        fig, axes = plt.subplots(2, self.order, figsize=(1.8 * self.order, 3.8), squeeze=False)
        for i, g in enumerate(self.group.elements):
            axes[0, i].imshow(P[i], cmap="gray", vmin=0.0, vmax=1.0)
            axes[0, i].set_title(str(g), fontsize=7)
            axes[1, i].imshow(np.eye(self.n)[true[i]], cmap="gray", vmin=0.0, vmax=1.0)
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        axes[0, 0].set_ylabel("learned", fontsize=8)
        axes[1, 0].set_ylabel("true action", fontsize=8)
        fig.suptitle(f"{type(self).__name__} over {self.group.name}: soft permutations", fontsize=9)
        fig.tight_layout()
        return fig


class DSLiftingConv(_DSConv):
    """Lifting convolution with doubly-stochastic weight sharing: scalar fields → regular fields of :math:`G`.

    :math:`W[o, g, c, x] = \\sum_y P_g[x, y]\\,w[o, c, y]` with :math:`P_g = S^K(\\Theta_g)` a ``k^2 x k^2`` soft
    permutation of the canonical filter's pixels (:math:`P_e = I` if ``fix_identity``), then one conv2d. With
    :math:`P_g = M_g` (the true action, ``init='regular'``) it is escnn's lifting convolution
    ``R2Conv(trivial → regular)`` for the filter :math:`w`.

    Args:
        in_type: trivial fields of a 2D gspace. If its group is finite, :math:`G` is that group (or the
            subgroup ``subgroup_id`` of it); if it is SO(2)/O(2), ``subgroup_id`` must name a finite subgroup
            (e.g. ``8`` for C8 in SO(2), ``(0., 4)`` for D4 in O(2)) and, as with
            :class:`escnn.nn.RestrictionModule`, ``out_type`` then lives on the subgroup's gspace.
        out_type: regular fields of :math:`G` (a FieldType on :math:`G`'s gspace) or their number.
        kernel_size: odd filter size ``k``.
        subgroup_id: escnn id of the finite subgroup to use (``None``: the group of ``in_type``).
        padding, stride, dilation, bias: as in :class:`escnn.nn.R2Conv` (bias: one value per field).
        n_iter: Sinkhorn iterations ``K``.
        fix_identity: fix :math:`P_e = I` (no logits for the identity).
        init: ``'random'`` (logits ``init_scale * U(0, 1)``, default scale 1: near-uniform matrices) or
            ``'regular'`` (logits 0 on the true hardened permutations and ``-init_scale`` elsewhere, default
            scale 50: the layer is then exactly :math:`G`-equivariant on grid-exact elements and its
            norm penalty is ~0).
        norm_weight, entropy_weight: weights of the two regularisers in :meth:`penalty`.
        interpolation_order: spline order of the true action for elements that are not grid-exact.
    """

    _lifting = True

    def __init__(self, in_type: FieldType, out_type: FieldType | int, kernel_size: int,
                 subgroup_id: Any | None = None, padding: int = 0, stride: int = 1, dilation: int = 1,
                 bias: bool = True, n_iter: int = 20, fix_identity: bool = True, init: str = "random",
                 init_scale: float | None = None, norm_weight: float = 0.1, entropy_weight: float = 0.0,
                 interpolation_order: int = 1) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"in_type: expected an escnn FieldType, got {type(in_type).__name__}")
        gspace = in_type.gspace
        if subgroup_id is not None:
            resolve_subgroup(gspace, subgroup_id, argname="subgroup_id")
            gspace, _, _ = gspace.restrict(subgroup_id)
            group_in_type = in_type.restrict(subgroup_id)
        else:
            if gspace.fibergroup.continuous:
                raise ValueError(f"subgroup_id: in_type lives on {gspace.fibergroup}, which is not finite, and no "
                                 f"finite subgroup was named; pass subgroup_id=N for C_N in SO(2) or "
                                 f"subgroup_id=(0., N) for D_N in O(2)")
            group_in_type = in_type
        _finite_group(gspace, "subgroup_id" if subgroup_id is not None else "in_type")
        non_trivial = sorted({r.name for r in group_in_type.representations if not r.is_trivial()})
        if non_trivial:
            raise ValueError(f"in_type: DSLiftingConv lifts scalar (trivial) fields, but in_type has fields "
                             f"{non_trivial}; use DSGroupConv for regular fields, or map to trivial fields first")
        self.in_type = in_type
        self.subgroup_id = subgroup_id
        self._setup(gspace, out_type, kernel_size, padding, stride, dilation, bias, n_iter,
                    fix_identity, init, init_scale, norm_weight, entropy_weight, interpolation_order,
                    in_channels=in_type.size)


class DSGroupConv(_DSConv):
    """Group convolution with doubly-stochastic weight sharing: regular → regular fields of a finite :math:`G`.

    :math:`W[o, g, c, (h, x)] = \\sum_{(h', y)} Q_g[(h, x), (h', y)]\\,\\kappa[o, c, (h', y)]` with
    :math:`Q_g = S^K(\\Theta_g)` a soft permutation of size :math:`|G|k^2` (as in van der Linden et al.; the
    true one is :math:`\\rho_{\\mathrm{reg}}(g)\\otimes M_g`), then one conv2d.

    Args:
        in_type: regular fields of a finite group :math:`G` on a 2D gspace.
        out_type: regular fields of the same gspace, or their number.

    The other arguments are as in :class:`DSLiftingConv`.
    """

    _lifting = False

    def __init__(self, in_type: FieldType, out_type: FieldType | int, kernel_size: int,
                 padding: int = 0, stride: int = 1, dilation: int = 1, bias: bool = True, n_iter: int = 20,
                 fix_identity: bool = True, init: str = "random", init_scale: float | None = None,
                 norm_weight: float = 0.1, entropy_weight: float = 0.0, interpolation_order: int = 1) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"in_type: expected an escnn FieldType, got {type(in_type).__name__}")
        gspace = in_type.gspace
        if gspace.fibergroup.continuous:
            raise ValueError(f"in_type: lives on {gspace.fibergroup}, which is not finite; DSGroupConv needs regular "
                             f"fields of a finite group — start the network with DSLiftingConv(..., "
                             f"subgroup_id=N) or restrict with escnn.nn.RestrictionModule(in_type, N)")
        group = _finite_group(gspace, "in_type")
        if not _is_regular(in_type, group):
            names = sorted({r.name for r in in_type.representations})
            raise ValueError(f"in_type: DSGroupConv takes regular fields of {group}, got representations "
                             f"{names}; use DSLiftingConv for scalar fields, or "
                             f"FieldType(gspace, [gspace.regular_repr] * n)")
        self.in_type = in_type
        self._setup(gspace, out_type, kernel_size, padding, stride, dilation, bias, n_iter,
                    fix_identity, init, init_scale, norm_weight, entropy_weight, interpolation_order,
                    in_channels=len(in_type))
