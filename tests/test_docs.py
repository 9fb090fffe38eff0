"""The API reference (docs/api/*.md) has an entry for every public name."""

from __future__ import annotations

import importlib
import pathlib
import re
import types

import pytest

import kfc_jax

API_PAGES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"


def documented_names(pages: list[pathlib.Path]) -> set[str]:
  """Fully qualified names in the pages' autosummary lists and automodules.

  An ``automodule`` with ``:members:`` documents the names of its ``__all__``.
  """
  names = set()
  for page in pages:
    module, in_autosummary, automodule = None, False, None
    for line in page.read_text().splitlines():
      if match := re.match(r"\.\. currentmodule:: (\S+)$", line):
        module = match[1]
      elif match := re.match(r"\.\. automodule:: (\S+)$", line):
        automodule = match[1]
        names.add(automodule)
      elif automodule and re.match(r" +:members:\s*$", line):
        names.update(f"{automodule}.{n}" for n in importlib.import_module(automodule).__all__)
      elif line.startswith(".. autosummary::"):
        in_autosummary = True
      elif in_autosummary and (match := re.match(r" {3}(\w+)$", line)):
        names.add(f"{module}.{match[1]}")
      elif in_autosummary and line and not line.startswith(" "):
        in_autosummary = False
      if line and not line.startswith(" ") and not line.startswith(".. automodule::"):
        automodule = None
  return names


def automodules(pages: list[pathlib.Path]) -> list[types.ModuleType]:
  """The modules the pages document with ``automodule``."""
  found = {
    m for page in pages for m in re.findall(r"^\.\. automodule:: (\S+)$", page.read_text(), re.M)
  }
  return [importlib.import_module(name) for name in sorted(found)]


# The public facade; kfc_jax.decompose has no __all__ (its names without a
# leading underscore are public). A module with an ``__all__`` that has its own
# API page (an automodule) is held to the same rule.
FACADE = [kfc_jax, kfc_jax.nnx, kfc_jax.linen, kfc_jax.decompose]
PAGES = sorted(API_PAGES.glob("*.md"))
PUBLIC_MODULES = FACADE + [
  m for m in automodules(PAGES) if m not in FACADE and hasattr(m, "__all__")
]


def public_names(module: types.ModuleType) -> dict[str, set[str]]:
  """Each public name of ``module`` and the entries that would document it.

  A public submodule is documented by its own automodule; an object that the
  top-level package re-exports may be documented under ``kfc_jax`` instead.
  """
  names = getattr(module, "__all__", None)
  if names is None:
    names = [n for n in vars(module) if not n.startswith("_")]
  entries = {}
  for name in names:
    value = getattr(module, name)
    if isinstance(value, types.ModuleType):
      if value.__name__.startswith(module.__name__ + "."):
        entries[value.__name__] = {value.__name__}
      continue
    aliases = {f"kfc_jax.{n}" for n in kfc_jax.__all__ if getattr(kfc_jax, n) is value}
    entries[f"{module.__name__}.{name}"] = {f"{module.__name__}.{name}"} | aliases
  return entries


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_every_public_name_has_an_api_entry(module):
  documented = documented_names(PAGES)
  missing = [name for name, entries in public_names(module).items() if not entries & documented]
  assert not missing, (
    f"public names of {module.__name__} without an entry in docs/api/*.md: "
    f"{sorted(missing)}; add them to an autosummary list there."
  )


def test_every_api_entry_is_a_public_name():
  documented = documented_names(PAGES)
  pages_modules = FACADE + automodules(PAGES)  # importable, so not stale
  public = {module.__name__ for module in pages_modules} | {
    name for module in PUBLIC_MODULES for name in public_names(module)
  }
  stale = documented - public
  assert not stale, f"docs/api/*.md lists names that are not public: {sorted(stale)}"


def test_parser_finds_entries_and_modules(tmp_path):
  page = tmp_path / "page.md"
  page.write_text(
    "```{eval-rst}\n.. automodule:: pkg.sub\n```\n\n"
    "```{eval-rst}\n.. currentmodule:: pkg\n\n.. autosummary::\n"
    "   :toctree: _autosummary\n\n   alpha\n   Beta\n```\n\n   gamma\n"
    "```{eval-rst}\n.. automodule:: kfc_jax.nnx\n   :members:\n```\n"
  )
  assert documented_names([page]) == {"pkg.sub", "pkg.alpha", "pkg.Beta", "kfc_jax.nnx"} | {
    f"kfc_jax.nnx.{name}" for name in kfc_jax.nnx.__all__
  }


# A citation of docs/DESIGN.md by section number ("§4", "section 4"); its
# sections are unnumbered and cited by name, so that they can move.
SECTION_BY_NUMBER = re.compile(r"DESIGN\.md\W{0,3}(§ ?\d|[Ss]ection \d)")
REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("kfc_jax", "tests", "examples", "benchmarks", "docs", "README.md", "CHANGELOG.md")
GENERATED = ("docs/_build", "docs/_generated", "docs/jupyter_execute", "docs/api/_autosummary")


def design_citations_by_number() -> list[str]:
  """``path:line`` of every citation of DESIGN.md by section number."""
  found = []
  for source in SOURCES:
    root = REPO / source
    paths = [root] if root.is_file() else sorted(root.rglob("*"))
    for path in paths:
      relative = path.relative_to(REPO).as_posix()
      if path.suffix not in {".py", ".md", ".ipynb"} or relative.startswith(GENERATED):
        continue
      for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if SECTION_BY_NUMBER.search(line):
          found.append(f"{relative}:{number}")
  return found


def test_design_sections_are_cited_by_name():
  design = "docs/DESIGN" + ".md"  # split, or this file would cite itself
  assert SECTION_BY_NUMBER.search(f"see {design} §4 and")
  assert SECTION_BY_NUMBER.search(f"({design}, section 7)")
  assert not SECTION_BY_NUMBER.search('docs/DESIGN.md, "KFC formulations"')
  found = design_citations_by_number()
  assert not found, f"cite docs/DESIGN.md sections by name (its headings), not number: {found}"
