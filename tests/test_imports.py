"""No private name is used outside its package.

A private name (a function, class or constant starting with ``_``) belongs to
the package whose directory holds its module; other packages import public
names only. Private *modules* are fine (``from kfc_jax.ops import _kron``, as
Optax's ``_src``), but not their private names (``_kron._factored`` from
``kfc_jax.layers``). The walk reads the source (ast), lazy imports inside
functions included, so it needs no import of the library.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kfc_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str) -> str:
  """The package (directory) a module lives in."""
  path = MODULES[module]
  return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _is_private(name: str) -> bool:
  return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_from(node: ast.ImportFrom, module: str) -> str | None:
  if not node.level:
    return node.module
  base = _package_of(module).split(".")
  base = base[: len(base) - node.level + 1]
  return ".".join(base + ([node.module] if node.module else []))


def _violations(module: str, source: str | None = None) -> list[str]:
  """``"line: what"`` for each private name ``module`` takes from another package."""
  here = _package_of(module)
  if source is None:
    source = MODULES[module].read_text()
  tree = ast.parse(source, str(MODULES[module]))
  aliases: dict[str, str] = {}  # local name -> kfc_jax module it is bound to
  found = []

  def check(owner: str, name: str, line: int) -> None:
    if f"{owner}.{name}" in MODULES or not _is_private(name):
      return
    if _package_of(owner) != here:
      found.append(f"{line}: {owner}.{name} (private to {_package_of(owner)})")

  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "kfc_jax":
          aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "kfc_jax"
    elif isinstance(node, ast.ImportFrom):
      source = _resolve_from(node, module)
      if source in MODULES:
        for a in node.names:
          check(source, a.name, node.lineno)
          if f"{source}.{a.name}" in MODULES:
            aliases[a.asname or a.name] = f"{source}.{a.name}"
  for node in ast.walk(tree):
    if not isinstance(node, ast.Attribute):
      continue
    chain = []
    base = node
    while isinstance(base, ast.Attribute):
      chain.append(base.attr)
      base = base.value
    if not isinstance(base, ast.Name) or base.id not in aliases:
      continue
    owner = aliases[base.id]
    for attr in reversed(chain):
      if f"{owner}.{attr}" not in MODULES:
        check(owner, attr, node.lineno)
        break
      owner = f"{owner}.{attr}"
  return sorted(set(found))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_from_another_package(module):
  assert _violations(module) == [], (
    f"{module} uses private names of other packages; import a public name"
    " (kfc_jax/_checks.py holds the shared argument checks)"
  )


def test_the_walk_finds_what_it_must(monkeypatch):
  # A probe module in kfc_jax.layers takes private names of kfc_jax.ops four
  # ways; the same source in kfc_jax.ops is within its package.
  source = (
    "from kfc_jax.ops._kron import _factored\n"
    "from kfc_jax.ops import _kron\n"
    "import kfc_jax.ops._conv as conv_module\n"
    "import kfc_jax\n"
    "_kron._chunked\n"
    "def f():\n"
    "  return conv_module._factored, kfc_jax.ops._kron._factored\n"
    "_kron.kron_matmul, kfc_jax.__version__\n"
  )
  for where in ("layers", "ops"):
    monkeypatch.setitem(MODULES, f"kfc_jax.{where}._probe", PACKAGE / where / "_probe.py")
  assert _violations("kfc_jax.ops._probe", source) == []
  owner = "(private to kfc_jax.ops)"
  assert _violations("kfc_jax.layers._probe", source) == [
    f"1: kfc_jax.ops._kron._factored {owner}",
    f"5: kfc_jax.ops._kron._chunked {owner}",
    f"7: kfc_jax.ops._conv._factored {owner}",
    f"7: kfc_jax.ops._kron._factored {owner}",
  ]
