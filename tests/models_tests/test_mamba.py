"""The mamba classifier: the fast CPU scan against the reference, mamba_ssm compatibility."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import models
from models._mamba_scan import CHECKPOINT_STEPS, selective_scan, selective_scan_reference
from models.mamba import MambaClassifier, MambaConfig, MambaMixer, mixer_forward

from .conftest import NUM_FEATURES

SMALL = {"d_model": 16, "num_layers": 2, "d_state": 4, "d_conv": 3, "expand": 2}

SCAN_INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _scan_inputs(
    batch: int, dim: int, d_state: int, seq_len: int, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    """Random scan inputs in mamba_ssm's layout; A spans strong and weak decays."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    A = -torch.exp(randn(dim, d_state))  # (D, N), negative
    return [
        randn(batch, dim, seq_len),  # u
        randn(batch, dim, seq_len),  # delta, before bias and softplus
        A,
        randn(batch, d_state, seq_len),  # B
        randn(batch, d_state, seq_len),  # C
        randn(dim),  # D
        randn(batch, dim, seq_len),  # z
        randn(dim),  # delta_bias
    ]


def _run_with_gradients(
    scan: object, inputs: list[torch.Tensor], output_weights: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [tensor.clone().requires_grad_() for tensor in inputs]
    output = scan(*leaves, delta_softplus=True)  # type: ignore[operator]
    (output * output_weights).sum().backward()
    return output.detach(), [leaf.grad for leaf in leaves]  # type: ignore[misc]


# Lengths below, at and across the checkpoint interval, where the backward pass changes block.
SEQ_LENGTHS = [1, 5, CHECKPOINT_STEPS, CHECKPOINT_STEPS + 1, 2 * CHECKPOINT_STEPS + 7]


@pytest.mark.parametrize("seq_len", SEQ_LENGTHS)
def test_selective_scan_matches_reference_float64(seq_len: int) -> None:
    inputs = _scan_inputs(3, 8, 5, seq_len, torch.float64, seed=seq_len)
    output_weights = torch.randn(3, 8, seq_len, dtype=torch.float64)

    expected, expected_grads = _run_with_gradients(selective_scan_reference, inputs, output_weights)
    actual, actual_grads = _run_with_gradients(selective_scan, inputs, output_weights)

    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    for name, actual_grad, expected_grad in zip(
        SCAN_INPUT_NAMES, actual_grads, expected_grads, strict=True
    ):
        torch.testing.assert_close(
            actual_grad, expected_grad, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}"
        )


def test_selective_scan_matches_reference_float32() -> None:
    seq_len = 2 * CHECKPOINT_STEPS + 3
    inputs = _scan_inputs(4, 16, 8, seq_len, torch.float32, seed=7)
    output_weights = torch.randn(4, 16, seq_len)

    expected, expected_grads = _run_with_gradients(selective_scan_reference, inputs, output_weights)
    actual, actual_grads = _run_with_gradients(selective_scan, inputs, output_weights)

    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for name, actual_grad, expected_grad in zip(
        SCAN_INPUT_NAMES, actual_grads, expected_grads, strict=True
    ):
        torch.testing.assert_close(
            actual_grad, expected_grad, rtol=1e-4, atol=1e-4, msg=f"gradient of {name}"
        )


def test_selective_scan_matches_closed_form_single_state() -> None:
    # One channel, one state, delta = 1, A = -log 2: h[t] = h[t-1] / 2 + B u, y = C h.
    seq_len = 4
    u = torch.ones(1, 1, seq_len, dtype=torch.float64)
    delta = torch.ones(1, 1, seq_len, dtype=torch.float64)
    A = torch.full((1, 1), -math.log(2.0), dtype=torch.float64)
    B = torch.ones(1, 1, seq_len, dtype=torch.float64)
    C = torch.ones(1, 1, seq_len, dtype=torch.float64)

    y = selective_scan(u, delta, A, B, C)

    expected = torch.tensor([1.0, 1.5, 1.75, 1.875], dtype=torch.float64)
    torch.testing.assert_close(y.flatten(), expected, rtol=0, atol=1e-12)


def test_selective_scan_rejects_mismatched_shapes() -> None:
    u, delta, A, B, C, *_ = _scan_inputs(2, 4, 3, 6, torch.float32, seed=0)

    with pytest.raises(ValueError, match="delta must have the shape of u"):
        selective_scan(u, delta[..., :5], A, B, C)
    with pytest.raises(ValueError, match="A must have shape"):
        selective_scan(u, delta, A[:3], B, C)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan(u, delta, A, B[..., :5], C)


# Parameter names and shapes of mamba_ssm.modules.mamba_simple.Mamba(d_model=16, d_state=4,
# d_conv=3, expand=2), read from its constructor: d_inner = 32, dt_rank = ceil(16 / 16) = 1,
# bias=False for in_proj and out_proj, conv_bias=True.
MAMBA_SSM_BLOCK_PARAMETERS = {
    "in_proj.weight": (64, 16),
    "conv1d.weight": (32, 1, 3),
    "conv1d.bias": (32,),
    "x_proj.weight": (1 + 2 * 4, 32),
    "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,),
    "A_log": (32, 4),
    "D": (32,),
    "out_proj.weight": (16, 32),
}


def test_mixer_state_dict_matches_mamba_ssm_names() -> None:
    mixer = MambaMixer(d_model=16, d_state=4, d_conv=3, expand=2)

    shapes = {name: tuple(tensor.shape) for name, tensor in mixer.state_dict().items()}

    assert shapes == MAMBA_SSM_BLOCK_PARAMETERS


def test_classifier_block_keys_use_mixer_prefix() -> None:
    model = MambaClassifier(MambaConfig(**SMALL), NUM_FEATURES)

    block_keys = {
        key.removeprefix("layers.1.mixer.")
        for key in model.state_dict()
        if key.startswith("layers.1.mixer.")
    }

    assert block_keys == set(MAMBA_SSM_BLOCK_PARAMETERS)


def test_mixer_initialisation_matches_mamba_ssm() -> None:
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=32, d_state=6, d_conv=4, expand=2, dt_rank=4)

    expected_a_log = torch.log(torch.arange(1, 7, dtype=torch.float32)).repeat(64, 1)
    torch.testing.assert_close(mixer.A_log.data, expected_a_log)
    assert mixer.A_log.dtype == torch.float32
    assert torch.equal(mixer.D.data, torch.ones(64))

    # softplus(dt_proj.bias) is the initial time step, log-uniform in [0.001, 0.1].
    initial_dt = F.softplus(mixer.dt_proj.bias.data)
    assert initial_dt.min() >= 0.001 * (1 - 1e-4)
    assert initial_dt.max() <= 0.1 * (1 + 1e-4)
    assert mixer.dt_proj.weight.abs().max() <= 4**-0.5


def _mamba_ssm_style_forward(mixer: MambaMixer, hidden: torch.Tensor) -> torch.Tensor:
    """Follow the non-fused branch of mamba_ssm's Mamba.forward, with the reference scan."""
    batch, seq_len, _ = hidden.shape
    d_state = mixer.A_log.shape[1]
    xz = mixer.in_proj(hidden).transpose(1, 2)  # (B, 2E, L)
    x, z = xz.chunk(2, dim=1)
    x = F.silu(mixer.conv1d(x)[..., :seq_len])  # (B, E, L)
    x_dbl = mixer.x_proj(x.transpose(1, 2).reshape(batch * seq_len, -1))  # (B L, R + 2N)
    dt, B, C = torch.split(x_dbl, [mixer.dt_rank, d_state, d_state], dim=-1)
    dt = (mixer.dt_proj.weight @ dt.t()).view(-1, batch, seq_len).transpose(0, 1)  # (B, E, L)
    B = B.view(batch, seq_len, d_state).transpose(1, 2)  # (B, N, L)
    C = C.view(batch, seq_len, d_state).transpose(1, 2)
    y = selective_scan_reference(
        x,
        dt,
        -torch.exp(mixer.A_log),
        B,
        C,
        mixer.D,
        z=z,
        delta_bias=mixer.dt_proj.bias,
        delta_softplus=True,
    )
    return mixer.out_proj(y.transpose(1, 2))


def test_mixer_matches_mamba_ssm_computation() -> None:
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=16, d_state=4, d_conv=3, dt_rank=2).double()
    hidden = torch.randn(2, CHECKPOINT_STEPS + 5, 16, dtype=torch.float64)
    parameters = dict(mixer.named_parameters())
    results = []
    for forward in (_mamba_ssm_style_forward, mixer_forward):
        output = forward(mixer, hidden)
        grads = torch.autograd.grad(output.square().sum(), list(parameters.values()))
        results.append((output.detach(), dict(zip(parameters, grads, strict=True))))
    (expected, expected_grads), (actual, actual_grads) = results

    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    for name, expected_grad in expected_grads.items():
        torch.testing.assert_close(
            actual_grads[name], expected_grad, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}"
        )


def test_mixer_is_causal() -> None:
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=16, d_state=4, d_conv=3)
    hidden = torch.randn(2, 12, 16)
    changed = hidden.clone()
    changed[:, 7] += 1.0

    with torch.no_grad():
        before, after = mixer(hidden), mixer(changed)

    torch.testing.assert_close(after[:, :7], before[:, :7], rtol=0, atol=0)
    assert not torch.allclose(after[:, 7:], before[:, 7:])


def test_mixer_forward_uses_given_module_parameters() -> None:
    # mixer_forward runs the plain computation on any module with Mamba's parameters, which
    # is how a mamba_ssm block runs on CPU; a copy with loaded weights must agree exactly.
    torch.manual_seed(0)
    source = MambaMixer(d_model=16, d_state=4, d_conv=3)
    torch.manual_seed(1)
    target = MambaMixer(d_model=16, d_state=4, d_conv=3)
    hidden = torch.randn(2, 9, 16)

    target.load_state_dict(source.state_dict())

    with torch.no_grad():
        torch.testing.assert_close(mixer_forward(target, hidden), source(hidden), rtol=0, atol=0)


def test_classifier_output_shape_and_cpu_path() -> None:
    model = MambaClassifier(MambaConfig(**SMALL), NUM_FEATURES, seq_len=20)

    logits = model(torch.randn(3, 20, NUM_FEATURES))

    assert logits.shape == (3,)
    if not torch.cuda.is_available():
        assert not model.uses_fused_kernels


def test_classifier_gradients_finite_for_every_parameter() -> None:
    torch.manual_seed(0)
    model = MambaClassifier(MambaConfig(**SMALL), NUM_FEATURES)
    windows = torch.randn(4, 2 * CHECKPOINT_STEPS + 3, NUM_FEATURES)

    loss = F.binary_cross_entropy_with_logits(model(windows), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    loss.backward()

    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_classifier_seeded_build_repeats() -> None:
    windows = torch.randn(2, 11, NUM_FEATURES)
    outputs = []
    for _ in range(2):
        torch.manual_seed(42)
        model = MambaClassifier(MambaConfig(**SMALL), NUM_FEATURES).eval()
        with torch.no_grad():
            outputs.append(model(windows))

    assert torch.equal(outputs[0], outputs[1])


def test_count_parameters_matches_closed_form() -> None:
    config = MambaConfig(**SMALL)  # d_inner 32, dt_rank 1
    d_model, d_inner, d_state, d_conv, dt_rank = 16, 32, 4, 3, 1
    block = (
        d_model  # RMSNorm weight
        + 2 * d_inner * d_model  # in_proj
        + d_inner * d_conv
        + d_inner  # conv1d
        + (dt_rank + 2 * d_state) * d_inner  # x_proj
        + d_inner * dt_rank
        + d_inner  # dt_proj
        + d_inner * d_state
        + d_inner  # A_log, D
        + d_model * d_inner  # out_proj
    )
    expected = (NUM_FEATURES * d_model + d_model) + 2 * block + d_model + (d_model + 1)

    assert models.count_parameters("mamba", config, NUM_FEATURES) == expected


def test_config_round_trip_keeps_dt_rank() -> None:
    for config in (MambaConfig(), MambaConfig(dt_rank=3, expand=3, d_conv=2)):
        rebuilt = MambaConfig.from_dict(config.to_dict())

        assert rebuilt == config
    assert MambaConfig().resolved_dt_rank == 8  # ceil(128 / 16)
    assert MambaConfig(dt_rank=3).resolved_dt_rank == 3
    assert MambaConfig(d_model=8).d_inner == 16


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("d_model", 0, "mamba.d_model must be positive, got 0"),
        ("num_layers", True, "mamba.num_layers must be an integer, got True"),
        ("expand", 1.5, "mamba.expand must be an integer, got 1.5"),
        ("d_conv", 5, r"mamba.d_conv must lie in \[2, 4\] .* got 5"),
        ("d_conv", 1, r"mamba.d_conv must lie in \[2, 4\] .* got 1"),
        ("d_state", 257, "mamba.d_state must be at most 256.* got 257"),
        ("dt_rank", "big", "mamba.dt_rank must be \"auto\" or a positive integer, got 'big'"),
        ("dt_rank", 0, "mamba.dt_rank must be positive, got 0"),
        ("dropout", 1.0, r"mamba.dropout must lie in \[0, 1\), got 1.0"),
    ],
)
def test_config_rejects_invalid_value(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MambaConfig(**{field: value})  # type: ignore[arg-type]


def test_classifier_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        MambaClassifier(MambaConfig(**SMALL), 0)
    with pytest.raises(TypeError, match="MambaConfig"):
        MambaClassifier({"d_model": 16}, NUM_FEATURES)  # type: ignore[arg-type]


def _fused_mamba_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import mamba_ssm.modules.mamba_simple  # type: ignore[import-not-found]  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


@pytest.mark.skipif(not _fused_mamba_available(), reason="needs CUDA and mamba_ssm")
def test_fused_mamba_agrees_with_pure_pytorch_block() -> None:
    from mamba_ssm.modules.mamba_simple import Mamba  # type: ignore[import-not-found]

    torch.manual_seed(0)
    pure = MambaMixer(d_model=16, d_state=4, d_conv=3).cuda()
    fused = Mamba(d_model=16, d_state=4, d_conv=3, expand=2).cuda()
    fused.load_state_dict(pure.state_dict())
    hidden = torch.randn(2, 40, 16, device="cuda")

    with torch.no_grad():
        torch.testing.assert_close(fused(hidden), pure(hidden), rtol=1e-3, atol=1e-4)

        # The same fused module on CPU runs the plain computation on its own parameters.
        fused_on_cpu, pure_on_cpu = fused.cpu(), pure.cpu()
        torch.testing.assert_close(
            mixer_forward(fused_on_cpu, hidden.cpu()), pure_on_cpu(hidden.cpu()), rtol=0, atol=0
        )
