"""Sphinx configuration for the kfc_jax documentation site.

Sphinx with MyST-NB because the libraries kfc_jax sits on (JAX, Flax, Optax)
build their sites with it: autodoc reads the same Google-style docstrings that
pytest doctests, and MyST-NB executes notebooks and Markdown code cells at
build time, so every example on the site is run by ``make docs``.

The build needs no network: no intersphinx inventories are fetched, and the
notebooks run on a local kernel with tiny settings. ``make docs`` treats every
warning as an error.
"""

import functools
import importlib
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Mapping

from sphinx.ext import autosummary
from sphinx.util import inspect as sphinx_inspect

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

# Notebook kernels inherit this environment: CPU only, tiny quickstart.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["KFC_QUICKSTART_TINY"] = "1"
# The checkout being documented, not whatever kfc_jax is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import kfc_jax  # noqa: E402  (after sys.path)

project = "kfc_jax"
author = "kfc_jax authors"
copyright = "2026, kfc_jax authors"
release = kfc_jax.__version__
version = release

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
]

# --- Sources copied from the rest of the repository -------------------------
# The examples' RESULTS.md (with their plots and raw JSON), the benchmark
# tables and the quickstart notebook live beside the code that makes them.
# They are copied under _generated/ at every build so the pages include the
# committed files themselves, never a second copy that could drift.
GENERATED = DOCS / "_generated"


def _copy_sources() -> None:
  shutil.rmtree(GENERATED, ignore_errors=True)
  GENERATED.mkdir()
  for example in ("mnist", "kdl_mnist", "compress_mnist", "resnet_gkpd", "kconv"):
    source = ROOT / "examples" / example
    target = GENERATED / example
    target.mkdir()
    if (source / "results").is_dir():
      shutil.copytree(source / "results", target / "results")
    text = (source / "RESULTS.md").read_text()
    # The first line is the file's own title; the including page has one.
    text = text.split("\n", 1)[1]
    (target / "RESULTS.md").write_text(_link_to_copy(text, example))
  shutil.copytree(ROOT / "benchmarks" / "results", GENERATED / "benchmarks")
  for table in (GENERATED / "benchmarks").glob("*.md"):
    table.write_text(table.read_text().split("\n", 1)[1])
  shutil.copy(ROOT / "examples" / "quickstart.ipynb", GENERATED / "quickstart.ipynb")


def _link_to_copy(text: str, example: str) -> str:
  """Points ``[name](results/...)`` links at the copy, from the source root.

  An included file's links resolve against the including page, not the file.
  """
  return re.sub(
    r"\[([^\]]+)\]\((results/[^)]+)\)",
    lambda m: f"{{download}}`{m[1].strip('`')} </_generated/{example}/{m[2]}>`",
    text,
  )


_copy_sources()

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = [
  "_build",
  "README.md",  # how to build the site, for the repository's readers
  "_generated/*/RESULTS.md",
  "_generated/*/results",
  "_generated/benchmarks/*.md",
  "jupyter_execute",
]
templates_path = ["_templates"]

# --- MyST and notebook execution -----------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

# --- API reference ----------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes as a field list: autodoc documents dataclass fields as members
# too, and two descriptions of one name would be a warning.
napoleon_use_ivar = True

# Cross-references to kfc_jax names must resolve; those to other libraries
# (jax.Array, nnx.Rngs, ...) cannot without intersphinx, which needs the
# network, so they stay plain text.
nitpicky = True
nitpick_ignore_regex = [
  (r"py:.*", r"(?!kfc_jax\.).*"),
  # Private base classes and aliases named in signatures (they have no page;
  # the public classes document their members).
  (r"py:.*", r"kfc_jax(\.\w+)*\._\w+.*"),
]

# --- HTML ---------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"kfc_jax {release}"
html_theme_options = {
  "show_toc_level": 2,
  "use_download_button": True,
}
html_static_path: list[str] = []


# --- Build hooks -------------------------------------------------------------


def _resolve_public_alias(app, env, node, contnode):
  """Resolves ``kfc_jax.<module>.<Name>`` to the documented public name.

  Docstrings may name an object by the module that defines it
  (``kfc_jax.formulations.Formulation``); the reference documents it once, under
  the facade (``kfc_jax.Formulation``). The match is by object identity, so an
  internal move never breaks a link and two different objects never merge.
  """
  target = node.get("reftarget", "")
  if node.get("refdomain") != "py" or not target.startswith("kfc_jax."):
    return None
  wanted = _import_path(target)
  if wanted is None:
    return None
  domain = env.get_domain("py")
  for name, _, objtype, _, _, _ in domain.get_objects():
    public = name.startswith("kfc_jax.") and objtype != "module"
    if public and name != target and _import_path(name) is wanted:
      return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
      )
  return None


def _import_path(dotted: str):
  """The object at ``dotted`` (module path then attributes), or None."""
  parts = dotted.split(".")
  for split in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:split]))
    except ImportError:
      continue
    for attribute in parts[split:]:
      obj = getattr(obj, attribute, None)
      if obj is None:
        return None
    return obj
  return None


def _describe_builtin_constant(app, what, name, obj, options, lines):
  """Replaces a constant's inherited ``dict``/``tuple`` docstring by its keys."""
  if what == "data" and lines and obj.__doc__ == type(obj).__doc__:
    lines[:] = []
    if isinstance(obj, Mapping):
      keys = ", ".join(f"``{key!r}``" for key in obj)
      lines.append(f"A mapping with the keys {keys}.")


def _summary_not_cut_inside_literal(original):
  """Autosummary cuts summaries at ". ", also inside ``...``; keep those whole."""

  def extract_summary(doc, document):
    summary = original(doc, document)
    if summary.count("``") % 2 == 0:
      return summary
    paragraph = []
    for line in doc:
      if line.strip():
        paragraph.append(line.strip())
      elif paragraph:
        break
    return " ".join(paragraph)

  return extract_summary


autosummary.extract_summary = _summary_not_cut_inside_literal(autosummary.extract_summary)


def _constructor_signature(app, what, name, obj, options, signature, return_annotation):
  """Shows ``__init__``'s arguments for NNX classes, with short type names.

  ``nnx.Module`` and ``nnx.Variable`` construct through a metaclass
  ``__call__(*args, **kwargs)``, which autodoc would show as the signature.
  Types are shortened to their last name (``~collections.abc.Sequence`` would
  otherwise show its tilde: without intersphinx it is not a link).
  """
  if what == "class" and signature and signature.startswith("(*args"):
    init = getattr(obj, "__init__", None)
    if init is not None and init is not object.__init__:
      signature = sphinx_inspect.stringify_signature(
        sphinx_inspect.signature(init, bound_method=True),
        show_return_annotation=False,
        unqualified_typehints=True,
      )
  if not signature:
    return None
  shorten = functools.partial(re.sub, r"~(?:\w+\.)*(\w+)", r"\1")
  return shorten(signature), return_annotation and shorten(return_annotation)


def setup(app):
  app.connect("missing-reference", _resolve_public_alias)
  app.connect("autodoc-process-docstring", _describe_builtin_constant)
  app.connect("autodoc-process-signature", _constructor_signature)
