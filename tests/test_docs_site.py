"""The documentation site (Sphinx + MyST, ``make docs``) builds without a single warning."""
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs site needs sphinx (the dev extra)")
pytest.importorskip("myst_parser", reason="the docs site needs myst-parser (the dev extra)")

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_site_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (out / "index.html").is_file()
    api = (out / "api.html").read_text()
    for name in ("ProbabilisticR2Conv", "LaplaceEvidence", "DoubleMNIST", "save_checkpoint"):
        assert name in api
