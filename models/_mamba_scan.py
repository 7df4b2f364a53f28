"""Selective scan of the Mamba block in plain PyTorch, for CPUs and for CUDA without mamba_ssm.

The scan computes, for every batch element b, channel d and state index n,

    h[t] = exp(delta[t] * A) * h[t - 1] + delta[t] * B[t] * u[t]      h[-1] = 0
    y[t] = sum_n C[t, n] * h[t, n] + D * u[t]
    y[t] = y[t] * silu(z[t])                                          (when z is given)

``selective_scan`` and ``selective_scan_reference`` take mamba_ssm's ``selective_scan_fn``
arguments in its layout (u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L)), so either can
stand in for the fused kernel and be checked against it. ``selective_scan_time_major`` is
the fast path on time-major inputs (L, B, ...), which the Mamba block uses to avoid copies.

- ``selective_scan`` and ``selective_scan_time_major``: the fast path. A custom autograd
  function runs the recurrence one time step at a time on (B, D, N) tensors that stay in
  cache. It keeps only every
  ``CHECKPOINT_STEPS``-th state and recomputes the others in a hand-written backward pass,
  as mamba_ssm's CUDA kernel recomputes its states.
- ``selective_scan_reference``: the plain per-step loop with autograd, for tests.

Why a per-step loop and not a chunked or parallel scan: the decay exp(delta * A) depends on
both the time step and the state index. So every formulation does O(B L D N) elementwise
work, including an exp per element. Chunked and parallel forms materialise several
(B, L, D, N) tensors that do not fit in cache. On a 2-core x86 machine with one thread, at
the default sizes with T = 128, a chunked scan over cumulative log decays and mambapy's
Blelloch scan took as long as, or up to 5 times longer than, the plain per-step loop with
autograd (forward plus backward, batch 8 and 64). The Python loop itself costs about
10 microseconds per step. benchmarks/bench_mamba_scan.py times this module against the
plain loop and against mambapy.

Numerical stability: the model passes delta through softplus and uses A = -exp(A_log), so
every decay exp(delta * A) lies in (0, 1]. No step divides by a decay or exponentiates a
positive sum, so the scan needs no clamping. Callers that pass a negative delta or a positive
A get the same overflow as mamba_ssm's kernel would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "CHECKPOINT_STEPS",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_time_major",
]

# The forward pass keeps the state h once every CHECKPOINT_STEPS steps; the backward pass
# recomputes the states in between, one block at a time. 16 keeps a block of states for a
# batch of 64 and the default sizes (D = 256, N = 16) at 16 MiB.
CHECKPOINT_STEPS = 16


def _check_shapes(
    layout: str,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ValueError unless the inputs fit ``layout``: "BDL" (mamba_ssm's) or "LBD"."""
    if u.dim() != 3:
        raise ValueError(f"u must be 3-dimensional ({layout}), got shape {tuple(u.shape)}")
    if layout == "BDL":
        batch, dim, seq_len = u.shape
    else:
        seq_len, batch, dim = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape ({dim}, d_state), got {tuple(A.shape)}")
    d_state = A.shape[1]
    state_shape = (batch, d_state, seq_len) if layout == "BDL" else (seq_len, batch, d_state)

    if delta.shape != u.shape:
        raise ValueError(
            f"delta must have the shape of u {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    for name, matrix in (("B", B), ("C", C)):
        if matrix.shape != state_shape:
            raise ValueError(
                f"{name} must have shape {state_shape}; input-independent or grouped {name} "
                f"is not supported, got {tuple(matrix.shape)}"
            )
    if D is not None and D.shape != (dim,):
        raise ValueError(f"D must have shape ({dim},), got {tuple(D.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}")
    if delta_bias is not None and delta_bias.shape != (dim,):
        raise ValueError(f"delta_bias must have shape ({dim},), got {tuple(delta_bias.shape)}")


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    # Like mamba_ssm, compute in float32 at least, whatever the input precision.
    return torch.promote_types(u.dtype, torch.float32)


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Run the selective scan as a plain loop over time steps, differentiated by autograd.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
        Returns y: (B, D, L) in the dtype of u.
    """
    _check_shapes("BDL", u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u)
    u_compute = u.to(dtype)
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(dtype)
    B = B.to(dtype)
    C = C.to(dtype)
    batch, dim, seq_len = u.shape

    state = u_compute.new_zeros(batch, dim, A.shape[1])  # (B, D, N)
    outputs = []
    for t in range(seq_len):
        decay = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        state_input = (delta[:, :, t] * u_compute[:, :, t])[:, :, None] * B[:, None, :, t]
        state = decay * state + state_input
        outputs.append((state * C[:, None, :, t]).sum(dim=-1))  # (B, D)
    y = torch.stack(outputs, dim=-1)  # (B, D, L)

    if D is not None:
        y = y + u_compute * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


class _ScanFunction(torch.autograd.Function):
    """Recurrence y = C . h with checkpointed states and a hand-written backward pass.

    All tensors are time-major, so one time step is one contiguous slice.

    Shape:
        u, delta: (L, B, D); A: (D, N); B, C: (L, B, N). Returns y: (L, B, D).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
    ) -> torch.Tensor:
        seq_len, batch, dim = u.shape
        d_state = A.shape[1]
        num_blocks = -(-seq_len // CHECKPOINT_STEPS)

        delta_u = delta * u  # (L, B, D)
        checkpoints = u.new_empty(num_blocks, batch, dim, d_state)
        y = u.new_empty(seq_len, batch, dim)
        state = u.new_zeros(batch, dim, d_state)
        next_state = torch.empty_like(state)
        decay = torch.empty_like(state)

        # Each step reuses the (B, D, N) buffers in place, so the loop allocates nothing.
        for t in range(seq_len):
            if t % CHECKPOINT_STEPS == 0:
                checkpoints[t // CHECKPOINT_STEPS].copy_(state)
            torch.mul(delta[t, :, :, None], A, out=decay)
            decay.exp_()
            torch.mul(delta_u[t, :, :, None], B[t, :, None, :], out=next_state)
            next_state.addcmul_(state, decay)
            state, next_state = next_state, state
            torch.bmm(state, C[t, :, :, None], out=y[t, :, :, None])  # (B, D, 1)

        ctx.save_for_backward(u, delta, A, B, C, checkpoints)
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_y: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        u, delta, A, B, C, checkpoints = ctx.saved_tensors  # type: ignore[attr-defined]
        seq_len, batch, dim = u.shape
        d_state = A.shape[1]
        grad_y = grad_y.contiguous()
        delta_u = delta * u

        grad_delta_u = torch.empty_like(u)
        grad_log_decay_delta = torch.empty_like(u)  # sum_n dL/d(delta * A) * A, per step
        grad_A_terms = u.new_zeros(batch, dim, d_state)  # summed over steps, then batch
        grad_B = torch.empty_like(B)
        grad_C = torch.empty_like(C)

        states = u.new_empty(CHECKPOINT_STEPS + 1, batch, dim, d_state)
        decays = u.new_empty(CHECKPOINT_STEPS, batch, dim, d_state)
        grad_state = u.new_empty(batch, dim, d_state)  # dL/dh[t], all paths
        grad_carry = u.new_zeros(batch, dim, d_state)  # dL/dh[t] through h[t + 1]
        grad_log_decay = torch.empty_like(grad_state)
        scratch = torch.empty_like(grad_state)

        for block in range(checkpoints.shape[0] - 1, -1, -1):
            start = block * CHECKPOINT_STEPS
            stop = min(seq_len, start + CHECKPOINT_STEPS)
            length = stop - start

            # Recompute the block's states from its checkpoint: states[j + 1] = h[start + j].
            torch.mul(delta[start:stop, :, :, None], A, out=decays[:length])
            decays[:length].exp_()
            states[0].copy_(checkpoints[block])
            for j in range(length):
                t = start + j
                torch.mul(delta_u[t, :, :, None], B[t, :, None, :], out=states[j + 1])
                states[j + 1].addcmul_(decays[j], states[j])

            for j in range(length - 1, -1, -1):
                t = start + j
                # (B, 1, D) @ (B, D, N): row-vector products need no transposed copy.
                torch.bmm(grad_y[t, :, None, :], states[j + 1], out=grad_C[t, :, None, :])
                torch.addcmul(grad_carry, grad_y[t, :, :, None], C[t, :, None, :], out=grad_state)

                # h[t] = decay * h[t-1] + (delta * u)[t] * B[t]
                torch.bmm(grad_state, B[t, :, :, None], out=grad_delta_u[t, :, :, None])
                torch.bmm(delta_u[t, :, None, :], grad_state, out=grad_B[t, :, None, :])

                # decay = exp(delta * A), so dL/d(delta * A) = dL/dh[t] * h[t-1] * decay,
                # which is grad_carry * h[t-1].
                torch.mul(grad_state, decays[j], out=grad_carry)
                torch.mul(grad_carry, states[j], out=grad_log_decay)
                torch.mul(grad_log_decay, A, out=scratch)
                torch.sum(scratch, dim=-1, out=grad_log_decay_delta[t])
                grad_A_terms.addcmul_(grad_log_decay, delta[t, :, :, None])

        grad_u = grad_delta_u * delta
        grad_delta = grad_log_decay_delta.addcmul_(grad_delta_u, u)
        grad_A = grad_A_terms.sum(dim=0)
        return grad_u, grad_delta, grad_A, grad_B, grad_C


def selective_scan_time_major(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Run the fast selective scan on time-major inputs, which need no transposing copies.

    Shape:
        u, delta, z: (L, B, D); A: (D, N); B, C: (L, B, N); D, delta_bias: (D,).
        Returns y: (L, B, D) in the dtype of u.
    """
    _check_shapes("LBD", u, delta, A, B, C, D, z, delta_bias)
    dtype = _compute_dtype(u)
    u_compute = u.to(dtype).contiguous()
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)

    y = _ScanFunction.apply(
        u_compute,
        delta.contiguous(),
        A.to(dtype).contiguous(),
        B.to(dtype).contiguous(),
        C.to(dtype).contiguous(),
    )  # (L, B, D)

    if D is not None:
        y = y + u_compute * D.to(dtype)
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Run the fast selective scan in mamba_ssm's layout; same contract as the reference.

    Shape:
        u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
        Returns y: (B, D, L) in the dtype of u.
    """
    _check_shapes("BDL", u, delta, A, B, C, D, z, delta_bias)

    def to_time_major(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.permute(2, 0, 1)  # (B, D, L) -> (L, B, D), (B, N, L) -> (L, B, N)

    y = selective_scan_time_major(
        to_time_major(u),
        to_time_major(delta),
        A,
        to_time_major(B),
        to_time_major(C),
        D=D,
        z=None if z is None else to_time_major(z),
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
    )
    return y.permute(1, 2, 0)  # (L, B, D) -> (B, D, L)
