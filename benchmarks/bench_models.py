"""Training step time of each architecture at its default size, and matmul efficiency.

For every registered architecture: the median wall time of one training step (forward,
backward, Adam update) on random windows [batch, window, features], by default the
watch data set's shape (64 windows of 50 steps, 6 features). Window values do not
change the work done, so no data set is loaded.

For the attention-based architectures (transformer, tft, bayesian, mcdropout) it also
counts the FLOPs of one forward and backward pass with
``torch.utils.flop_counter.FlopCounterMode``. The achieved FLOP/s (those FLOPs over
the median step time) is divided by the FLOP/s of a plain ``torch.mm`` measured in
the same run, on the same device and thread count. FlopCounterMode counts only matrix products and convolutions (mm, addmm, bmm,
attention kernels), not elementwise work or the optimizer, so the ratio is a lower
bound on how busy the device is.

Usage:
    python benchmarks/bench_models.py OUT.json [--steps 20] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

# Run as a script from the repository root or from benchmarks/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import models

_logger = logging.getLogger("bench_models")

FLOP_COUNTED = ("transformer", "tft", "bayesian", "mcdropout")
MM_SIZE = 1024  # square float32 matrices: large enough to reach the BLAS peak on one core


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_mm_flops(device: torch.device, repeats: int) -> dict[str, float]:
    """Return the FLOP/s of torch.mm on MM_SIZE x MM_SIZE float32 matrices (median of repeats)."""
    a = torch.randn(MM_SIZE, MM_SIZE, device=device)
    b = torch.randn(MM_SIZE, MM_SIZE, device=device)
    for _ in range(3):
        torch.mm(a, b)  # warm-up
    _synchronize(device)

    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)

    median = statistics.median(seconds)
    flops = 2.0 * MM_SIZE**3
    return {"size": MM_SIZE, "seconds_median": median, "flops_per_second": flops / median}


def count_step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Return the matmul FLOPs of one forward and backward pass (FlopCounterMode)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def bench_architecture(
    architecture: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Time ``args.steps`` training steps of ``architecture`` at its default size."""
    torch.manual_seed(0)
    model = models.build_model(architecture, num_features=args.features, seq_len=args.window)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, args.window, args.features, device=device)
    y = (torch.rand(args.batch_size, device=device) < 0.5).float()

    # The bayesian model's KL term, weighted as for a training split of 1e6 windows
    # (the weight changes no timing).
    kl_divergence = getattr(model, "kl_divergence", None)

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        if callable(kl_divergence):
            loss = loss + kl_divergence() / 1_000_000
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    _synchronize(device)

    seconds = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        _synchronize(device)
        seconds.append(time.perf_counter() - started)

    result: dict[str, Any] = {
        "num_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "step_seconds_median": statistics.median(seconds),
        "step_seconds_min": min(seconds),
        "step_seconds_max": max(seconds),
    }
    if architecture in FLOP_COUNTED:
        flops = count_step_flops(model, x, y)
        result["flops_per_step"] = flops
        result["flops_per_second"] = flops / result["step_seconds_median"]
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file to write the results to")
    parser.add_argument("--arch", default="all",
                        help="comma-separated architectures, or all (default: all registered)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per architecture")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per step")
    parser.add_argument("--window", type=int, default=50, help="time steps per window (T)")
    parser.add_argument("--features", type=int, default=6, help="features per step (F)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1, for comparable CPU figures)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    registered = [name for name in models.ARCHITECTURES if name in models.CONFIG_CLASSES]
    architectures = registered if args.arch == "all" else args.arch.split(",")
    unknown = [name for name in architectures if name not in registered]
    if unknown:
        _logger.error("unknown or unavailable architecture(s) %s; available: %s",
                      ", ".join(unknown), ", ".join(registered))
        return 2

    mm = measure_mm_flops(device, repeats=max(args.steps, 10))
    _logger.info("torch.mm %dx%d: %.2f GFLOP/s", MM_SIZE, MM_SIZE, mm["flops_per_second"] / 1e9)

    results: dict[str, Any] = {}
    for architecture in architectures:
        result = bench_architecture(architecture, args, device)
        if "flops_per_second" in result:
            result["mm_fraction"] = result["flops_per_second"] / mm["flops_per_second"]
        results[architecture] = result
        _logger.info(
            "%-12s %9d parameters  %8.1f ms/step%s",
            architecture,
            result["num_parameters"],
            1e3 * result["step_seconds_median"],
            f"  {result['mm_fraction']:.2f} of torch.mm FLOP/s" if "mm_fraction" in result else "",
        )

    record = {
        "settings": {
            "batch_size": args.batch_size,
            "window": args.window,
            "features": args.features,
            "steps": args.steps,
            "warmup": args.warmup,
            "device": str(device),
            "threads": args.threads,
        },
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "mm": mm,
        "architectures": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
