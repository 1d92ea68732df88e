"""The examples at the top of the docs pages run as written."""
import re
from pathlib import Path

import matplotlib
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["index.md", "quickstart.md", "probabilistic.md", "metrics.md", "data.md", "migrating.md", "weight_sharing.md", "relaxed.md", "laplace.md", "distributed.md", "3d.md", "cli.md"]


@pytest.mark.parametrize("page", PAGES)
def test_first_example_runs(page, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"{page} has no python example"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], f"{page}:example", "exec"), {"__name__": "__doc_example__"})  # noqa: S102
