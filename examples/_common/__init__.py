"""What the examples share; they share code only through this package.

* ``loop.py`` -- train/eval steps, epochs, the best-validation fit, orbax
  checkpoints and resuming;
* ``cnn.py`` -- the KFC paper's MNIST and SVHN CNNs and their FC variants;
* ``pipeline.py`` -- batching, data-parallel sharding, prefetch;
* ``tfds_data.py``, ``mnist_data.py`` -- TFDS datasets in memory, prepared
  offline when possible;
* ``reporting.py`` -- tables, plots, ``results.json``;
* ``configs.py``, ``cli.py`` -- the shared config fields and command lines.

Nothing here is part of the ``kfc_jax`` package; the examples import it as
``examples._common`` with the repository root on ``sys.path``.
"""
