"""Time archsweep's CPU selective scan against the sequential reference and against mambapy.

Usage:
    python benchmarks/bench_mamba_scan.py OUT.json [--batch-sizes 8,64] [--seq-len 128]

Two comparisons at the default MambaConfig sizes (d_model 128, expand 2, d_state 16,
d_conv 4), on one CPU thread unless --threads sets another count:

- scan: ``selective_scan`` (checkpointed, hand-written backward) against
  ``selective_scan_reference`` (plain loop, autograd) on the same random inputs;
- block: one ``MambaMixer`` against one mambapy ``MambaBlock`` with its parallel scan
  (``pscan=True``, its default) and, with --with-mambapy-sequential, with its sequential
  scan (``pscan=False``), which takes tens of seconds at batch 64.

Each case reports the best of --repeats runs after one warm-up run, for the forward pass
alone and for forward plus backward. The JSON file records the machine, the versions and
every timing; the table goes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models._mamba_scan import selective_scan, selective_scan_reference
from models.mamba import MambaConfig, MambaMixer

_logger = logging.getLogger("bench_mamba_scan")


@dataclasses.dataclass
class Timing:
    """Best wall times of one implementation at one batch size."""

    case: str  # "scan" or "block"
    implementation: str
    batch_size: int
    seq_len: int
    forward_ms: float
    forward_backward_ms: float


def _time_call(
    make_inputs: Callable[[], list[torch.Tensor]],
    run: Callable[..., torch.Tensor],
    repeats: int,
    backward: bool,
) -> float:
    """Return the best wall time in milliseconds of run(*inputs), with backward if asked."""
    best = float("inf")
    for attempt in range(repeats + 1):
        inputs = make_inputs()
        start = time.perf_counter()
        output = run(*inputs)
        if backward:
            output.square().mean().backward()
        elapsed = time.perf_counter() - start
        if attempt > 0:  # the first run is a warm-up
            best = min(best, elapsed)
    return best * 1e3


def _scan_inputs(
    batch_size: int, seq_len: int, config: MambaConfig, generator: torch.Generator
) -> list[torch.Tensor]:
    """Random scan inputs shaped as in a Mamba block: u, delta, z (B, E, L); B, C (B, N, L)."""
    d_inner = config.d_inner
    d_state = config.d_state
    u = torch.randn(batch_size, d_inner, seq_len, generator=generator)
    delta = torch.randn(batch_size, d_inner, seq_len, generator=generator)
    A = -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
    B = torch.randn(batch_size, d_state, seq_len, generator=generator)
    C = torch.randn(batch_size, d_state, seq_len, generator=generator)
    D = torch.ones(d_inner)
    z = torch.randn(batch_size, d_inner, seq_len, generator=generator)
    delta_bias = torch.full((d_inner,), -3.0)  # softplus(-3) ~ 0.05, inside mamba's dt range
    return [u, delta, A, B, C, D, z, delta_bias]


def _bench_scan(batch_size: int, seq_len: int, config: MambaConfig, repeats: int) -> list[Timing]:
    generator = torch.Generator().manual_seed(0)
    base_inputs = _scan_inputs(batch_size, seq_len, config, generator)

    def make_inputs() -> list[torch.Tensor]:
        return [tensor.clone().requires_grad_() for tensor in base_inputs]

    rows: list[Timing] = []
    for name, scan in (("fast", selective_scan), ("reference", selective_scan_reference)):

        def run(*inputs: torch.Tensor, scan: Callable[..., torch.Tensor] = scan) -> torch.Tensor:
            return scan(*inputs, delta_softplus=True)

        rows.append(
            Timing(
                case="scan",
                implementation=name,
                batch_size=batch_size,
                seq_len=seq_len,
                forward_ms=_time_call(make_inputs, run, repeats, backward=False),
                forward_backward_ms=_time_call(make_inputs, run, repeats, backward=True),
            )
        )
        _logger.info("scan %s B=%d done", name, batch_size)
    return rows


def _bench_blocks(
    batch_size: int, seq_len: int, config: MambaConfig, repeats: int, with_sequential: bool
) -> list[Timing]:
    from mambapy.mamba import MambaBlock  # type: ignore[import-untyped]
    from mambapy.mamba import MambaConfig as MambapyConfig

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch_size, seq_len, config.d_model, generator=generator)

    def make_inputs() -> list[torch.Tensor]:
        return [hidden.clone().requires_grad_()]

    torch.manual_seed(0)
    blocks: dict[str, torch.nn.Module] = {
        "archsweep MambaMixer": MambaMixer(
            config.d_model, config.d_state, config.d_conv, config.expand, config.dt_rank
        ),
    }
    variants = [(True, "mambapy pscan")] + (
        [(False, "mambapy sequential")] if with_sequential else []
    )
    for use_pscan, label in variants:
        mambapy_config = MambapyConfig(
            d_model=config.d_model,
            n_layers=1,
            d_state=config.d_state,
            expand_factor=config.expand,
            d_conv=config.d_conv,
            pscan=use_pscan,
        )
        blocks[label] = MambaBlock(mambapy_config)

    rows: list[Timing] = []
    for name, block in blocks.items():
        rows.append(
            Timing(
                case="block",
                implementation=name,
                batch_size=batch_size,
                seq_len=seq_len,
                forward_ms=_time_call(make_inputs, block, repeats, backward=False),
                forward_backward_ms=_time_call(make_inputs, block, repeats, backward=True),
            )
        )
        _logger.info("block %s B=%d done", name, batch_size)
    return rows


def _speedups(rows: list[Timing], case: str, baseline: str) -> list[dict[str, object]]:
    """Return, per batch size, the baseline's time divided by each other implementation's."""
    baselines = {
        row.batch_size: row for row in rows if (row.case, row.implementation) == (case, baseline)
    }
    summary: list[dict[str, object]] = []
    for row in rows:
        if row.case != case or row.implementation == baseline:
            continue
        base = baselines[row.batch_size]
        summary.append(
            {
                "case": case,
                "implementation": row.implementation,
                "baseline": baseline,
                "batch_size": row.batch_size,
                "forward_speedup": base.forward_ms / row.forward_ms,
                "forward_backward_speedup": base.forward_backward_ms / row.forward_backward_ms,
            }
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="path of the JSON file to write")
    parser.add_argument(
        "--batch-sizes", default="8,64", help="comma-separated batch sizes (default 8,64)"
    )
    parser.add_argument("--seq-len", type=int, default=128, help="time steps T (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--skip-mambapy", action="store_true", help="time only archsweep's scan and block"
    )
    parser.add_argument(
        "--with-mambapy-sequential",
        action="store_true",
        help="also time mambapy's sequential scan (slow: tens of seconds at batch 64)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    try:
        batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    torch.set_num_threads(args.threads)
    config = MambaConfig()
    load_before = os.getloadavg()[0]

    rows: list[Timing] = []
    for batch_size in batch_sizes:
        rows += _bench_scan(batch_size, args.seq_len, config, args.repeats)
        if not args.skip_mambapy:
            rows += _bench_blocks(
                batch_size, args.seq_len, config, args.repeats, args.with_mambapy_sequential
            )

    speedups = _speedups(rows, "scan", "reference")
    if not args.skip_mambapy:
        speedups += _speedups(rows, "block", "mambapy pscan")
    report = {
        "benchmark": "mamba selective scan, CPU",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            # Other processes share the machine; a load above the core count inflates times.
            "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0],
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "sizes": {
            "d_model": config.d_model,
            "d_inner": config.d_inner,
            "d_state": config.d_state,
            "d_conv": config.d_conv,
            "dt_rank": config.resolved_dt_rank,
            "seq_len": args.seq_len,
            "batch_sizes": batch_sizes,
        },
        "repeats": args.repeats,
        "results": [dataclasses.asdict(row) for row in rows],
        "speedups": speedups,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'case':6} {'implementation':22} {'B':>4} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    for row in rows:
        print(
            f"{row.case:6} {row.implementation:22} {row.batch_size:>4} "
            f"{row.forward_ms:9.1f} {row.forward_backward_ms:11.1f}"
        )
    for entry in speedups:
        print(
            f"{entry['case']}: {entry['implementation']} vs {entry['baseline']} at "
            f"B={entry['batch_size']}: forward x{entry['forward_speedup']:.2f}, "
            f"forward+backward x{entry['forward_backward_speedup']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
