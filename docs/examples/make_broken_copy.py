"""Copy the example plugin with one planted bug, to see the conformance kit catch it.

    python docs/examples/make_broken_copy.py DEST
    pip install --no-deps DEST            # beside the example: its own names throughout
    lstmbench check example-broken --quick   # exits 1: loss_and_grads fails at l0.W_x

The copy is the distribution ``lstmbench-example-broken``, package
``lstmbench_example_broken``, backend ``example-broken`` (the fused backend is left
out), and the gradient of every layer's W_x has the wrong sign. CI
(ci_check_example.sh) and tests/test_plugin.py check that it fails.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent / "lstmbench-example"
BROKEN_NAME = "example-broken"

# (file in the copy, text in the example, replacement): each text must occur exactly once,
# so a change to the example that these no longer match fails here, loudly
EDITS = [
    ("pyproject.toml", 'name = "lstmbench-example"', 'name = "lstmbench-example-broken"'),
    ("pyproject.toml", 'example = "lstmbench_example:ExampleBackend"',
     f'{BROKEN_NAME} = "lstmbench_example_broken:ExampleBackend"'),
    ("pyproject.toml", 'example-fused = "lstmbench_example.fused:FusedExampleBackend"\n', ""),
    ("pyproject.toml", 'packages = ["lstmbench_example"]', 'packages = ["lstmbench_example_broken"]'),
    ("lstmbench_example/__init__.py", 'name = "example"', f'name = "{BROKEN_NAME}"'),
    ("lstmbench_example/__init__.py", 'description = "example plugin: an LSTM in plain NumPy"',
     'description = "a broken copy of the example plugin: the sign of dLoss/dW_x flipped"'),
    # the planted bug
    ("lstmbench_example/lstm.py", "dW_x = x.reshape(B * T, -1).T @ flat_dz", "dW_x = -x.reshape(B * T, -1).T @ flat_dz"),
]

# what a build or a test run leaves in a source tree
LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache")


def make_broken_copy(dest: Path, src: Path = EXAMPLE) -> Path:
    """Write the broken copy of ``src`` to ``dest`` (which must not exist); returns ``dest``."""
    dest = Path(dest)
    shutil.copytree(src, dest, ignore=LEFTOVERS)
    shutil.rmtree(dest / "tests")  # they test the example's names, not the copy's
    for name, old, new in EDITS:
        path = dest / name
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"make_broken_copy: expected {old!r} once in {name}, found it {text.count(old)} times")
        path.write_text(text.replace(old, new))
    (dest / "lstmbench_example").rename(dest / "lstmbench_example_broken")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(make_broken_copy(Path(sys.argv[1])))
