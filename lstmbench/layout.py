"""Flat parameter layout: every parameter as a slice of one contiguous vector.

Fast backends keep parameters, gradients and optimizer buffers as flat vectors
(one pass updates them all) and hand ``offs`` to their kernels; the dict of
named arrays the rest of lstmbench uses is a set of views into the vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from lstmbench.config import ModelConfig


@dataclass(frozen=True)
class Layout:
    offs: np.ndarray  # (L+1, 3) int64: offsets of W_x, W_h, b per layer; of W_y, b_y in row L
    slices: dict[str, tuple[int, int, tuple[int, ...]]]  # name -> (start, stop, shape)
    size: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> "Layout":
        slices, pos = {}, 0
        for name, shape in cfg.param_shapes().items():
            n = int(np.prod(shape))
            slices[name] = (pos, pos + n, shape)
            pos += n
        L = cfg.num_layers
        offs = np.zeros((L + 1, 3), dtype=np.int64)
        for layer in range(L):
            offs[layer] = [slices[f"l{layer}.{p}"][0] for p in ("W_x", "W_h", "b")]
        offs[L, :2] = [slices["head.W"][0], slices["head.b"][0]]
        return cls(offs, slices, pos)

    def flatten(self, arrays: Mapping[str, np.ndarray], dtype) -> np.ndarray:
        flat = np.empty(self.size, dtype=dtype)
        for name, (a, b, _) in self.slices.items():
            flat[a:b] = np.asarray(arrays[name]).ravel()
        return flat

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {name: flat[a:b].reshape(shape) for name, (a, b, shape) in self.slices.items()}
