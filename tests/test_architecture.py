"""The package layering of docs/architecture.md, checked on the import statements of every module.

* the library (everything but ``doublemnist/``, ``cli.py`` and the two historical re-export modules) never imports
  the DoubleMNIST application or the command line;
* ``cli.py`` reaches the application only through ``escnn_soft.doublemnist``;
* ``laplace/training.py`` uses the evidence's public surface only (no ``ev._...``).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "escnn_soft"
APPLICATION = ("escnn_soft.doublemnist", "escnn_soft.cli", "escnn_soft.models", "escnn_soft.checkpoint")
ENTRY_POINTS = {"cli.py", "models.py", "checkpoint.py"}


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports (absolute names; ``from escnn_soft import models`` gives escnn_soft.models)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


LIBRARY = sorted(p for p in PACKAGE.rglob("*.py")
                 if "doublemnist" not in p.relative_to(PACKAGE).parts and p.relative_to(PACKAGE).as_posix()
                 not in ENTRY_POINTS)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_the_library_does_not_import_the_application(path):
    bad = sorted(n for n in _imports(path) if n.startswith(APPLICATION))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}; the library must not depend on the application"


def test_the_scan_sees_application_imports():
    """The check above can fail: the application's own modules do import each other."""
    assert any(n.startswith("escnn_soft.doublemnist") for n in _imports(PACKAGE / "doublemnist" / "run.py"))
    assert len(LIBRARY) > 30


def test_the_command_line_goes_through_the_application_package():
    imported = {n for n in _imports(PACKAGE / "cli.py") if n.startswith("escnn_soft")}
    assert imported and all(n.startswith("escnn_soft.doublemnist") for n in imported), imported


def test_marglik_training_uses_the_public_surface_of_the_evidence():
    source = (PACKAGE / "laplace" / "training.py").read_text()
    assert not re.findall(r"\bev\._\w+", source)
    assert "ev.map_loss(" in source and "ev.to_device(" in source


def test_the_historical_import_paths_are_the_application_objects():
    import escnn_soft.checkpoint as old_checkpoint
    import escnn_soft.models as old_models
    from escnn_soft import cli, doublemnist, ordering
    from escnn_soft.doublemnist import checkpoint, networks

    assert set(old_models.__all__) == set(networks.__all__)
    assert all(getattr(old_models, n) is getattr(networks, n) for n in networks.__all__)
    assert old_checkpoint.save_checkpoint is checkpoint.save_checkpoint is cli.save_checkpoint
    assert old_checkpoint.load_checkpoint is doublemnist.load_checkpoint is cli.load_checkpoint
    assert old_checkpoint.optimizer_state_by_name is ordering.optimizer_state_by_name
