"""An offline English corpus from text that ships with Python and its packages.

Sources, read in sorted order and never imported or fetched:

1. **Python's standard library docstrings**: every ``.py`` file under
   ``sysconfig.get_paths()["stdlib"]`` (its ``test``, ``idlelib``,
   ``lib2to3``, ``site-packages``, ``tkinter`` and ``turtledemo`` folders
   left out), parsed with ``ast`` for the docstrings of modules, classes and
   functions.
2. **The docstrings of the packages this project installs** (``pip install
   -e '.[examples]'``), the same way: NumPy, SciPy, JAX, Flax, Optax, Orbax,
   Matplotlib and TensorFlow Datasets (``DOCUMENTED_PACKAGES``; their
   ``test``/``tests``/``testing`` folders left out), then their descriptions
   (``METADATA``) and license files.

Text is cut into paragraphs, lines joined, and split into sentences at
``. ``/``? ``/``! `` before a capital letter. A sentence is kept if it has
6 to 40 words, starts with a capital letter, ends with ``.``, ``?`` or ``!``,
is at least 75% letters and spaces, has no code markers (``>>>``, ``::``,
``==``, ``()``, ``_``, backticks, braces, ``http``) and is not a repeat
(case-insensitive). The evaluation set is the sentences whose SHA-256 hash is
0 mod ``eval_every`` (5% by default), the distillation set the rest: the split
depends on each sentence alone, not on what else the environment holds.

The corpus therefore depends on the Python version and those packages'
versions; :func:`build_corpus` records both, and :func:`load_or_build` caches the result
as JSON under the work directory.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import pathlib
import platform
import re
import sysconfig
from collections.abc import Iterable, Iterator

SKIPPED_STDLIB_DIRS = (
  "test",
  "tests",
  "idlelib",
  "lib2to3",
  "site-packages",
  "dist-packages",
  "tkinter",
  "turtledemo",
  "__pycache__",
)
MIN_WORDS, MAX_WORDS = 6, 40
CODE_MARKERS = (
  ">>>",
  "::",
  "==",
  "()",
  "_",
  "`",
  "{",
  "}",
  "http",
  "www.",
  "\\",
  "|",
  "<",
  ">",
  "--",
  "..",
  "@",
  "#",
  "*",
  "~",
  "^",
  "Copyright",
  "(c)",
)
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")
_LETTERS = re.compile(r"[A-Za-z ]")


# (import name, distribution name), in the order they are read.
DOCUMENTED_PACKAGES = (
  ("numpy", "numpy"),
  ("scipy", "scipy"),
  ("jax", "jax"),
  ("flax", "flax"),
  ("optax", "optax"),
  ("orbax", "orbax-checkpoint"),
  ("matplotlib", "matplotlib"),
  ("tensorflow_datasets", "tensorflow-datasets"),
)
SKIPPED_PACKAGE_DIRS = ("test", "tests", "testing", "__pycache__")


def _docstrings(
  root: pathlib.Path, skipped: tuple[str, ...], label: str
) -> Iterator[tuple[str, str]]:
  """``(source, docstring)`` of every module, class and function under ``root``."""
  for path in sorted(root.rglob("*.py")):
    relative = path.relative_to(root)
    if any(part in skipped for part in relative.parts[:-1]):
      continue
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # a few files are templates or in other encodings
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node, clean=True)
        if doc:
          yield f"{label}/{relative.as_posix()}", doc


def stdlib_docstrings() -> Iterator[tuple[str, str]]:
  """``(source, docstring)`` of every stdlib module, class and function."""
  root = pathlib.Path(sysconfig.get_paths()["stdlib"])
  yield from _docstrings(root, SKIPPED_STDLIB_DIRS, "stdlib")


def package_versions() -> dict[str, str | None]:
  """Version of each ``DOCUMENTED_PACKAGES`` distribution (``None``: absent)."""
  versions = {}
  for _, dist_name in DOCUMENTED_PACKAGES:
    try:
      versions[dist_name] = importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
      versions[dist_name] = None
  return versions


def package_texts() -> Iterator[tuple[str, str]]:
  """``(source, text)``: docstrings, description and licenses of each package."""
  for import_name, _ in DOCUMENTED_PACKAGES:
    spec = importlib.util.find_spec(import_name)  # locates; does not import
    for location in sorted((spec and spec.submodule_search_locations) or ()):
      yield from _docstrings(pathlib.Path(location), SKIPPED_PACKAGE_DIRS, f"package/{import_name}")
  for _, dist_name in DOCUMENTED_PACKAGES:
    try:
      dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
      continue
    description = dist.metadata.get_payload() or dist.metadata.get("Description", "")
    if isinstance(description, str) and description.strip():
      yield f"metadata/{dist_name}/METADATA", description
    for file in sorted(dist.files or (), key=str):
      parts = pathlib.PurePosixPath(str(file)).parts
      base = parts[-1].upper()
      in_info = parts[0].endswith((".dist-info", ".egg-info"))
      if in_info and (
        base.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")) or "licenses" in parts
      ):
        try:
          text = pathlib.Path(dist.locate_file(file)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
          continue
        yield f"metadata/{dist_name}/{'/'.join(parts[1:])}", text


def split_sentences(text: str) -> Iterator[str]:
  """Sentences of ``text``: paragraphs joined into lines, split at ends."""
  for paragraph in re.split(r"\n\s*\n", text):
    line = " ".join(paragraph.split())
    if line:
      yield from _SENTENCE_END.split(line)


def keep_sentence(sentence: str) -> bool:
  """The corpus filter (see the module docstring)."""
  words = sentence.split()
  if not MIN_WORDS <= len(words) <= MAX_WORDS:
    return False
  if not sentence[0].isupper() or sentence[-1] not in ".?!":
    return False
  if any(marker in sentence for marker in CODE_MARKERS):
    return False
  if not sentence.isascii():
    return False
  return len(_LETTERS.findall(sentence)) >= 0.75 * len(sentence)


def sentence_hash(sentence: str) -> int:
  return int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "big")


def build_corpus(sources: Iterable[tuple[str, str]] | None = None, eval_every: int = 20) -> dict:
  """Distillation and evaluation sentences, disjoint, with their provenance.

  Args:
    sources: ``(source, text)`` pairs; default: stdlib docstrings, then the
      ``DOCUMENTED_PACKAGES``' docstrings, descriptions and licenses.
    eval_every: a sentence goes to evaluation when its hash is 0 mod this.

  Returns:
    A dict with ``"distill"`` and ``"eval"`` (lists of sentences in source
    order), ``"sources"`` (sentences kept per source kind), ``"python"``.

  Raises:
    ValueError: ``eval_every`` is not an int >= 2.
  """
  if not isinstance(eval_every, int) or eval_every < 2:
    raise ValueError(f"eval_every must be an int >= 2, got {eval_every!r}.")
  if sources is None:
    sources = _chain(stdlib_docstrings(), package_texts())
  seen, distill, evaluation, counts = set(), [], [], {}
  for source, text in sources:
    for sentence in split_sentences(text):
      key = sentence.lower()
      if key in seen or not keep_sentence(sentence):
        continue
      seen.add(key)
      kind = source.split("/")[0]
      counts[kind] = counts.get(kind, 0) + 1
      (evaluation if sentence_hash(key) % eval_every == 0 else distill).append(sentence)
  return {
    "distill": distill,
    "eval": evaluation,
    "sources": counts,
    "python": platform.python_version(),
    "packages": package_versions(),
    "eval_every": eval_every,
  }


def _chain(*iterables):
  for iterable in iterables:
    yield from iterable


def load_or_build(
  workdir: str | pathlib.Path, min_distill: int = 20_000, min_eval: int = 1_000
) -> dict:
  """The corpus cached at ``<workdir>/corpus.json`` (built on first use).

  Raises:
    ValueError: the environment yields fewer sentences than asked for.
  """
  path = pathlib.Path(workdir) / "corpus.json"
  if path.is_file():
    corpus = json.loads(path.read_text())
  else:
    corpus = build_corpus()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(corpus))
  if len(corpus["distill"]) < min_distill or len(corpus["eval"]) < min_eval:
    raise ValueError(
      f"The offline corpus has {len(corpus['distill'])} distillation and "
      f"{len(corpus['eval'])} evaluation sentences; needs {min_distill} and "
      f"{min_eval} (delete {path} to rebuild it in a richer environment)."
    )
  return corpus
