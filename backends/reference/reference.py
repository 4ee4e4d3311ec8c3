"""The NumPy reference backend: the definition of the answer.

Plain form on purpose: one timestep at a time, batched over the minibatch, no
fusion and no cleverness, so each line can be checked against the math.
Shapes: B batch, T steps, D_l layer input width, H hidden, O outputs, G = 4H.

    z_t = x_t @ W_x + h_{t-1} @ W_h + b          gate order i, f, g, o
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)
    y = h_T @ W_y + b_y   (many-to-one)   or   y_t = h_t @ W_y + b_y  (many-to-many)

State and lengths (../shared/design.md section 8): layer l starts from h0[l], c0[l] (zeros when
no initial state is given). Row b takes steps 0 .. len_b-1 only: after them its h and c keep
their values, so h_T is its state after its own last step (what many-to-one reads and what
forward returns as the final state); many-to-many outputs are zero at padded steps, and the
loss is the mean over valid terms only. No gradient flows into the initial state.

Dropout (design.md section 9), in training steps only (loss_and_grads with a DropoutDraw): a
layer's h sequence is multiplied by a mask of 0 and 1/(1-p) (dropout_multiplier) as it leaves
for the next layer or the head, never on the recurrent path; the gradient flows back through
the same mask. A many-to-one head reads each row's h after its last step, masked at that step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from lstmbench import Backend, Capabilities, ModelConfig
from lstmbench.config import DropoutDraw, fmix32


def sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-z) -> inf for z << 0 gives the right limit 0
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class LayerCache:
    """What one layer's forward pass keeps for the backward pass."""

    inputs: np.ndarray  # (B, T, D_l)
    h: np.ndarray  # (B, T+1, H)   h[:, 0] = h_0 (zeros, or the initial state)
    c: np.ndarray  # (B, T+1, H)   c[:, 0] = c_0
    gates: np.ndarray  # (B, T, 4H)    activated i, f, g, o
    tanh_c: np.ndarray  # (B, T, H)
    active: np.ndarray  # (B, T) bool: t < len_b, the steps row b takes
    # dropout on this layer's h as it leaves (0 or 1/(1-p)): (B, T, H) into the next layer or a
    # many-to-many head, (B, H) into a many-to-one head; None without dropout
    out_mask: np.ndarray | None = None


def active_steps(B: int, T: int, lengths: np.ndarray | None) -> np.ndarray:
    """(B, T) bool: which steps each row takes (every step without lengths)."""
    if lengths is None:
        return np.ones((B, T), dtype=bool)
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def dropout_multiplier(cfg: ModelConfig, draw: DropoutDraw, site: int, T: int, steps: np.ndarray) -> np.ndarray:
    """(B, S, H) of 0 (dropped) and 1/(1-p) (kept), in the model's dtype: the mask of ``site``
    (l: layer l's input; L: the head's) at ``steps`` (B, S), the step t of each row and position,
    for a batch of T steps (the definition of design.md section 9, on uint32, wrapping)."""
    B, H = steps.shape[0], cfg.hidden_size
    b = draw.first_row + np.arange(B, dtype=np.int64)[:, None, None]  # the row in the global minibatch
    element = ((b * T + steps[:, :, None]) * H + np.arange(H)) & 0xFFFFFFFF  # (B, S, H): ((b*T + t)*W + j)
    r = fmix32(element.astype(np.uint32) ^ np.uint32(draw.site_key(site)))
    keep = r >= np.uint32(DropoutDraw.threshold(cfg.dropout))
    return np.where(keep, DropoutDraw.scale(cfg.dropout, cfg.dtype), 0).astype(cfg.dtype)


def layer_forward(x: np.ndarray, W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray, active: np.ndarray,
                  h0: np.ndarray | None = None, c0: np.ndarray | None = None) -> LayerCache:
    B, T, _ = x.shape
    H = W_h.shape[0]
    h = np.zeros((B, T + 1, H), dtype=x.dtype)
    c = np.zeros((B, T + 1, H), dtype=x.dtype)
    if h0 is not None:
        h[:, 0], c[:, 0] = h0, c0
    gates = np.zeros((B, T, 4 * H), dtype=x.dtype)
    tanh_c = np.zeros((B, T, H), dtype=x.dtype)
    for t in range(T):
        with np.errstate(all="ignore"):  # padded steps may hold anything; their results are dropped
            z = x[:, t] @ W_x + h[:, t] @ W_h + b  # (B, 4H)
            i = sigmoid(z[:, 0:H])
            f = sigmoid(z[:, H : 2 * H])
            g = np.tanh(z[:, 2 * H : 3 * H])
            o = sigmoid(z[:, 3 * H : 4 * H])
            c_new = f * c[:, t] + i * g
            tanh_c_new = np.tanh(c_new)
        on = active[:, t, None]  # a row past its length keeps its state and caches nothing
        c[:, t + 1] = np.where(on, c_new, c[:, t])
        h[:, t + 1] = np.where(on, o * tanh_c_new, h[:, t])
        tanh_c[:, t] = np.where(on, tanh_c_new, 0)
        gates[:, t] = np.where(on, np.concatenate([i, f, g, o], axis=1), 0)
    return LayerCache(x, h, c, gates, tanh_c, active)


def layer_backward(cache: LayerCache, W_x: np.ndarray, W_h: np.ndarray, dh_out: np.ndarray):
    """Backpropagation through time for one layer.

    dh_out (B, T, H): dLoss/dh_t arriving from above (head or next layer).
    Returns dx (B, T, D_l) and the gradients of W_x, W_h, b.
    """
    B, T, _ = cache.inputs.shape
    H = W_h.shape[0]
    dW_x = np.zeros_like(W_x)
    dW_h = np.zeros_like(W_h)
    db = np.zeros(4 * H, dtype=W_x.dtype)
    dx = np.zeros_like(cache.inputs)
    dh_next = np.zeros((B, H), dtype=W_x.dtype)  # dLoss/dh_t through h_{t+1}
    dc_next = np.zeros((B, H), dtype=W_x.dtype)  # dLoss/dc_t through c_{t+1}
    for t in reversed(range(T)):
        on = cache.active[:, t, None]  # past its length a row's h and c pass through unchanged
        i, f, g, o = (cache.gates[:, t, k * H : (k + 1) * H] for k in range(4))
        tanh_c = cache.tanh_c[:, t]
        dh = dh_out[:, t] + dh_next
        dc = dh * o * (1.0 - tanh_c * tanh_c) + dc_next
        dz = np.concatenate(
            [
                dc * g * i * (1.0 - i),  # through i = sigmoid(z_i)
                dc * cache.c[:, t] * f * (1.0 - f),  # through f
                dc * i * (1.0 - g * g),  # through g = tanh(z_g)
                dh * tanh_c * o * (1.0 - o),  # through o
            ],
            axis=1,
        )  # (B, 4H)
        dW_x += cache.inputs[:, t].T @ dz  # (dz is 0 where a row is past its length; inputs are finite)
        dW_h += cache.h[:, t].T @ dz
        db += dz.sum(axis=0)
        dx[:, t] = dz @ W_x.T
        dh_next = np.where(on, dz @ W_h.T, dh)
        dc_next = np.where(on, dc * f, dc)
    return dx, dW_x, dW_h, db


def forward_with_caches(cfg: ModelConfig, params, x: np.ndarray, lengths=None, initial_state=None,
                        dropout: DropoutDraw | None = None):
    """Outputs (B, O) or (B, T, O) and the caches of every layer; with ``dropout`` (a training
    step of a model with cfg.dropout > 0) the masks of that step."""
    B, T = x.shape[0], x.shape[1]
    active = active_steps(B, T, lengths)
    masked = dropout is not None and cfg.dropout > 0
    every_step = np.broadcast_to(np.arange(T), (B, T))
    caches = []
    seq = x
    for k in range(cfg.num_layers):
        h0, c0 = (None, None) if initial_state is None else (initial_state[0][k], initial_state[1][k])
        cache = layer_forward(seq, params[f"l{k}.W_x"], params[f"l{k}.W_h"], params[f"l{k}.b"], active, h0, c0)
        caches.append(cache)
        seq = cache.h[:, 1:]  # (B, T, H): this layer's outputs feed the next
        if masked and k + 1 < cfg.num_layers:
            cache.out_mask = dropout_multiplier(cfg, dropout, k + 1, T, every_step)
            seq = seq * cache.out_mask
    top = seq if cfg.many_to_many else seq[:, -1]  # (B, T, H) or (B, H): h_T is the state after len_b
    if masked:
        last_step = (active.sum(axis=1) - 1)[:, None]  # (B, 1): the step a many-to-one head reads
        mask = dropout_multiplier(cfg, dropout, cfg.num_layers, T, every_step if cfg.many_to_many else last_step)
        caches[-1].out_mask = mask if cfg.many_to_many else mask[:, 0]
        top = top * caches[-1].out_mask
    y_hat = top @ params["head.W"] + params["head.b"]
    if cfg.many_to_many:
        y_hat = np.where(active[:, :, None], y_hat, 0).astype(x.dtype)  # padded steps: zeros, as torch pads
    return y_hat, caches


def final_state(caches: list[LayerCache]) -> tuple[np.ndarray, np.ndarray]:
    """(h_n, c_n), each (L, B, H): every row's state after its own last step."""
    return np.stack([cache.h[:, -1] for cache in caches]), np.stack([cache.c[:, -1] for cache in caches])


def loss_and_output_grad(cfg: ModelConfig, y_hat: np.ndarray, y: np.ndarray, valid: np.ndarray | None = None):
    """Mean loss over the valid terms and dLoss/dy_hat (zero at the others).

    mse:  mean over every valid output element of (y_hat - y)^2.
    xent: mean over every valid prediction of -log softmax(y_hat)[class].
    valid: (B,) or (B, T) bool, the predictions that count (None: all of them).
    """
    valid = np.ones(y_hat.shape[:-1], dtype=bool) if valid is None else valid
    if cfg.loss == "mse":
        diff = np.where(valid[..., None], y_hat - y, 0)
        n = int(valid.sum()) * cfg.output_size
        return float(np.sum(diff * diff) / n), ((2.0 / n) * diff).astype(y_hat.dtype)
    logits = y_hat.reshape(-1, cfg.output_size)  # (N, O)
    classes = y.reshape(-1)  # (N,)
    keep = valid.reshape(-1)
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable softmax
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = int(keep.sum())
    loss = -log_probs[np.arange(len(classes)), classes][keep].sum() / n
    d_logits = np.exp(log_probs)
    d_logits[np.arange(len(classes)), classes] -= 1.0
    d_logits = np.where(keep[:, None], d_logits, 0)
    return float(loss), (d_logits / n).astype(y_hat.dtype).reshape(y_hat.shape)


def loss_and_grads(cfg: ModelConfig, params, x: np.ndarray, y: np.ndarray, lengths=None, initial_state=None,
                   return_state: bool = False, dropout: DropoutDraw | None = None):
    """(loss, grads), and with ``return_state`` the final state (h_n, c_n) too (that of the
    step's own forward pass: with dropout, the masked one)."""
    y_hat, caches = forward_with_caches(cfg, params, x, lengths, initial_state, dropout)
    valid = active_steps(x.shape[0], x.shape[1], lengths) if cfg.many_to_many else None
    loss, dy = loss_and_output_grad(cfg, y_hat, y, valid)
    grads = {}
    top = caches[-1]
    top_h = top.h[:, 1:]  # (B, T, H)
    dh = np.zeros_like(top_h)  # dLoss/dh of the top layer (through its dropout mask, if any)
    if cfg.many_to_many:
        H, O = cfg.hidden_size, cfg.output_size
        head_in = top_h if top.out_mask is None else top_h * top.out_mask
        grads["head.W"] = head_in.reshape(-1, H).T @ dy.reshape(-1, O)
        grads["head.b"] = dy.reshape(-1, O).sum(axis=0)
        dh[:] = dy @ params["head.W"].T
    else:
        head_in = top_h[:, -1] if top.out_mask is None else top_h[:, -1] * top.out_mask
        grads["head.W"] = head_in.T @ dy
        grads["head.b"] = dy.sum(axis=0)
        dh[:, -1] = dy @ params["head.W"].T
    if top.out_mask is not None:
        dh = dh * (top.out_mask if cfg.many_to_many else top.out_mask[:, None])
    for k in reversed(range(cfg.num_layers)):
        if k + 1 < cfg.num_layers and caches[k].out_mask is not None:
            dh = dh * caches[k].out_mask  # dx of layer k+1 is the gradient of layer k's masked output
        dh, grads[f"l{k}.W_x"], grads[f"l{k}.W_h"], grads[f"l{k}.b"] = layer_backward(
            caches[k], params[f"l{k}.W_x"], params[f"l{k}.W_h"], dh
        )
    grads = {name: grads[name] for name in cfg.param_shapes()}
    return (loss, grads, final_state(caches)) if return_state else (loss, grads)


class NumpyReference(Backend):
    """Plain NumPy; BLAS threads limited to the backend's thread count."""

    name = "numpy"
    description = "NumPy reference: the definition of the answer (BLAS threads only)"
    capabilities = Capabilities(sequences=True, dropout=True)

    def __init__(self) -> None:
        super().__init__()
        self._blas = ThreadpoolController()

    def runtime_info(self):
        from lstmbench.bench.peak import blas_restriction

        blas = [f"{lib['internal_api']} {lib.get('architecture', '?')} kernel ({lib['num_threads']} threads)"
                for lib in self._blas.info() if lib.get("user_api") == "blas"]
        info = {"threads": self.threads, "blas": ", ".join(blas) or "none found"}
        if restriction := blas_restriction():
            info["blas_restricted"] = restriction
        return info

    def _forward(self, cfg, params, x, lengths=None, initial_state=None, return_state=False):
        with self._blas.limit(limits=self.threads, user_api="blas"):
            y_hat, caches = forward_with_caches(cfg, params, x, lengths, initial_state)
        return (y_hat, final_state(caches)) if return_state else y_hat

    def _loss_and_grads(self, cfg, params, x, y, lengths=None, initial_state=None, dropout=None):
        with self._blas.limit(limits=self.threads, user_api="blas"):
            return loss_and_grads(cfg, params, x, y, lengths, initial_state, dropout=dropout)

    def _train_step(self, state, x, y, return_state=False, **sequences):
        if not return_state:
            return super()._train_step(state, x, y, **sequences)
        # a step that carries the state: the final state comes from the same forward pass
        with self._blas.limit(limits=self.threads, user_api="blas"):
            loss, grads, final = loss_and_grads(state.cfg, state.params, x, y, return_state=True, **sequences)
        return self._apply_gradients(state, loss, grads), final
