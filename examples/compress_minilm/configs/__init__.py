"""Configurations of the MiniLM compression example: ``default`` (the sweep)."""
