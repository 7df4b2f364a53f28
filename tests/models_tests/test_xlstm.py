"""The xlstm classifier: block mix, mLSTM parallel form, stabilised sLSTM, config checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import models
from models._xlstm_blocks import MLSTMBlock, SLSTMBlock, mlstm_parallel, mlstm_recurrent
from models.xlstm import XLSTMClassifier, XLSTMConfig

from .conftest import NUM_FEATURES

SMALL = {"d_model": 16, "num_layers": 3, "num_heads": 2, "proj_factor": 2}


def _mlstm_inputs(seq_len: int, seed: int, gate_scale: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch, heads, head_dim = 2, 3, 4

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return [
        randn(batch, heads, seq_len, head_dim),  # q
        randn(batch, heads, seq_len, head_dim),  # k
        randn(batch, heads, seq_len, head_dim),  # v
        gate_scale * randn(batch, heads, seq_len),  # input gate pre-activation
        gate_scale * randn(batch, heads, seq_len),  # forget gate pre-activation
    ]


@pytest.mark.parametrize("gate_scale", [1.0, 8.0])
def test_mlstm_parallel_matches_recurrent(gate_scale: float) -> None:
    # gate_scale 8 drives the stabiliser through large positive and negative log gates.
    inputs = _mlstm_inputs(seq_len=13, seed=int(gate_scale), gate_scale=gate_scale)
    output_weights = torch.randn(2, 3, 13, 4, dtype=torch.float64)
    results = []
    forms: list[Callable[..., torch.Tensor]] = [mlstm_recurrent, mlstm_parallel]
    for form in forms:
        leaves = [tensor.clone().requires_grad_() for tensor in inputs]
        output = form(*leaves)
        (output * output_weights).sum().backward()
        results.append((output.detach(), [leaf.grad for leaf in leaves]))
    (expected, expected_grads), (actual, actual_grads) = results

    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    for name, actual_grad, expected_grad in zip(
        ["q", "k", "v", "igate", "fgate"], actual_grads, expected_grads, strict=True
    ):
        torch.testing.assert_close(
            actual_grad, expected_grad, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}"
        )


def test_mlstm_parallel_finite_for_large_input_gates() -> None:
    # exp(100) overflows float32; the stabiliser subtracts the row maximum first.
    q, k, v, _, fgate = (tensor.float() for tensor in _mlstm_inputs(9, seed=0, gate_scale=1.0))
    igate = torch.full_like(fgate, 100.0).requires_grad_()

    output = mlstm_parallel(q, k, v, igate, fgate)
    output.sum().backward()

    assert torch.isfinite(output).all()
    assert igate.grad is not None and torch.isfinite(igate.grad).all()


def _unstabilised_slstm(block: SLSTMBlock, gates_x: torch.Tensor) -> torch.Tensor:
    """Run the sLSTM equations without the stabiliser: i = exp(i~), f = sigmoid(f~)."""
    seq_len, heads, batch, _ = gates_x.shape
    hidden = gates_x.new_zeros(heads, batch, block.head_dim)
    cell = torch.zeros_like(hidden)
    normaliser = torch.zeros_like(hidden)
    bias = block.gate_bias.permute(1, 0, 2).reshape(heads, 1, -1)
    outputs = []
    for t in range(seq_len):
        preact = gates_x[t] + bias + hidden @ block.recurrent_weight
        igate_raw, fgate_raw, cell_raw, ogate_raw = preact.chunk(4, dim=-1)
        igate, fgate = torch.exp(igate_raw), torch.sigmoid(fgate_raw)
        cell = fgate * cell + igate * torch.tanh(cell_raw)
        normaliser = fgate * normaliser + igate
        hidden = torch.sigmoid(ogate_raw) * cell / normaliser
        outputs.append(hidden)
    return torch.stack(outputs)


def test_slstm_stabilised_recurrence_matches_plain_equations() -> None:
    torch.manual_seed(0)
    block = SLSTMBlock(d_model=8, num_heads=2, proj_factor=2, dropout=0.0).double()
    with torch.no_grad():
        block.recurrent_weight.normal_(std=0.5)  # zero at init; make the recurrence matter
    gates_x = 2.0 * torch.randn(11, 2, 3, 4 * 4, dtype=torch.float64)  # (T, H, B, 4d)

    with torch.no_grad():
        actual = block._recurrence(gates_x)
        expected = _unstabilised_slstm(block, gates_x)

    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block_class", [MLSTMBlock, SLSTMBlock])
def test_block_is_causal(block_class: type[torch.nn.Module]) -> None:
    torch.manual_seed(0)
    block = block_class(16, 2, 2, 0.0).eval()
    with torch.no_grad():
        if isinstance(block, SLSTMBlock):
            block.recurrent_weight.normal_(std=0.3)
    hidden = torch.randn(2, 12, 16)
    changed = hidden.clone()
    changed[:, 7] += 1.0

    with torch.no_grad():
        before, after = block(hidden), block(changed)

    torch.testing.assert_close(after[:, :7], before[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 7:], before[:, 7:])


def test_default_stack_mixes_mlstm_and_slstm() -> None:
    model = XLSTMClassifier(None, NUM_FEATURES)

    layer_types = [type(layer) for layer in model.layers]

    assert XLSTMConfig().block_types == ["mlstm", "slstm", "mlstm"]
    assert layer_types == [MLSTMBlock, SLSTMBlock, MLSTMBlock]


@pytest.mark.parametrize(
    ("num_layers", "slstm_every", "expected"),
    [
        (1, 2, "m"),
        (4, 2, "msms"),
        (5, 3, "mmsmm"),
        (3, 1, "sss"),
        (3, 0, "mmm"),
    ],
)
def test_block_types_follow_slstm_every(num_layers: int, slstm_every: int, expected: str) -> None:
    config = XLSTMConfig(num_layers=num_layers, slstm_every=slstm_every)

    assert "".join(block_type[0] for block_type in config.block_types) == expected


def test_classifier_output_shape() -> None:
    model = XLSTMClassifier(XLSTMConfig(**SMALL), NUM_FEATURES, seq_len=20)

    logits = model(torch.randn(3, 20, NUM_FEATURES))

    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_classifier_gradients_finite_for_every_parameter() -> None:
    torch.manual_seed(0)
    model = XLSTMClassifier(XLSTMConfig(**SMALL), NUM_FEATURES)
    windows = torch.randn(4, 15, NUM_FEATURES)

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
        model = XLSTMClassifier(XLSTMConfig(**SMALL), NUM_FEATURES).eval()
        with torch.no_grad():
            outputs.append(model(windows))

    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.skipif("xlstm" not in models.CONFIG_CLASSES, reason="xlstm is not registered yet")
def test_count_parameters_matches_module() -> None:
    config = XLSTMConfig(**SMALL)
    model = XLSTMClassifier(config, NUM_FEATURES)

    counted = models.count_parameters("xlstm", config, NUM_FEATURES)

    assert counted == sum(parameter.numel() for parameter in model.parameters())


def test_config_round_trip() -> None:
    for config in (XLSTMConfig(), XLSTMConfig(num_layers=5, slstm_every=0, proj_factor=3)):
        mapping = config.to_dict()
        rebuilt = XLSTMConfig.from_dict(mapping)

        assert rebuilt == config
        assert all(isinstance(value, (int, float)) for value in mapping.values())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"d_model": 130, "num_heads": 4},
            r"xlstm.d_model \(130\) must be divisible by xlstm.num_heads \(4\)",
        ),
        ({"num_heads": 0}, "xlstm.num_heads must be positive, got 0"),
        ({"proj_factor": 1.5}, "xlstm.proj_factor must be an integer, got 1.5"),
        ({"num_layers": 0}, "xlstm.num_layers must be positive, got 0"),
        ({"dropout": -0.1}, r"xlstm.dropout must lie in \[0, 1\), got -0.1"),
        ({"slstm_every": -1}, "xlstm.slstm_every must be 0 .* or positive, got -1"),
        ({"slstm_every": "2"}, "xlstm.slstm_every must be an integer, got '2'"),
    ],
)
def test_config_rejects_invalid_value(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        XLSTMConfig(**fields)  # type: ignore[arg-type]


def test_classifier_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        XLSTMClassifier(XLSTMConfig(**SMALL), -1)
    with pytest.raises(ValueError, match=f"built for {NUM_FEATURES} features"):
        XLSTMClassifier(XLSTMConfig(**SMALL), NUM_FEATURES)(torch.randn(2, 8, NUM_FEATURES + 1))
