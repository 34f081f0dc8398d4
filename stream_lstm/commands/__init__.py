"""Subcommands of ``stream-lstm``: one module each, with ``register(subparsers)``."""
