"""The API reference (docs/api/*.md) has an entry for every public name."""

from __future__ import annotations

import pathlib
import re
import types

import pytest

import kfc_jax

API_PAGES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"


def documented_names(pages: list[pathlib.Path]) -> set[str]:
  """Fully qualified names in the pages' autosummary lists and automodules."""
  names = set()
  for page in pages:
    module, in_autosummary = None, False
    for line in page.read_text().splitlines():
      if match := re.match(r"\.\. currentmodule:: (\S+)$", line):
        module = match[1]
      elif match := re.match(r"\.\. automodule:: (\S+)$", line):
        names.add(match[1])
      elif line.startswith(".. autosummary::"):
        in_autosummary = True
      elif in_autosummary and (match := re.match(r" {3}(\w+)$", line)):
        names.add(f"{module}.{match[1]}")
      elif in_autosummary and line and not line.startswith(" "):
        in_autosummary = False
  return names


# The public facade; kfc_jax.decompose has no __all__ (its names without a
# leading underscore are public).
PUBLIC_MODULES = [kfc_jax, kfc_jax.nnx, kfc_jax.linen, kfc_jax.decompose]


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
  documented = documented_names(sorted(API_PAGES.glob("*.md")))
  missing = [
    name for name, entries in public_names(module).items() if not entries & documented
  ]
  assert not missing, (
    f"public names of {module.__name__} without an entry in docs/api/*.md: "
    f"{sorted(missing)}; add them to an autosummary list there."
  )


def test_every_api_entry_is_a_public_name():
  documented = documented_names(sorted(API_PAGES.glob("*.md")))
  public = {module.__name__ for module in PUBLIC_MODULES} | {
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
  )
  assert documented_names([page]) == {"pkg.sub", "pkg.alpha", "pkg.Beta"}
