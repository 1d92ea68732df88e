"""Sphinx configuration of the escnn_soft documentation site (``make docs``)."""
import escnn_soft

project = "escnn_soft"
author = "escnn_soft contributors"
release = version = escnn_soft.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

myst_enable_extensions = ["dollarmath", "amsmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# members that override escnn/torch without a docstring of their own stay out of the reference
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_numpy_docstring = False  # the docstrings are Google style

# furo: a maintained theme with one navigation tree in the sidebar (built from the toctrees of index.md) and
# code blocks that scroll sideways instead of being cut (tests/test_docs_site.py checks both in Chromium)
html_theme = "furo"
html_title = f"escnn_soft {release}"
