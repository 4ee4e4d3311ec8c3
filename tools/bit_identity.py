"""Train a few steps of several float64 models on every CPU backend (and cuda in the simulator
with --cuda) and save the parameters, or compare two such files bit for bit.

A refactoring that must not change the numbers is checked by running this before and after it:

    python tools/bit_identity.py save before.npz          # at the commit before the change
    python tools/bit_identity.py save after.npz           # at the change
    python tools/bit_identity.py compare before.npz after.npz

The thread count is fixed (2); since issue 18 the bits do not depend on it (docs/determinism.md),
but a fixed count keeps files from before that comparable.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import lstmbench as lb

#: (name, model, optimizer): both losses, 1 to 3 layers, many-to-one and many-to-many, SGD with
#: momentum and Adam with clipping, and a one-hot input (the C kernel's gather path)
MODELS = [
    ("mse-1layer-sgd-momentum", dict(input_size=3, hidden_size=7, output_size=2),
     lb.OptimizerConfig("sgd", lr=0.05, momentum=0.9)),
    ("mse-2layer-adam-clip", dict(input_size=2, hidden_size=16, output_size=3, num_layers=2),
     lb.OptimizerConfig("adam", lr=0.01, clip_norm=0.5)),
    ("xent-3layer-adam", dict(input_size=5, hidden_size=9, output_size=5, num_layers=3, loss="xent",
                              many_to_many=True), lb.OptimizerConfig("adam", lr=0.02)),
    ("xent-onehot-sgd-clip", dict(input_size=6, hidden_size=12, output_size=6, loss="xent", many_to_many=True),
     lb.OptimizerConfig("sgd", lr=0.1, clip_norm=1.0)),
    ("mse-many-to-many-adam", dict(input_size=1, hidden_size=33, output_size=1, many_to_many=True),
     lb.OptimizerConfig("adam", lr=0.005)),
]
BATCH, STEPS, TRAIN_STEPS, THREADS = 6, 5, 4, 2


def data(cfg: lb.ModelConfig, seed: int, one_hot: bool):
    rng = np.random.default_rng(seed)
    if one_hot:
        x = np.eye(cfg.input_size)[rng.integers(0, cfg.input_size, (BATCH, STEPS))]
    else:
        x = rng.standard_normal((BATCH, STEPS, cfg.input_size))
    lead = (BATCH, STEPS) if cfg.many_to_many else (BATCH,)
    if cfg.loss == "xent":
        return x, rng.integers(0, cfg.output_size, lead)
    return x, rng.standard_normal((*lead, cfg.output_size))


def variants(backends: list[str]) -> list[tuple[str, str, str | None, bool]]:
    """(label, backend, parallel plan, with a gradient hook): each fast backend also with its
    threads sharing hidden units, and with the data-parallel gradient hook (an identity here),
    which takes the unfused path of a training step."""
    out = []
    for name in backends:
        out.append((name, name, None, False))
        if name in ("c", "numba"):
            out.append((f"{name}:units", name, "units", False))
        if name != "numpy":
            out.append((f"{name}+hook", name, None, True))
    return out


def train_all(backends: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for label_backend, name, parallel, hook in variants(backends):
        backend = lb.get_backend(name)
        backend.set_threads(min(THREADS, lb.default_threads()))
        if parallel:
            backend.parallel = parallel
        for k, (label, model, opt) in enumerate(MODELS):
            cfg = lb.ModelConfig(dtype="float64", **model)
            x, y = data(cfg, k, one_hot="onehot" in label)
            state = backend.init_state(cfg, lb.init_params(cfg, seed=k), opt)
            if hook:
                state.gradient_hook = lambda grad, loss: loss
            losses = [backend.train_step(state, x, y) for _ in range(TRAIN_STEPS)]
            out[f"{label_backend}/{label}/losses"] = np.array(losses)
            for p, v in backend.get_params(state).items():
                out[f"{label_backend}/{label}/{p}"] = v
            for s, v in backend.get_optimizer_state(state).items():
                out[f"{label_backend}/{label}/opt/{s}"] = np.asarray(v)
        if parallel:
            backend.parallel = "auto"
    return out


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    differ = [k for k in a.files if k not in b.files or a[k].tobytes() != b[k].tobytes()]
    missing = [k for k in b.files if k not in a.files]
    for k in differ[:20]:
        print(f"differs: {k}")
    print(f"{len(a.files)} arrays compared: {len(differ)} differ, {len(missing)} only in {b_path}")
    return 1 if differ or missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    save = sub.add_parser("save")
    save.add_argument("path")
    save.add_argument("--cuda", action="store_true", help="also cuda, in Numba's CUDA simulator")
    cmp = sub.add_parser("compare")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args()
    if args.what == "compare":
        return compare(args.a, args.b)
    backends = ["numpy", "numba", "c"]
    if args.cuda:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        backends.append("cuda")
    arrays = train_all(backends)
    np.savez(args.path, **arrays)
    print(f"wrote {len(arrays)} arrays to {args.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
