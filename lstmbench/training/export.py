"""Models leaving lstmbench: a checkpoint of `lstmbench train` as a torch file, an ONNX graph or a
safetensors file, each carrying the model's configuration and its scaler or vocabulary
(design.md section 11).

- torch: ``{"state_dict": ..., "config": ...}`` of plain tensors, dicts, lists, strings and
  numbers (``torch.load(FILE, weights_only=True)`` reads it), keyed for
  ``nn.LSTM(batch_first=True)`` as ``lstm.*`` and ``nn.Linear`` as ``head.*``; W_x^T, W_h^T,
  b as bias_ih and zeros as bias_hh; the checkpoint's dtype.
- onnx: input ``x`` (batch, time, features), output ``y`` ((batch, outputs) from the last step,
  or (batch, time, outputs)), one standard ``LSTM`` node per layer (gates reordered to ONNX's
  i, o, f, c), the head as MatMul + Add, float32, the configuration as metadata_props (JSON).
- safetensors: the parameters as they are, with the configuration as JSON metadata.

The configuration (``export_config``) is the same dict in all three: ``model`` (ModelConfig),
``task``, and for a series model ``scaler``, ``columns``, ``target_column``, ``window``,
``horizon``; for a text model ``vocabulary`` and ``seq_len``.
"""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lstmbench.config import ModelConfig
from lstmbench.errors import CheckpointError, ConfigError, LstmbenchError, OutputError
from lstmbench.params import params_to_torch
from lstmbench.training.checkpoint import (
    BEST_CHECKPOINT,
    Checkpoint,
    atomic_write,
    check_output_dir,
    load_checkpoint,
)

FORMATS = ("torch", "onnx", "safetensors")
INSTALL = "pip install 'lstmbench[export]'"
ONNX_OPSET = 17
#: lstmbench's gate blocks are i, f, g, o; ONNX's LSTM takes i, o, f, c
ONNX_GATE_ORDER = (0, 3, 1, 2)
#: what each format needs, beyond lstmbench's own dependencies
NEEDS = {"torch": ("torch",), "onnx": ("onnx",), "safetensors": ("safetensors",)}
#: meta entries of a checkpoint that travel with the model, per task (the rest is the run's history)
TASK_KEYS = {"series": ("window", "horizon", "columns", "target_column", "series", "min_length",
                        "target_transform"),  # "diff": the outputs are changes from the last value
             "text": ("seq_len", "per_line", "stateful")}


class ExportError(LstmbenchError, RuntimeError):
    """A model cannot be exported: the format needs a package that is not installed."""


def require(module: str, fmt: str):
    """Import ``module`` for ``--format fmt``, or an ExportError that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if module == "torch":
            how = ("lstmbench does not install torch; pip install torch (pytorch.org shows the build for "
                   "your machine)")
        else:
            how = f"install the export extra: {INSTALL}"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"--format {fmt} needs the Python module {module!r}, which cannot be imported "
                          f"({first}); {how}") from None


def checkpoint_path(source: str | Path) -> Path:
    """The checkpoint a run folder or a file names: a run folder's best.npz, or the file itself."""
    source = Path(source)
    if source.is_dir():
        best = source / BEST_CHECKPOINT
        if not best.is_file():
            raise CheckpointError(f"{source} is a folder without {BEST_CHECKPOINT}: not a run folder of "
                                  "`lstmbench train`; name a run folder or a checkpoint (.npz) file")
        return best
    return source


def load_for_export(source: str | Path) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint ``source`` names (a run folder or a .npz file) and its export configuration."""
    path = checkpoint_path(source)
    ckpt = load_checkpoint(path)
    return ckpt, export_config(ckpt, path)


def export_config(ckpt: Checkpoint, path: str | Path = "checkpoint") -> dict[str, Any]:
    """The model's configuration and what its inputs and outputs mean (JSON-ready): ``model``,
    ``task``, and the scaler or vocabulary with the task's shape (window, columns, seq_len ...).
    A checkpoint of lstmbench.save_params has no task: its configuration is the model alone."""
    config: dict[str, Any] = {"model": ckpt.model.to_dict()}
    meta = ckpt.meta
    if "task" not in meta:
        return config
    # the experiment machinery (data, metrics), imported only for a run's checkpoint
    from lstmbench.training.experiment import check_meta

    task = check_meta(ckpt.model, meta, path)
    config["task"] = task
    config.update({key: meta[key] for key in TASK_KEYS[task] if key in meta})
    if task == "series":
        config["scaler"] = meta["scaler"]
    else:
        config["vocabulary"] = meta["vocab"]
    return config


# --- torch ---------------------------------------------------------------------------------


def torch_state_dict(params: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The state_dict of nn.LSTM (as ``lstm``) + nn.Linear (as ``head``), as numpy arrays."""
    return {(name if name.startswith("head.") else f"lstm.{name}"): value
            for name, value in params_to_torch(params, cfg).items()}


def torch_bytes(params: Mapping[str, np.ndarray], cfg: ModelConfig, config: dict[str, Any]) -> bytes:
    """A file that ``torch.load(FILE, weights_only=True)`` reads as {"state_dict", "config"}."""
    torch = require("torch", "torch")
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in torch_state_dict(params, cfg).items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "config": json.loads(json.dumps(config))}, buffer)
    return buffer.getvalue()


# --- ONNX ----------------------------------------------------------------------------------


def onnx_gates(block: np.ndarray, hidden: int) -> np.ndarray:
    """``block``'s rows (4H first) from lstmbench's gate order i, f, g, o to ONNX's i, o, f, c."""
    return np.concatenate([block[g * hidden : (g + 1) * hidden] for g in ONNX_GATE_ORDER])


def onnx_layer_weights(params: Mapping[str, np.ndarray], cfg: ModelConfig, k: int) -> tuple[np.ndarray, ...]:
    """Layer ``k``'s ONNX LSTM inputs W [1, 4H, D_k], R [1, 4H, H], B [1, 8H] (float32)."""
    H = cfg.hidden_size
    W = onnx_gates(np.asarray(params[f"l{k}.W_x"]).T, H)[None]
    R = onnx_gates(np.asarray(params[f"l{k}.W_h"]).T, H)[None]
    b = onnx_gates(np.asarray(params[f"l{k}.b"]), H)
    B = np.concatenate([b, np.zeros_like(b)])[None]  # Wb (the whole bias), then Rb = 0
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (W, R, B))


def onnx_model(params: Mapping[str, np.ndarray], cfg: ModelConfig, config: dict[str, Any]):
    """One ONNX graph: x (batch, time, D) -> y, checked by onnx.checker. onnxruntime runs the LSTM
    operator only time-major (layout 0), so x is transposed once on the way in."""
    onnx = require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    params_to_torch(params, cfg)  # checks names, shapes and dtype
    inits = [numpy_helper.from_array(np.array(a, dtype=np.int64), n) for n, a in (("axis0", [0]), ("axis1", [1]))]
    nodes = [helper.make_node("Transpose", ["x"], ["x_tbd"], perm=[1, 0, 2], name="time_major")]
    seq = "x_tbd"  # (T, B, D_k)
    last = cfg.num_layers - 1
    for k in range(cfg.num_layers):
        for suffix, array in zip("WRB", onnx_layer_weights(params, cfg, k)):
            inits.append(numpy_helper.from_array(array, f"l{k}.{suffix}"))
        final = k == last and not cfg.many_to_many  # only h_T of the top layer is used
        outputs = ["", f"l{k}.Y_h"] if final else [f"l{k}.Y"]
        nodes.append(helper.make_node("LSTM", [seq, f"l{k}.W", f"l{k}.R", f"l{k}.B"], outputs,
                                      hidden_size=cfg.hidden_size, name=f"lstm_l{k}"))
        if final:  # Y_h (1, B, H) -> (B, H)
            nodes.append(helper.make_node("Squeeze", [f"l{k}.Y_h", "axis0"], ["top"], name="last_step"))
        else:  # Y (T, 1, B, H) -> (T, B, H)
            seq = f"l{k}.h"
            nodes.append(helper.make_node("Squeeze", [f"l{k}.Y", "axis1"], [seq], name=f"l{k}.squeeze"))
    if cfg.many_to_many:
        nodes.append(helper.make_node("Transpose", [seq], ["top"], perm=[1, 0, 2], name="batch_major"))
    inits += [numpy_helper.from_array(np.asarray(params[n], dtype=np.float32), n) for n in ("head.W", "head.b")]
    nodes += [helper.make_node("MatMul", ["top", "head.W"], ["head.Wh"], name="head_matmul"),
              helper.make_node("Add", ["head.Wh", "head.b"], ["y"], name="head_add")]
    used = {name for node in nodes for name in node.input}
    inits = [t for t in inits if t.name in used]  # the Squeeze axes a model of its shape needs
    out_shape = ["batch", "time", cfg.output_size] if cfg.many_to_many else ["batch", cfg.output_size]
    graph = helper.make_graph(
        nodes, "lstmbench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", cfg.input_size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="lstmbench")
    model.ir_version = min(model.ir_version, 8)  # opset 17's IR: older runtimes load it too
    helper.set_model_props(model, {key: json.dumps(value) for key, value in config.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_bytes(params: Mapping[str, np.ndarray], cfg: ModelConfig, config: dict[str, Any]) -> bytes:
    return onnx_model(params, cfg, config).SerializeToString()


# --- safetensors ---------------------------------------------------------------------------


def safetensors_bytes(params: Mapping[str, np.ndarray], cfg: ModelConfig, config: dict[str, Any]) -> bytes:
    """The parameters under lstmbench's own names, bit for bit; the configuration as JSON metadata
    (one JSON string per key of ``config``)."""
    st = require("safetensors.numpy", "safetensors")
    params_to_torch(params, cfg)  # checks names, shapes and dtype
    tensors = {name: np.ascontiguousarray(params[name]) for name in cfg.param_shapes()}
    return st.save(tensors, metadata={key: json.dumps(value) for key, value in config.items()})


WRITERS = {"torch": torch_bytes, "onnx": onnx_bytes, "safetensors": safetensors_bytes}
#: the usual file name suffix of each format
SUFFIX = {"torch": "pt", "onnx": "onnx", "safetensors": "safetensors"}


def export(source: str | Path, fmt: str, out: str | Path) -> tuple[Checkpoint, dict[str, Any]]:
    """Write the model of ``source`` (a run folder or a checkpoint) to ``out`` in ``fmt``, atomically:
    ``out`` is either the whole file or untouched. Returns the checkpoint and its configuration."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for module in NEEDS[fmt]:  # before any work: a missing package is the first thing to say
        require(module, fmt)
    ckpt, config = load_for_export(source)
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; name the file to write, e.g. {out / ('model.' + SUFFIX[fmt])}")
    if out.exists() and out.resolve() == checkpoint_path(source).resolve():
        raise OutputError(f"--out {out} is the checkpoint being exported; name another file")
    check_output_dir(out.parent, what=f"--out {out}: its folder")  # creates nothing
    data = WRITERS[fmt](ckpt.params, ckpt.model, config)
    atomic_write(out, lambda f: f.write(data))
    return ckpt, config
