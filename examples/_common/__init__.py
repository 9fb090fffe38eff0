"""Utilities shared by the examples: TFDS loading, input pipeline, reports.

Nothing here is part of the ``kfc_jax`` package; the examples import it as
``examples._common`` with the repository root on ``sys.path``.
"""
