"""The documentation site (Sphinx + MyST + furo, ``make docs``): it builds without a single warning, its sidebar
lists every page once, and in headless Chromium no code block is cut (docs/reliability.md, "The docs site in
a browser", is the same check by hand)."""
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="the docs site needs sphinx (the dev extra)")
pytest.importorskip("myst_parser", reason="the docs site needs myst-parser (the dev extra)")
pytest.importorskip("furo", reason="the docs site needs the furo theme (the dev extra)")

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p.stem for p in DOCS.glob("*.md") if p.stem != "index")
CHROMIUM = os.environ.get("CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)
NO_CHROMIUM = ("headless Chromium not found (install it, e.g. `apt-get install -y chromium`, or point $CHROMIUM at "
               "it); docs/reliability.md, 'The docs site in a browser', is the manual check")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("docs")
    out = tmp / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
           "-d", str(tmp / "doctrees"), str(DOCS), str(out)]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def test_site_builds_without_warnings(site):
    assert (site / "index.html").is_file()
    api = (site / "api.html").read_text()
    for name in ("ProbabilisticR2Conv", "LaplaceEvidence", "DoubleMNIST", "save_checkpoint"):
        assert name in api


class _Links(HTMLParser):
    """The hrefs of the links inside elements of class ``cls`` (furo's sidebar tree: ``sidebar-tree``), and how
    many such elements there are."""

    def __init__(self, cls: str):
        super().__init__()
        self.cls, self.trees, self.links, self._depth = cls, 0, [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if self._depth:
            self._depth += 1
            if tag == "a" and "reference" in classes:
                self.links.append(attrs.get("href"))
        elif self.cls in classes:
            self.trees += 1
            self._depth = 1

    def handle_endtag(self, tag):
        if self._depth:
            self._depth -= 1


@pytest.mark.parametrize("page", ["index", "metrics"])
def test_sidebar_lists_every_page_exactly_once(site, page):
    """One navigation tree (alabaster showed it twice: the toctrees and a hidden glob toctree of every page)."""
    html = (site / f"{page}.html").read_text()
    sidebar = _Links("sidebar-tree")
    sidebar.feed(html)
    assert sidebar.trees == 1
    own = "#" if page != "index" else None  # furo links the current page as "#"
    expected = sorted(f"{p}.html" if p != page else own for p in PAGES if (p != page or own))
    assert sorted(sidebar.links) == expected
    body = _Links("toctree-wrapper")
    body.feed(html)
    assert body.links == []  # the toctrees are hidden: no second copy of the navigation in the page body


# Runs in the page after load: for every code block and table of the article, is content wider than the block
# reachable (the block or an ancestor scrolls) or cut (an ancestor with overflow hidden/clip, or the page edge:
# furo's <html> has overflow-x: hidden)? Plus the navigation trees and their links. Written into the DOM as JSON.
_PROBE = """<script>
window.addEventListener("load", function () {
  var html = document.documentElement;
  var out = {innerWidth: window.innerWidth, pageWidth: html.scrollWidth,
             trees: document.querySelectorAll(".sidebar-tree").length,
             links: Array.prototype.map.call(document.querySelectorAll(".sidebar-tree a.reference"),
                                             function (a) { return a.getAttribute("href"); }),
             blocks: []};
  document.querySelectorAll("article pre, article table").forEach(function (block) {
    var right = block.getBoundingClientRect().left + block.scrollWidth, verdict = "fits";
    for (var el = block; el; el = el.parentElement) {
      var s = getComputedStyle(el), edge = el === html ? window.innerWidth : el.getBoundingClientRect().right;
      var overflowing = el === block ? block.scrollWidth > block.clientWidth + 1 : right > edge + 1;
      if (!overflowing) continue;
      if (s.overflowX === "auto" || s.overflowX === "scroll") { verdict = "scrolls"; break; }
      if (s.overflowX === "hidden" || s.overflowX === "clip" || el === html) {
        verdict = "cut by " + el.tagName.toLowerCase() + "." + el.className; break;
      }
    }
    out.blocks.push({tag: block.tagName.toLowerCase(), verdict: verdict, start: block.textContent.slice(0, 60)});
  });
  var node = document.createElement("script");
  node.type = "application/json"; node.id = "escnn-soft-probe"; node.textContent = JSON.stringify(out);
  document.body.appendChild(node);
});
</script>"""


def _long_code_page() -> str:
    """The page with the longest line inside a fenced code block."""
    def longest(path: Path) -> int:
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", path.read_text(), flags=re.DOTALL | re.MULTILINE)
        return max((len(line) for b in blocks for line in b.splitlines()), default=0)
    return max(PAGES, key=lambda p: longest(DOCS / f"{p}.md"))


def _chromium(url: str, width: int, height: int, profile: Path, screenshot: Path | None = None) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={width},{height}", "--virtual-time-budget=5000", "--dump-dom", url]
    if screenshot is not None:
        cmd.insert(-2, f"--screenshot={screenshot}")
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_pages_in_headless_chromium_show_one_navigation_and_cut_no_code(site, tmp_path):
    from matplotlib.image import imread

    long_page = _long_code_page()
    for page in ("index", long_page):
        probe = site / f"probe_{page}.html"
        probe.write_text((site / f"{page}.html").read_text().replace("</body>", _PROBE + "</body>"))
        for width, height in ((1280, 1000), (420, 900)):  # a desktop and a phone
            shot = tmp_path / f"{page}_{width}.png"
            dom = _chromium(probe.as_uri(), width, height, tmp_path / "profile", shot)
            found = re.search(r'<script type="application/json" id="escnn-soft-probe">(.*?)</script>', dom, re.DOTALL)
            assert found, f"{page} at {width}px: the probe did not run; DOM starts {dom[:300]!r}"
            report = json.loads(found.group(1))
            where = f"{page}.html at {width}px"
            assert report["trees"] == 1, where
            assert len(report["links"]) == len(PAGES) and len(set(report["links"])) == len(PAGES), (where, report)
            assert report["pageWidth"] <= report["innerWidth"], f"{where}: the page is wider than the window"
            cut = [b for b in report["blocks"] if b["verdict"].startswith("cut")]
            assert not cut, f"{where}: {cut}"
            if page == long_page:  # the long lines are there, and reachable by scrolling
                assert any(b["tag"] == "pre" and b["verdict"] == "scrolls" for b in report["blocks"]), where
            image = imread(shot)
            assert image.shape[:2] == (height, width), where
            assert image[..., :3].std() > 0.05, f"{where}: the screenshot is blank"
