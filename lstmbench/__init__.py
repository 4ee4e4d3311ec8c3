"""lstmbench: train LSTM sequence models on interchangeable backends, prove the
backends agree with a NumPy reference, and measure how much faster they are.

    import lstmbench as lb
    cfg = lb.ModelConfig(input_size=1, hidden_size=64, output_size=1)
    params = lb.init_params(cfg, seed=0)
    be = lb.get_backend("numpy")
    loss, grads = be.loss_and_grads(cfg, params, x, y)

Importing this package is cheap: no backend is imported until it is asked for.
"""

from lstmbench.config import ModelConfig, OptimizerConfig
from lstmbench.errors import (
    BackendConflictError,
    BackendError,
    BackendLoadError,
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DivergenceError,
    DTypeError,
    LstmbenchError,
    NonFiniteError,
    OutputError,
    ResourceError,
    ShapeError,
    UnknownBackendError,
    UnsupportedError,
)
from lstmbench.bench.flops import train_step_flops
from lstmbench.fused import FusedBackend
from lstmbench.optim import StepScalars, clip_scale, global_norm, init_optimizer_state, optimizer_step, step_scalars
from lstmbench.params import (
    check_params,
    init_params,
    load_into_torch,
    params_from_torch,
    params_to_torch,
)
from lstmbench.protocol import Backend, Capabilities, TrainState, default_threads
from lstmbench.training.checkpoint import load_params, save_params
from lstmbench.registry import (
    BackendInfo,
    backend_names,
    fastest_available,
    get_backend,
    list_backends,
    load_backend,
    register_backend,
    unregister_backend,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendConflictError",
    "BackendError",
    "BackendLoadError",
    "BackendInfo",
    "BackendUnavailableError",
    "Capabilities",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "DivergenceError",
    "DTypeError",
    "FusedBackend",
    "LstmbenchError",
    "ModelConfig",
    "NonFiniteError",
    "OutputError",
    "OptimizerConfig",
    "ResourceError",
    "ShapeError",
    "StepScalars",
    "TrainState",
    "UnknownBackendError",
    "UnsupportedError",
    "backend_names",
    "fastest_available",
    "check_params",
    "clip_scale",
    "default_threads",
    "get_backend",
    "global_norm",
    "init_optimizer_state",
    "init_params",
    "list_backends",
    "load_backend",
    "load_into_torch",
    "load_params",
    "optimizer_step",
    "params_from_torch",
    "params_to_torch",
    "register_backend",
    "save_params",
    "step_scalars",
    "train_step_flops",
    "unregister_backend",
]
