"""mLSTM and sLSTM blocks of xLSTM (Beck et al., 2024) in plain PyTorch.

Both cells use an exponential input gate and a sigmoid forget gate, stabilised by a running
maximum m of the log gates so that no exp overflows:

    m[t] = max(log f[t] + m[t-1], i~[t]),   i'[t] = exp(i~[t] - m[t]),
    f'[t] = exp(log f[t] + m[t-1] - m[t]),  with m[-1] = -inf and zero initial states.

mLSTM (matrix memory, per head, head size d): C[t] = f' C[t-1] + i' k[t] v[t]^T and
n[t] = f' n[t-1] + i' k[t] with k scaled by 1/sqrt(d). The output is
q[t]^T C[t] / max(|q[t]^T n[t]|, exp(-m[t])). Its hidden state does not feed back, so
training uses the parallel form ``mlstm_parallel``, quadratic in T. ``mlstm_recurrent`` is
the step-by-step form that the tests compare it with.

sLSTM (scalar memory, per unit): c[t] = f' c[t-1] + i' tanh(z~[t]), n[t] = f' n[t-1] + i',
h[t] = sigmoid(o~[t]) * c[t] / n[t], where every gate pre-activation also receives
R h[t-1] with a block-diagonal R (one dense block per head). The hidden-state recurrence
makes it sequential over T.

NOTE: no fused kernel is used; the same PyTorch code runs on CPU and CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLSTMBlock", "SLSTMBlock", "mlstm_parallel", "mlstm_recurrent"]

# Width of the causal depthwise convolution in front of the gates, the xlstm package's default.
CONV_KERNEL = 4

# Added to the mLSTM normaliser before dividing, as in the xlstm package's
# parallel_stabilized_simple.
_MLSTM_EPS = 1e-6

# Forget-gate biases start spread over [3, 6], so sigmoid(f~) lies in about [0.95, 0.998]
# and the memory starts long. The xlstm package's "small_init" bias scheme does the same.
_FORGET_BIAS_RANGE = (3.0, 6.0)


def mlstm_parallel(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate_preact: torch.Tensor,
    fgate_preact: torch.Tensor,
    eps: float = _MLSTM_EPS,
) -> torch.Tensor:
    """Run the stabilised mLSTM over a whole sequence at once (quadratic in T).

    Shape:
        q, k, v: (B, H, T, d); igate_preact, fgate_preact: (B, H, T). Returns (B, H, T, d).
    """
    seq_len, head_dim = q.shape[-2], q.shape[-1]
    log_fgate = F.logsigmoid(fgate_preact)  # (B, H, T)
    log_fgate_cumsum = torch.cumsum(log_fgate, dim=-1)  # (B, H, T)

    # log D[t, s] = sum_{r = s+1..t} log f[r] + i~[s] for s <= t, -inf above the diagonal.
    log_forget_matrix = log_fgate_cumsum[..., :, None] - log_fgate_cumsum[..., None, :]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).tril()
    log_d_matrix = torch.where(
        causal, log_forget_matrix + igate_preact[..., None, :], float("-inf")
    )  # (B, H, T, T)

    # The row maximum equals the stabiliser m[t] of the recurrent form.
    row_max = log_d_matrix.amax(dim=-1, keepdim=True)  # (B, H, T, 1)
    d_matrix = torch.exp(log_d_matrix - row_max)

    scores = q @ (k / math.sqrt(head_dim)).transpose(-2, -1) * d_matrix  # (B, H, T, T)
    normaliser = torch.maximum(scores.sum(dim=-1, keepdim=True).abs(), torch.exp(-row_max))
    return (scores / (normaliser + eps)) @ v  # (B, H, T, d)


def mlstm_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    igate_preact: torch.Tensor,
    fgate_preact: torch.Tensor,
    eps: float = _MLSTM_EPS,
) -> torch.Tensor:
    """Run the stabilised mLSTM one time step at a time; same contract as ``mlstm_parallel``."""
    batch, heads, seq_len, head_dim = q.shape
    memory = q.new_zeros(batch, heads, head_dim, head_dim)  # C: (B, H, d_k, d_v)
    normaliser_state = q.new_zeros(batch, heads, head_dim)  # n: (B, H, d_k)
    stabiliser = q.new_full((batch, heads), float("-inf"))  # m: (B, H)
    outputs = []
    for t in range(seq_len):
        log_fgate = F.logsigmoid(fgate_preact[..., t])
        new_stabiliser = torch.maximum(log_fgate + stabiliser, igate_preact[..., t])
        fgate = torch.exp(log_fgate + stabiliser - new_stabiliser)[..., None]  # (B, H, 1)
        igate = torch.exp(igate_preact[..., t] - new_stabiliser)[..., None]
        stabiliser = new_stabiliser

        key = k[..., t, :] / math.sqrt(head_dim)  # (B, H, d)
        memory = (
            fgate[..., None] * memory + igate[..., None] * key[..., :, None] * v[..., t, None, :]
        )
        normaliser_state = fgate * normaliser_state + igate * key

        query = q[..., t, :]
        numerator = (query[..., None, :] @ memory).squeeze(-2)  # (B, H, d)
        denominator = torch.maximum(
            (query * normaliser_state).sum(dim=-1).abs(), torch.exp(-stabiliser)
        )[..., None]
        outputs.append(numerator / (denominator + eps))
    return torch.stack(outputs, dim=2)  # (B, H, T, d)


class _CausalConv1d(nn.Module):
    """Depthwise convolution over time whose output at t depends only on steps up to t."""

    def __init__(self, channels: int, kernel_size: int = CONV_KERNEL) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            channels, channels, kernel_size, groups=channels, padding=kernel_size - 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, C) to (B, T, C)."""
        seq_len = x.shape[1]
        # (B, T, C) -> (B, C, T) for Conv1d; keeping the first T outputs makes it causal.
        return self.conv(x.transpose(1, 2))[..., :seq_len].transpose(1, 2)


class _HeadwiseLinear(nn.Module):
    """Block-diagonal linear map without bias: each head's channels map only to that head's.

    The xlstm package projects queries, keys and values block-diagonally too, with blocks
    of 4 channels. One block per head keeps these three projections at 3 * E**2 / H
    parameters instead of 3 * E**2, and needs only that H divides E.
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = channels // num_heads
        bound = head_dim**-0.5  # nn.Linear's default range for fan-in head_dim
        self.weight = nn.Parameter(
            torch.empty(num_heads, head_dim, head_dim).uniform_(-bound, bound)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, H * d) to (B, T, H * d)."""
        batch, seq_len, channels = x.shape
        heads = x.view(batch, seq_len, self.num_heads, -1)  # (B, T, H, d)
        return torch.einsum("bthi,hio->btho", heads, self.weight).reshape(batch, seq_len, channels)


def _head_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """Normalise each head's channels separately: (B, T, H * d) -> (B, T, H * d)."""
    batch, seq_len, channels = x.shape
    return norm(x.reshape(batch * seq_len, channels)).view(batch, seq_len, channels)


class MLSTMBlock(nn.Module):
    """Pre-norm residual mLSTM block with an up-projection of ``proj_factor``.

    LayerNorm, up-projection to two branches of width E = proj_factor * d_model; the first
    goes through a causal convolution and SiLU to the queries and keys (values come from
    before the convolution, all three by per-head projections), the multi-head mLSTM, a
    per-head norm and a learnable skip from the convolution; the second branch gates the
    result through SiLU; a down-projection returns to d_model.
    """

    def __init__(self, d_model: int, num_heads: int, proj_factor: int, dropout: float) -> None:
        super().__init__()
        inner = proj_factor * d_model
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(d_model)
        self.up_proj = nn.Linear(d_model, 2 * inner)
        self.conv = _CausalConv1d(inner)
        self.q_proj = _HeadwiseLinear(inner, num_heads)
        self.k_proj = _HeadwiseLinear(inner, num_heads)
        self.v_proj = _HeadwiseLinear(inner, num_heads)
        self.igate = nn.Linear(3 * inner, num_heads)
        self.fgate = nn.Linear(3 * inner, num_heads)
        self.out_norm = nn.GroupNorm(num_heads, inner)
        self.skip_scale = nn.Parameter(torch.ones(inner))
        self.down_proj = nn.Linear(inner, d_model)
        self.dropout = nn.Dropout(dropout)

        # Gates start input-independent: the input gate near exp(0) and a long memory.
        nn.init.zeros_(self.igate.weight)
        nn.init.normal_(self.igate.bias, std=0.1)
        nn.init.zeros_(self.fgate.weight)
        with torch.no_grad():
            self.fgate.bias.copy_(torch.linspace(*_FORGET_BIAS_RANGE, num_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map x (B, T, d_model) to (B, T, d_model)."""
        batch, seq_len, _ = x.shape
        cell_input, gate_input = self.up_proj(self.norm(x)).chunk(2, dim=-1)  # (B, T, E) each
        conv_out = F.silu(self.conv(cell_input))

        q = self.q_proj(conv_out)
        k = self.k_proj(conv_out)
        v = self.v_proj(cell_input)
        qkv = torch.cat([q, k, v], dim=-1)  # (B, T, 3E)
        igate_preact = self.igate(qkv).transpose(1, 2)  # (B, T, H) -> (B, H, T)
        fgate_preact = self.fgate(qkv).transpose(1, 2)

        def split_heads(tensor: torch.Tensor) -> torch.Tensor:
            # (B, T, E) -> (B, T, H, d) -> (B, H, T, d)
            return tensor.view(batch, seq_len, self.num_heads, -1).transpose(1, 2)

        h = mlstm_parallel(
            split_heads(q), split_heads(k), split_heads(v), igate_preact, fgate_preact
        )
        h = h.transpose(1, 2).reshape(batch, seq_len, -1)  # (B, H, T, d) -> (B, T, E)
        h = _head_norm(h, self.out_norm) + self.skip_scale * conv_out
        h = h * F.silu(gate_input)
        return x + self.dropout(self.down_proj(h))


class SLSTMBlock(nn.Module):
    """Pre-norm residual sLSTM block followed by a gated feed-forward block.

    The input and forget gates read the input after a causal convolution and SiLU, while
    the cell input and output gates read it directly. All four also read the previous
    hidden state through a block-diagonal recurrent matrix with one block per head. A
    per-head norm and a residual follow, then LayerNorm, a GELU-gated feed-forward of width
    proj_factor * d_model and a second residual.
    """

    def __init__(self, d_model: int, num_heads: int, proj_factor: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.norm = nn.LayerNorm(d_model)
        self.conv = _CausalConv1d(d_model)
        self.if_proj = nn.Linear(d_model, 2 * d_model, bias=False)  # input, forget gates
        self.zo_proj = nn.Linear(d_model, 2 * d_model, bias=False)  # cell input, output gate
        # Per head, maps h[t-1] (d) to the four gate pre-activations (4 * d, gate-major).
        self.recurrent_weight = nn.Parameter(
            torch.zeros(num_heads, self.head_dim, 4 * self.head_dim)
        )
        # Gate biases in the order input, forget, cell input, output: (4, H, d).
        gate_bias = torch.zeros(4, num_heads, self.head_dim)
        gate_bias[1] = torch.linspace(*_FORGET_BIAS_RANGE, self.head_dim)
        self.gate_bias = nn.Parameter(gate_bias)
        self.out_norm = nn.GroupNorm(num_heads, d_model)
        self.dropout = nn.Dropout(dropout)

        ff_dim = proj_factor * d_model
        self.ff_norm = nn.LayerNorm(d_model)
        self.ff_up = nn.Linear(d_model, 2 * ff_dim)
        self.ff_down = nn.Linear(ff_dim, d_model)

    def _recurrence(self, gates_x: torch.Tensor) -> torch.Tensor:
        """Run the stabilised sLSTM over time.

        Shape:
            gates_x: (T, H, B, 4 * d), the input part of the gate pre-activations, gate-major
            in the last dimension. Returns the hidden states (T, H, B, d).
        """
        seq_len, heads, batch, _ = gates_x.shape
        state_shape = (heads, batch, self.head_dim)
        hidden = gates_x.new_zeros(state_shape)
        cell = gates_x.new_zeros(state_shape)
        normaliser = gates_x.new_zeros(state_shape)
        stabiliser = gates_x.new_full(state_shape, float("-inf"))
        bias = self.gate_bias.permute(1, 0, 2).reshape(heads, 1, -1)  # (4, H, d) -> (H, 1, 4d)

        outputs = []
        for t in range(seq_len):
            # (H, B, 4d) = x part + bias + h[t-1] @ R, one matrix product per head.
            preact = torch.baddbmm(gates_x[t] + bias, hidden, self.recurrent_weight)
            igate_raw, fgate_raw, cell_raw, ogate_raw = preact.chunk(4, dim=-1)

            log_fgate_plus_m = stabiliser + F.logsigmoid(fgate_raw)
            new_stabiliser = torch.maximum(igate_raw, log_fgate_plus_m)
            igate = torch.exp(igate_raw - new_stabiliser)
            fgate = torch.exp(log_fgate_plus_m - new_stabiliser)
            stabiliser = new_stabiliser

            cell = fgate * cell + igate * torch.tanh(cell_raw)
            # One of igate, fgate is exp(0) = 1 at every step, so normaliser stays >= 1.
            normaliser = fgate * normaliser + igate
            hidden = torch.sigmoid(ogate_raw) * cell / normaliser
            outputs.append(hidden)
        return torch.stack(outputs)  # (T, H, B, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map x (B, T, d_model) to (B, T, d_model)."""
        batch, seq_len, d_model = x.shape
        normed = self.norm(x)
        conv_out = F.silu(self.conv(normed))

        # (B, T, 2, H, d) each -> (B, T, 4, H, d) -> (T, H, B, 4, d) -> (T, H, B, 4d)
        shape = (batch, seq_len, 2, self.num_heads, self.head_dim)
        gates_x = torch.cat(
            [self.if_proj(conv_out).view(shape), self.zo_proj(normed).view(shape)], dim=2
        )
        gates_x = gates_x.permute(1, 3, 0, 2, 4).reshape(seq_len, self.num_heads, batch, -1)

        hidden = self._recurrence(gates_x)  # (T, H, B, d)
        hidden = hidden.permute(2, 0, 1, 3).reshape(batch, seq_len, d_model)  # (B, T, H * d)
        x = x + self.dropout(_head_norm(hidden, self.out_norm))

        ff_value, ff_gate = self.ff_up(self.ff_norm(x)).chunk(2, dim=-1)  # (B, T, ff_dim) each
        return x + self.dropout(self.ff_down(F.gelu(ff_gate) * ff_value))
