"""The LSTM of the example backend in plain NumPy: the part you replace with your kernel.

Shapes: B batch, T steps, D inputs of a layer (H above the first), H hidden units,
O outputs. Layer k has W_x (D, 4H), W_h (H, 4H), b (4H,), gates in the order i, f, g, o;
the head has W (H, O) and b (O,). With h_0 = c_0 = 0:

    z_t = x_t W_x + h_{t-1} W_h + b
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);   g = tanh(z_g)
    c_t = f c_{t-1} + i g;   h_t = o tanh(c_t)
    y = h_T W + b (many-to-one),   or y_t = h_t W + b at every step (many-to-many)

The loss is the mean squared error over every output ("mse"), or the mean
cross-entropy of the softmax over every prediction ("xent", y holds class ids).
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    # Accurate relative to its result even for z << 0, as the kit demands; the overflow-free
    # 0.5 * (1 + tanh(z / 2)) is not: it rounds sigmoid(-24) to 0 in float32 and fails.
    with np.errstate(over="ignore"):  # exp(-z) = inf gives the right limit, 0
        return 1 / (1 + np.exp(-z))


def layer_forward(x, W_x, W_h, b):
    """One layer over the whole sequence x (B, T, D). Returns h and c (B, T+1, H), where
    index t+1 holds step t and index 0 the zero initial state, and the gates (B, T, 4H)."""
    B, T, _ = x.shape
    H = W_h.shape[0]
    xz = x @ W_x + b  # (B, T, 4H): the input's share of every step in one product
    h = np.zeros((B, T + 1, H), x.dtype)
    c = np.zeros((B, T + 1, H), x.dtype)
    gates = np.empty((B, T, 4 * H), x.dtype)
    for t in range(T):
        z = xz[:, t] + h[:, t] @ W_h
        i, f, g, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), np.tanh(z[:, 2 * H : 3 * H]), sigmoid(z[:, 3 * H :])
        c[:, t + 1] = f * c[:, t] + i * g
        h[:, t + 1] = o * np.tanh(c[:, t + 1])
        gates[:, t] = np.concatenate([i, f, g, o], axis=1)
    return h, c, gates


def layer_backward(x, h, c, gates, W_x, W_h, dh_out):
    """Backpropagation through time for one layer. dh_out (B, T, H) is dLoss/dh_t from
    above (the head, or the next layer). Returns dLoss/dx (B, T, D) and the gradients
    of W_x, W_h and b."""
    B, T, H = dh_out.shape
    dz = np.empty_like(gates)  # dLoss/dz_t
    dh_next = np.zeros((B, H), x.dtype)  # dLoss/dh_t through step t+1
    dc_next = np.zeros((B, H), x.dtype)  # dLoss/dc_t through step t+1
    for t in reversed(range(T)):
        i, f, g, o = np.split(gates[:, t], 4, axis=1)
        tanh_c = np.tanh(c[:, t + 1])
        dh = dh_out[:, t] + dh_next
        dc = dh * o * (1 - tanh_c * tanh_c) + dc_next
        dz[:, t] = np.concatenate([dc * g * i * (1 - i),  # through i = sigmoid(z_i)
                                   dc * c[:, t] * f * (1 - f),  # through f
                                   dc * i * (1 - g * g),  # through g = tanh(z_g)
                                   dh * tanh_c * o * (1 - o)],  # through o
                                  axis=1)
        dh_next = dz[:, t] @ W_h.T
        dc_next = dc * f
    # the weight gradients are sums over every example and step: one product each
    flat_dz = dz.reshape(B * T, 4 * H)
    dW_x = x.reshape(B * T, -1).T @ flat_dz
    dW_h = h[:, :-1].reshape(B * T, H).T @ flat_dz  # h_{t-1} for every step t
    db = flat_dz.sum(axis=0)
    return dz @ W_x.T, dW_x, dW_h, db


def forward(cfg, params, x):
    """The model's outputs, (B, O) or (B, T, O), and what each layer kept for the backward pass."""
    caches, seq = [], x
    for k in range(cfg.num_layers):
        h, c, gates = layer_forward(seq, params[f"l{k}.W_x"], params[f"l{k}.W_h"], params[f"l{k}.b"])
        caches.append((seq, h, c, gates))
        seq = h[:, 1:]  # this layer's outputs are the next one's inputs
    top = seq if cfg.many_to_many else seq[:, -1]
    return top @ params["head.W"] + params["head.b"], caches


def loss_and_output_grad(cfg, y_hat, y):
    """The mean loss and dLoss/dy_hat."""
    if cfg.loss == "mse":
        diff = y_hat - y
        return np.mean(diff * diff), diff * (2 / diff.size)
    logits, classes = y_hat.reshape(-1, cfg.output_size), y.reshape(-1)  # one row per prediction
    rows = np.arange(len(classes))
    shifted = logits - logits.max(axis=1, keepdims=True)  # a stable log-softmax
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    d_logits = np.exp(log_p)  # softmax - one-hot(class), over the number of predictions
    d_logits[rows, classes] -= 1
    return -np.mean(log_p[rows, classes]), (d_logits / len(classes)).reshape(y_hat.shape)


def loss_and_grads(cfg, params, x, y):
    """The mean loss and its gradient for every parameter (a dict like params)."""
    y_hat, caches = forward(cfg, params, x)
    loss, dy = loss_and_output_grad(cfg, y_hat, y)
    top = caches[-1][1][:, 1:]  # the last layer's h_1 .. h_T, (B, T, H)
    W = params["head.W"]
    dh = np.zeros_like(top)  # dLoss/dh_t of the last layer
    if cfg.many_to_many:
        grads = {"head.W": top.reshape(-1, cfg.hidden_size).T @ dy.reshape(-1, cfg.output_size),
                 "head.b": dy.sum(axis=(0, 1))}
        dh[:] = dy @ W.T
    else:  # only h_T reaches the head
        grads = {"head.W": top[:, -1].T @ dy, "head.b": dy.sum(axis=0)}
        dh[:, -1] = dy @ W.T
    for k in reversed(range(cfg.num_layers)):
        x_k, h, c, gates = caches[k]
        dh, grads[f"l{k}.W_x"], grads[f"l{k}.W_h"], grads[f"l{k}.b"] = layer_backward(
            x_k, h, c, gates, params[f"l{k}.W_x"], params[f"l{k}.W_h"], dh)  # dh: for the layer below
    return loss, grads
