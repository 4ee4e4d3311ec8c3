"""lstmbench's built-in backends (installed as ``lstmbench_backends``).

Each registers through the ``lstmbench.backends`` entry-point group, exactly as
a third-party plugin does; nothing in the core imports this package directly.
"""
