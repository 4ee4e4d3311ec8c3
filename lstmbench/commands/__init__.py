"""The `lstmbench` subcommands: one module each, each adding its parser with ``register(sub)``."""
