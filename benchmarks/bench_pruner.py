"""Accuracy of the underfit pruner, replayed offline on trials trained to the end.

Step 1 samples ``--trials`` configurations at random from a wide space: tiny widths,
dropout up to 0.6 and learning rates down to 1e-5, so some trials starve. It trains
each on a built-in data set (``--data``, default ``epf``) for ``--epochs`` epochs
without pruning or early stopping, and keeps the train and validation F1 curves.
``--curves FILE`` reuses the curves of an earlier result file and skips training.

Step 2 labels each trial by how it ended. A trial *ends underfit* when both hold:
- gap: the mean validation F1 of the last ``END_EPOCHS`` epochs exceeds the mean train
  F1 of those epochs (by any amount), and
- flat: the least-squares slope of train F1 over the second half of the epochs is at most
  ``FLAT_SLOPE`` F1 per epoch, so more epochs would not close the gap soon.
The top quartile is the ceil(n / 4) trials with the highest best validation F1.

Step 3 replays ``UnderfitPruner`` (search/pruners.py, unchanged) on every prefix of each
trial's curves for each setting of a grid over margin, min_delta, stagnation window,
patience and warmup, and reports per setting: recall on the trials that end underfit,
the epoch at which each was caught, false prunes among the top quartile, prunes of the
other trials, and the share of all epochs the prunes would have saved.

Usage:
    python benchmarks/bench_pruner.py [OUT.json] [--data epf|watch] [--trials 40]
        [--epochs 12] [--max-train-sessions 60] [--stride 2] [--architecture transformer]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np

_logger = logging.getLogger("bench_pruner")

# Epochs averaged at the end of a curve to decide whether validation F1 exceeds train F1.
END_EPOCHS = 3
# Train F1 gaining at most this much per epoch (least-squares slope over the second half
# of the curve) counts as flat: 0.005 per epoch is 0.06 over 12 epochs, near the
# epoch-to-epoch noise of F1 on a few thousand windows.
FLAT_SLOPE = 0.005

DEFAULT_SETTING: dict[str, Any] = {
    "margin": 0.02,
    "min_delta": 0.02,
    "stagnation_window": 5,
    "underfit_patience": 3,
    "warmup_epochs": 5,
}
GRID: dict[str, list[Any]] = {
    "margin": [0.0, 0.02, 0.05],
    "min_delta": [0.01, 0.02, 0.05],
    "stagnation_window": [3, 5],
    "underfit_patience": [1, 2, 3],
    "warmup_epochs": [2, 5],
}


@dataclasses.dataclass
class TrialCurves:
    """One trial trained to the end: its sampled values and both F1 curves."""

    number: int
    params: dict[str, Any]
    train_f1: list[float]
    val_f1: list[float]
    num_parameters: int
    seconds: float
    fail_reason: str | None = None

    @property
    def best_val_f1(self) -> float:
        return max(self.val_f1) if self.val_f1 else math.nan


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out",
        nargs="?",
        default=str(_common.RESULTS_DIR / "bench_pruner.json"),
        help="JSON file to write (default benchmarks/results/bench_pruner.json)",
    )
    parser.add_argument("--trials", type=int, default=40, help="trials trained to the end")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per trial")
    parser.add_argument(
        "--data",
        default="epf",
        choices=("epf", "watch"),
        help="built-in data set (watch: train and val have about the same positive share)",
    )
    parser.add_argument(
        "--max-train-sessions",
        type=int,
        default=None,
        help="train sessions kept, 0 for all (default 60 days for epf, every subject for watch)",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=None,
        help="time steps between windows (default 2 hours for epf, the data set's own for watch)",
    )
    parser.add_argument("--architecture", default="transformer", help="transformer or mamba")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler and training")
    parser.add_argument(
        "--curves", default=None, help="reuse the curves of this earlier result file"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-docs", action="store_true", help="do not add a docs row")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# Step 1: curves


def train_curves(args: argparse.Namespace) -> list[TrialCurves]:
    """Train ``args.trials`` random configurations to the end and return their curves."""
    import optuna

    import models
    from search.data import load_dataset
    from search.space import parse_space
    from search.training import TrainSettings, TrialFailed, train_model

    space = parse_space(
        {args.architecture: _common.STARVED_SPACE[args.architecture]}, source="bench_pruner"
    )[args.architecture]
    dataset = load_dataset(_common.data_spec(args.data, args.max_train_sessions, args.stride))
    _logger.info(
        "%s: %d train and %d val windows, positive share %.3f and %.3f",
        args.data,
        len(dataset.train.y),
        len(dataset.val.y),
        dataset.train.y.mean(),
        dataset.val.y.mean(),
    )

    sampler = optuna.samplers.RandomSampler(seed=args.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    curves = []
    for number in range(args.trials):
        trial = study.ask()
        values = space.sample(trial)
        config = models.config_from_dict(args.architecture, space.model_fields(values))
        settings = TrainSettings(
            max_epochs=args.epochs,
            patience=args.epochs,  # no early stopping: the curves must reach the cap
            seed=args.seed + number,
            device="cpu",
            **space.training_overrides(values),
        )

        started = time.perf_counter()
        try:
            result = train_model(args.architecture, config, dataset, settings)
        except TrialFailed as error:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            curves.append(TrialCurves(number, values, [], [], 0, 0.0, error.reason))
            _logger.warning("trial %d failed: %s", number, error.reason)
            continue

        study.tell(trial, result.best_val_f1)
        curves.append(
            TrialCurves(
                number=number,
                params=values,
                train_f1=[round(v, 6) for v in result.train_f1_curve],
                val_f1=[round(v, 6) for v in result.val_f1_curve],
                num_parameters=result.num_parameters,
                seconds=round(time.perf_counter() - started, 2),
            )
        )
        _logger.info(
            "trial %d/%d: best val F1 %.3f, final train F1 %.3f, %.1f s, %s",
            number + 1,
            args.trials,
            result.best_val_f1,
            result.train_f1_curve[-1],
            curves[-1].seconds,
            values,
        )
    return curves


def load_curves(path: str) -> list[TrialCurves]:
    """Read the trial curves of an earlier result file."""
    import json

    payload = json.loads(Path(path).read_text())
    return [TrialCurves(**trial) for trial in payload["trials"]]


# ---------------------------------------------------------------------------
# Step 2: labels


def _slope(values: list[float]) -> float:
    epochs = np.arange(len(values), dtype=float)
    return float(np.polyfit(epochs, np.asarray(values, dtype=float), 1)[0])


def label_trial(trial: TrialCurves) -> dict[str, Any]:
    """Return the end-of-training figures and whether ``trial`` ends underfit (module doc)."""
    train_end = statistics.fmean(trial.train_f1[-END_EPOCHS:])
    val_end = statistics.fmean(trial.val_f1[-END_EPOCHS:])
    second_half = trial.train_f1[len(trial.train_f1) // 2 :]
    slope = _slope(second_half)
    return {
        "train_f1_end": round(train_end, 4),
        "val_f1_end": round(val_end, 4),
        "train_slope_second_half": round(slope, 5),
        "ends_underfit": val_end > train_end and slope <= FLAT_SLOPE,
    }


# ---------------------------------------------------------------------------
# Step 3: replay


def caught_epoch(trial: TrialCurves, setting: dict[str, Any]) -> int | None:
    """Return the first epoch at which UnderfitPruner with ``setting`` prunes ``trial``."""
    from optuna.trial import TrialState, create_trial

    from search.pruners import UnderfitPruner

    pruner = UnderfitPruner(**setting)
    for epoch in range(len(trial.val_f1)):
        # A real FrozenTrial as the objective leaves it after `epoch`: curves so far.
        frozen = create_trial(
            state=TrialState.PRUNED,
            user_attrs={"train_f1_curve": trial.train_f1[: epoch + 1]},
            intermediate_values={e: trial.val_f1[e] for e in range(epoch + 1)},
        )
        if pruner.explain(None, frozen) is not None:  # type: ignore[arg-type]
            return epoch
    return None


def replay(
    trials: list[TrialCurves], labels: dict[int, dict[str, Any]], setting: dict[str, Any]
) -> dict[str, Any]:
    """Score one pruner setting on every trial's curves."""
    ranked = sorted(trials, key=lambda t: t.best_val_f1, reverse=True)
    top_quartile = {t.number for t in ranked[: math.ceil(len(ranked) / 4)]}
    underfit = [t for t in trials if labels[t.number]["ends_underfit"]]
    total_epochs = sum(len(t.val_f1) for t in trials)

    caught: dict[int, int] = {}
    for trial in trials:
        epoch = caught_epoch(trial, setting)
        if epoch is not None:
            caught[trial.number] = epoch

    caught_underfit = {n: e for n, e in caught.items() if labels[n]["ends_underfit"]}
    other_prunes = sorted(n for n in caught if not labels[n]["ends_underfit"])
    false_top = sorted(n for n in caught if n in top_quartile)
    saved = sum(len(t.val_f1) - caught[t.number] - 1 for t in trials if t.number in caught)
    return {
        "setting": setting,
        "recall": round(len(caught_underfit) / len(underfit), 3) if underfit else None,
        "caught_underfit": len(caught_underfit),
        "underfit_trials": len(underfit),
        "caught_epochs": caught_underfit,
        "median_caught_epoch": (
            statistics.median(caught_underfit.values()) if caught_underfit else None
        ),
        "false_prunes_top_quartile": false_top,
        "prunes_of_other_trials": other_prunes,
        "epochs_saved_share": round(saved / total_epochs, 3) if total_epochs else 0.0,
    }


def _rank_key(score: dict[str, Any]) -> tuple[float, ...]:
    # Safety first (no top-quartile trial pruned), then recall, then an early catch,
    # then few prunes of trials that do not end underfit.
    median_epoch = score["median_caught_epoch"]
    return (
        len(score["false_prunes_top_quartile"]),
        -(score["recall"] or 0.0),
        median_epoch if median_epoch is not None else math.inf,
        len(score["prunes_of_other_trials"]),
    )


def grid_settings() -> list[dict[str, Any]]:
    """Return every setting of GRID, plus the defaults when the grid lacks them."""
    keys = list(GRID)
    settings = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*GRID.values())
    ]
    if DEFAULT_SETTING not in settings:
        settings.append(dict(DEFAULT_SETTING))
    return settings


# ---------------------------------------------------------------------------
# Output


def _format_setting(setting: dict[str, Any]) -> str:
    return (
        f"margin {setting['margin']}, min_delta {setting['min_delta']}, "
        f"window {setting['stagnation_window']}, patience {setting['underfit_patience']}, "
        f"warmup {setting['warmup_epochs']}"
    )


def _format_score(score: dict[str, Any]) -> str:
    return (
        f"recall {score['caught_underfit']}/{score['underfit_trials']}, "
        f"median catch epoch {score['median_caught_epoch']}, "
        f"top-quartile false prunes {len(score['false_prunes_top_quartile'])}, "
        f"other prunes {len(score['prunes_of_other_trials'])}, "
        f"epochs saved {score['epochs_saved_share']:.0%}"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("search").setLevel(logging.WARNING)
    args = _parse_args(argv)
    if args.data == "epf":
        if args.max_train_sessions is None:
            args.max_train_sessions = 60
        if args.stride is None:
            args.stride = 2
    _common.configure_cpu(args.threads)
    header = _common.run_header(_common.command_line())
    started = time.perf_counter()

    curves = load_curves(args.curves) if args.curves else train_curves(args)
    trials = [t for t in curves if t.fail_reason is None and t.val_f1]
    labels = {t.number: label_trial(t) for t in trials}
    _logger.info(
        "%d trials, %d end underfit", len(trials), sum(v["ends_underfit"] for v in labels.values())
    )

    scores = [replay(trials, labels, setting) for setting in grid_settings()]
    scores.sort(key=_rank_key)
    default_score = next(s for s in scores if s["setting"] == DEFAULT_SETTING)
    best_score = scores[0]

    payload = {
        **header,
        "settings": {
            "architecture": args.architecture,
            "data": args.data,
            "trials": args.trials,
            "epochs": args.epochs,
            "max_train_sessions": args.max_train_sessions,
            "stride": args.stride,
            "seed": args.seed,
            "space": _common.STARVED_SPACE[args.architecture],
            "end_epochs": END_EPOCHS,
            "flat_slope": FLAT_SLOPE,
            "grid": GRID,
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "defaults": default_score,
        "best": best_score,
        "ranked": scores,
        "labels": {str(n): v for n, v in labels.items()},
        "trials": [dataclasses.asdict(t) for t in curves],
    }
    _common.write_json(Path(args.out), payload)

    print(f"trials: {len(trials)}, ending underfit: {default_score['underfit_trials']}")
    print(f"defaults ({_format_setting(DEFAULT_SETTING)}): {_format_score(default_score)}")
    print(f"best     ({_format_setting(best_score['setting'])}): {_format_score(best_score)}")

    if not args.no_docs:
        row = (
            f"| `{header['command']}` | {header['machine']} | {header['date'][:10]} | "
            f"{args.architecture} on {args.data}, {len(trials)} trials x {args.epochs} epochs, "
            f"{default_score['underfit_trials']} end underfit | "
            f"{_format_score(default_score)} | {_format_setting(best_score['setting'])}: "
            f"{_format_score(best_score)} |"
        )
        _common.append_docs_row("bench_pruner", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
