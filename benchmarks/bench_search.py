"""Search efficiency: best validation F1 against trial-epochs spent, four search setups.

For each architecture and seed, four searches get the same budget of trial-epochs
(``--trials`` x ``--epochs``) on the built-in ``epf`` data, with the same small space
and the same training function (``search.training.train_model``):

- ``archsweep``: ``engine.prepare_studies`` + ``engine.run_trials`` with the defaults,
  i.e. multivariate TPE with constant_liar and CombinedPruner (underfit rule + median).
- ``optuna``: the plain script a user would write: ``TPESampler(seed)`` and
  ``MedianPruner()`` on the same storage, reporting validation F1 after every epoch.
- ``ray_asha``: Ray Tune with ``OptunaSearch`` and ``ASHAScheduler(max_t=epochs)``,
  one trial at a time on a local Ray instance.
- ``random``: ``RandomSampler(seed)`` without pruning: exactly ``--trials`` trials.

Each search starts trials until its trial-epochs reach the budget; the last trial may
overrun it, and the curve is cut at the budget. The figure of merit after k
trial-epochs is the best validation F1 reported at any epoch of any trial so far
(pruned trials included, as each setup's dashboard shows them). For each architecture
and seed, the run records the trial-epochs archsweep needed to reach the final best of
``optuna`` and of ``ray_asha``.

With ``--jobs N`` the searches run as N child processes at a time, one search per
child (an architecture, a seed and a method), and the parent merges their result
files. At most one child runs Ray Tune at a time, so no child's ray.init() can join
the local Ray instance of another. Result files already in the parts folder with the
same budget and data are reused, so a stopped run resumes.

Usage:
    python benchmarks/bench_search.py [OUT.json] [--seeds 2] [--trials 8] [--epochs 12]
        [--max-train-sessions 60] [--architectures transformer,mamba] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common

_logger = logging.getLogger("bench_search")

METHODS = ("archsweep", "optuna", "ray_asha", "random")

# Settings that result files must share to be merged or reused.
_MERGE_KEYS = ("trials", "epochs", "max_train_sessions", "stride")

# Fractions of the budget at which the table quotes the median best val F1.
CHECKPOINTS = (0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass
class SearchRun:
    """One search: the val F1 of every epoch it trained, in the order trained."""

    method: str
    architecture: str
    seed: int
    epoch_values: list[float] = dataclasses.field(default_factory=list)
    trials: int = 0
    stopped_trials: int = 0
    wall_s: float = 0.0

    def best_curve(self, budget: int) -> list[float]:
        """Return the best val F1 after each trial-epoch, cut at ``budget``."""
        curve, best = [], -math.inf
        for value in self.epoch_values[:budget]:
            best = max(best, value)
            curve.append(best)
        return curve


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "out",
        nargs="?",
        default=str(_common.RESULTS_DIR / "bench_search.json"),
        help="JSON file to write; the plot goes beside it with a .png suffix",
    )
    parser.add_argument("--seeds", type=int, default=2, help="seeds per setup")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds run are first-seed .. first-seed + seeds - 1",
    )
    parser.add_argument(
        "--trials", type=int, default=8, help="budget in trials of --epochs epochs each"
    )
    parser.add_argument("--epochs", type=int, default=12, help="max epochs per trial")
    parser.add_argument(
        "--max-train-sessions", type=int, default=60, help="epf train days kept (0: all)"
    )
    parser.add_argument("--stride", type=int, default=2, help="hours between epf windows")
    parser.add_argument(
        "--architectures", default="transformer,mamba", help="comma-separated architectures"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}"
    )
    parser.add_argument(
        "--runs-from",
        action="append",
        default=[],
        help="add the runs of an earlier result file with the same budget (repeatable); "
        "lets the setups run as separate processes",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="searches run at once as child processes (each with --threads threads)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    parser.add_argument("--no-docs", action="store_true", help="do not add a docs row")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# The searches


class _BudgetStop:
    """Optuna callback: stop the study once its trials reported ``budget`` epochs."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, study: Any, trial: Any) -> None:
        spent = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
        if spent >= self.budget:
            study.stop()


def _epoch_values(study: Any) -> tuple[list[float], int, int]:
    from optuna.trial import TrialState

    values: list[float] = []
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    for trial in trials:
        values += [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
    stopped = sum(1 for t in trials if t.state is TrialState.PRUNED)
    return values, len(trials), stopped


def _train_settings(epochs: int, seed: int) -> Any:
    from search.training import TrainSettings

    # patience = epochs: no early stopping, so only the pruners end a trial early.
    return TrainSettings(max_epochs=epochs, patience=epochs, seed=seed, device="cpu")


def run_archsweep(ctx: dict[str, Any], seed: int) -> SearchRun:
    """Search with archsweep's engine and its default sampler and pruners."""
    from search import engine

    arch = ctx["architecture"]
    studies = engine.prepare_studies(
        f"bench-archsweep-{seed}",
        ctx["storage"],
        [arch],
        settings=_train_settings(ctx["epochs"], seed),
        space=ctx["space"],
        dataset=ctx["dataset"],
        seed=seed,
        artifacts_dir=ctx["tmp"],
        weights_top_k=0,
    )
    engine.run_trials(studies[arch], ctx["dataset"], callbacks=[_BudgetStop(ctx["budget"])])
    values, trials, stopped = _epoch_values(studies[arch])
    return SearchRun("archsweep", arch, seed, values, trials, stopped)


def _plain_objective(ctx: dict[str, Any], seed: int) -> Callable[[Any], float]:
    """Return the objective of a plain Optuna script: sample, train, report, prune."""
    import optuna

    import models
    from search.training import train_model

    space = ctx["space"][ctx["architecture"]]
    base_settings = _train_settings(ctx["epochs"], seed)

    def objective(trial: optuna.Trial) -> float:
        values = space.sample(trial)
        config = models.config_from_dict(ctx["architecture"], space.model_fields(values))
        settings = dataclasses.replace(base_settings, **space.training_overrides(values))

        def after_epoch(epoch: int, result: Any) -> None:
            trial.report(result.val_f1_curve[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        result = train_model(
            ctx["architecture"], config, ctx["dataset"], settings, epoch_callback=after_epoch
        )
        return float(result.best_val_f1)

    return objective


def _run_plain(ctx: dict[str, Any], seed: int, method: str, sampler: Any, pruner: Any) -> SearchRun:
    import optuna

    study = optuna.create_study(
        study_name=f"bench-{method}-{seed}/{ctx['architecture']}",
        storage=ctx["storage"],
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
    )
    study.optimize(
        _plain_objective(ctx, seed), callbacks=[_BudgetStop(ctx["budget"])], gc_after_trial=True
    )
    values, trials, stopped = _epoch_values(study)
    return SearchRun(method, ctx["architecture"], seed, values, trials, stopped)


def run_optuna(ctx: dict[str, Any], seed: int) -> SearchRun:
    """Search as a plain Optuna script does: TPE with its defaults and MedianPruner."""
    import optuna

    return _run_plain(
        ctx, seed, "optuna", optuna.samplers.TPESampler(seed=seed), optuna.pruners.MedianPruner()
    )


def run_random(ctx: dict[str, Any], seed: int) -> SearchRun:
    """Random search without pruning."""
    import optuna

    return _run_plain(
        ctx, seed, "random", optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    )


def _ray_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: train one sampled configuration, report every epoch."""
    import dataclasses as dc

    import torch
    from ray import tune

    import models
    from search.data import DataSpec, load_dataset
    from search.space import parse_space
    from search.training import TrainSettings, train_model

    torch.set_num_threads(1)
    bench = config["bench"]
    arch = bench["architecture"]
    space = parse_space({arch: bench["space"]}, source="bench_search")[arch]
    dataset = load_dataset(DataSpec.from_dict(bench["data_spec"]))
    values = {key: config[key] for key in space.searched_keys()}
    values.update({k: s.value for k, s in space.params.items() if s.kind == "fixed"})
    settings = dc.replace(
        TrainSettings.from_dict(bench["settings"]), **space.training_overrides(values)
    )
    model_config = models.config_from_dict(arch, space.model_fields(values))

    def after_epoch(epoch: int, result: Any) -> None:
        tune.report({"val_f1": result.val_f1_curve[-1], "epoch": epoch})

    train_model(arch, model_config, dataset, settings, epoch_callback=after_epoch)


def _sample_space(space: Any, trial: Any) -> None:
    space.sample(trial)


def run_ray_asha(ctx: dict[str, Any], seed: int) -> SearchRun:
    """Search with Ray Tune: OptunaSearch (TPE) and ASHAScheduler, one trial at a time."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    arch = ctx["architecture"]
    space = ctx["space"][arch]
    epoch_values: list[float] = []
    trial_ids: set[str] = set()
    trial_epochs: dict[str, int] = {}

    class Recorder(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[no-untyped-def]
            epoch_values.append(float(result["val_f1"]))
            trial_ids.add(trial.trial_id)
            trial_epochs[trial.trial_id] = int(result["training_iteration"])

    # Tune saves its stopper and callbacks with every experiment checkpoint, so they contain
    # only small values. A closure over ctx pickled the whole dataset each time: about
    # 10 s per trial, against under 2 s without it (measured on 2 cores).
    budget = int(ctx["budget"])

    class BudgetStopper(tune.Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return len(epoch_values) >= budget

    # A module-level function in a partial: Tune pickles the searcher at checkpoints.
    define_by_run = functools.partial(_sample_space, space)
    searcher = OptunaSearch(space=define_by_run, metric="val_f1", mode="max", seed=seed)
    bench = {
        "architecture": arch,
        "space": space.to_dict(),
        "data_spec": ctx["dataset"].spec.to_dict(),
        "settings": _train_settings(ctx["epochs"], seed).to_dict(),
    }
    tuner = tune.Tuner(
        tune.with_resources(_ray_trainable, {"cpu": 1}),
        param_space={"bench": bench},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=ASHAScheduler(
                metric="val_f1", mode="max", max_t=ctx["epochs"], grace_period=1
            ),
            num_samples=ctx["budget"],  # an upper bound: every trial runs >= 1 epoch
            max_concurrent_trials=1,
            # One worker process serves every trial: starting a process per trial costs
            # more than a small trial's training on CPU, and trial-epochs do not count it.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"bench-ray-{arch}-{seed}",
            storage_path=str(Path(ctx["tmp"]) / "ray_results"),
            stop=BudgetStopper(),
            callbacks=[Recorder()],
            verbose=0,
        ),
    )
    tuner.fit()
    stopped = sum(1 for epochs in trial_epochs.values() if epochs < ctx["epochs"])
    return SearchRun("ray_asha", arch, seed, epoch_values, len(trial_ids), stopped)


RUNNERS: dict[str, Callable[[dict[str, Any], int], SearchRun]] = {
    "archsweep": run_archsweep,
    "optuna": run_optuna,
    "ray_asha": run_ray_asha,
    "random": run_random,
}


def _start_ray() -> None:
    import ray

    root = str(_common.REPO_ROOT)
    bench_dir = str(_common.REPO_ROOT / "benchmarks")
    # Ray's workers import search/ and models/ from the checkout and _common from here.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [root, bench_dir, *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    # A local instance without the dashboard. The log line below shows the GCS address it
    # bound, so a run can be checked against Ray's default head port 6379.
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    _logger.info("local Ray instance at %s", ray.get_runtime_context().gcs_address)


# ---------------------------------------------------------------------------
# Summaries


def _reach(curve: list[float], target: float) -> int | None:
    """Return the trial-epochs after which ``curve`` first reaches ``target``, else None."""
    for index, value in enumerate(curve):
        if value >= target - 1e-12:
            return index + 1
    return None


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarize(runs: list[SearchRun], budget: int, architectures: list[str]) -> dict[str, Any]:
    """Median and range of the best val F1 at the checkpoints, and archsweep's reach."""
    summary: dict[str, Any] = {}
    for arch in architectures:
        by_method: dict[str, dict[str, Any]] = {}
        for method in METHODS:
            method_runs = [r for r in runs if r.architecture == arch and r.method == method]
            if not method_runs:
                continue
            curves = [r.best_curve(budget) for r in method_runs]
            by_method[method] = {
                f"best_at_{int(f * 100)}pct": _spread(
                    [c[min(len(c), max(1, round(f * budget))) - 1] for c in curves if c]
                )
                for f in CHECKPOINTS
            }
            by_method[method]["trials"] = _spread([float(r.trials) for r in method_runs])
            by_method[method]["stopped_trials"] = _spread(
                [float(r.stopped_trials) for r in method_runs]
            )
            by_method[method]["wall_s"] = _spread([r.wall_s for r in method_runs])

        reach: dict[str, Any] = {}
        for baseline in ("optuna", "ray_asha"):
            per_seed = []
            for run in runs:
                if run.architecture != arch or run.method != baseline:
                    continue
                ours = next(
                    (
                        r
                        for r in runs
                        if r.architecture == arch and r.method == "archsweep" and r.seed == run.seed
                    ),
                    None,
                )
                base_curve = run.best_curve(budget)
                if ours is None or not base_curve:
                    continue
                per_seed.append(
                    {
                        "seed": run.seed,
                        "baseline_final_best": round(base_curve[-1], 4),
                        "archsweep_trial_epochs": _reach(ours.best_curve(budget), base_curve[-1]),
                    }
                )
            reach[baseline] = per_seed
        summary[arch] = {"methods": by_method, "archsweep_reach": reach}
    return summary


def plot(runs: list[SearchRun], budget: int, architectures: list[str], path: Path) -> bool:
    """Plot median best val F1 (line) and its min-max range over seeds (band) per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        _logger.warning("matplotlib is not installed; no plot written")
        return False

    figure, axes = plt.subplots(1, len(architectures), figsize=(6 * len(architectures), 4.2))
    axes = np.atleast_1d(axes)
    for axis, arch in zip(axes, architectures, strict=True):
        for method in METHODS:
            curves = [
                r.best_curve(budget) for r in runs if r.architecture == arch and r.method == method
            ]
            curves = [c + [c[-1]] * (budget - len(c)) for c in curves if c]
            if not curves:
                continue
            matrix = np.asarray(curves)
            steps = np.arange(1, budget + 1)
            # Dashed random search: it often matches the Optuna line (same seeded draws).
            (line,) = axis.plot(
                steps,
                np.median(matrix, axis=0),
                label=method,
                linestyle="--" if method == "random" else "-",
            )
            axis.fill_between(
                steps, matrix.min(axis=0), matrix.max(axis=0), color=line.get_color(), alpha=0.15
            )
        axis.set_title(f"{arch} on epf")
        axis.set_xlabel("trial-epochs spent")
        axis.set_ylabel("best validation F1 so far")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------
# Child processes


def _child_command(
    args: argparse.Namespace, arch: str, seed: int, method: str, out: Path
) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        str(out),
        "--architectures",
        arch,
        "--seeds",
        "1",
        "--first-seed",
        str(seed),
        "--methods",
        method,
        "--trials",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--max-train-sessions",
        str(args.max_train_sessions),
        "--stride",
        str(args.stride),
        "--threads",
        str(args.threads),
        "--no-docs",
        "--no-plot",
    ]


def _same_setting(path: Path, args: argparse.Namespace) -> bool:
    """Return whether ``path`` is a finished search with this run's budget and data."""
    import json

    try:
        earlier = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError):
        return False
    return all(earlier.get(key) == getattr(args, key) for key in _MERGE_KEYS)


def run_children(
    args: argparse.Namespace, architectures: list[str], methods: list[str], parts: Path
) -> list[Path]:
    """Run one child process per search, ``args.jobs`` at a time; return their result files.

    A search whose result file in ``parts`` has the same budget and data is not run
    again, so an interrupted run resumes where it stopped. A worker thread takes the next pending search, skipping Ray Tune searches while
    another one runs. A child that fails stops the run with its log file named.
    """
    pending = []
    outputs: list[Path] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arch in architectures:
            for method in methods:
                done = parts / f"bench_search_{method}_{arch}_{seed}.json"
                if _same_setting(done, args):
                    _logger.info("%s seed %d %s: reusing %s", arch, seed, method, done)
                    outputs.append(done)
                else:
                    pending.append((arch, seed, method))
    lock = threading.Lock()
    ray_running = [False]
    failures: list[str] = []

    def next_job() -> tuple[str, int, str] | None:
        while True:
            with lock:
                if failures or not pending:
                    return None
                for index, job in enumerate(pending):
                    if job[2] != "ray_asha" or not ray_running[0]:
                        if job[2] == "ray_asha":
                            ray_running[0] = True
                        return pending.pop(index)
            time.sleep(1.0)  # only Ray searches are left and one of them runs

    def worker() -> None:
        while (job := next_job()) is not None:
            arch, seed, method = job
            out = parts / f"bench_search_{method}_{arch}_{seed}.json"
            log = out.with_suffix(".log")
            started = time.perf_counter()
            with log.open("w") as log_file:
                completed = subprocess.run(
                    _child_command(args, arch, seed, method, out),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            with lock:
                if method == "ray_asha":
                    ray_running[0] = False
                if completed.returncode != 0:
                    failures.append(
                        f"{arch} seed {seed} {method}: exit {completed.returncode}, see {log}"
                    )
                else:
                    outputs.append(out)
            _logger.info(
                "%s seed %d %s finished in %.0f s (exit %d)",
                arch,
                seed,
                method,
                time.perf_counter() - started,
                completed.returncode,
            )

    threads = [threading.Thread(target=worker) for _ in range(args.jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit("bench_search: a search failed: " + "; ".join(failures))
    return sorted(outputs)


# ---------------------------------------------------------------------------
# Main


def _load_runs(path: Path, args: argparse.Namespace, architectures: list[str]) -> list[SearchRun]:
    """Read the runs of an earlier result file, which must share this run's budget and data."""
    import json

    payload = json.loads(path.read_text())
    earlier = payload["settings"]
    for key in _MERGE_KEYS:
        if earlier[key] != getattr(args, key):
            raise SystemExit(
                f"--runs-from {path}: {key} is {earlier[key]} there but {getattr(args, key)} "
                "here; merge only runs with the same budget and data"
            )
    return [SearchRun(**run) for run in payload["runs"] if run["architecture"] in architectures]


def _docs_row(header: dict[str, Any], args: argparse.Namespace, summary: dict[str, Any]) -> str:
    parts = []
    for arch, figures in summary.items():
        finals = []
        for method, stats in figures["methods"].items():
            final = stats["best_at_100pct"]
            finals.append(f"{method} {final['median']} [{final['min']}, {final['max']}]")
        reach_parts = []
        for baseline, per_seed in figures["archsweep_reach"].items():
            reached = [
                str(s["archsweep_trial_epochs"]) if s["archsweep_trial_epochs"] else "not reached"
                for s in per_seed
            ]
            reach_parts.append(f"to {baseline}'s final best: {', '.join(reached)}")
        parts.append(
            f"**{arch}** final best val F1 median [min, max]: {'; '.join(finals)}. "
            f"archsweep trial-epochs per seed {'; '.join(reach_parts)}"
        )
    setting = (
        f"{args.seeds} seeds, budget {args.trials} x {args.epochs} trial-epochs, "
        f"epf max_train_sessions {args.max_train_sessions}, stride {args.stride}"
    )
    return (
        f"| `{header['command']}` | {header['machine']} | {header['date'][:10]} | {setting} | "
        f"{' <br> '.join(parts)} |"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("search", "optuna", "ray", "storage"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    args = _parse_args(argv)
    architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for arch in architectures:
        if arch not in _common.SEARCH_SPACE:
            raise SystemExit(
                f"--architectures: no small space for {arch!r}; choose from "
                f"{', '.join(_common.SEARCH_SPACE)}"
            )
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"--methods: unknown method {method!r}; choose from {METHODS}")

    _common.configure_cpu(args.threads)
    header = _common.run_header(_common.command_line())
    budget = args.trials * args.epochs

    from search.data import load_dataset
    from search.space import parse_space
    from storage import open_storage

    dataset = load_dataset(_common.epf_spec(args.max_train_sessions, args.stride))
    _logger.info("epf: %d train and %d val windows", len(dataset.train.y), len(dataset.val.y))
    out = Path(args.out)
    runs: list[SearchRun] = []
    started = time.perf_counter()
    if args.jobs > 1:
        parts = out.parent / f"{out.stem}_parts"
        parts.mkdir(parents=True, exist_ok=True)
        args.runs_from = [
            *args.runs_from,
            *map(str, run_children(args, architectures, methods, parts)),
        ]
        methods = []  # the children ran them
    elif "ray_asha" in methods:
        _start_ray()

    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        for arch in architectures if methods else []:
            space = parse_space({arch: _common.SEARCH_SPACE[arch]}, source="bench_search")
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                # One journal storage per architecture and seed serves every Optuna setup.
                storage = open_storage(str(Path(tmp) / f"{arch}-{seed}.journal"))
                ctx = {
                    "architecture": arch,
                    "space": space,
                    "dataset": dataset,
                    "storage": storage,
                    "epochs": args.epochs,
                    "budget": budget,
                    "tmp": tmp,
                }
                for method in methods:
                    method_started = time.perf_counter()
                    run = RUNNERS[method](ctx, seed)
                    run.wall_s = round(time.perf_counter() - method_started, 1)
                    runs.append(run)
                    curve = run.best_curve(budget)
                    _logger.info(
                        "%s seed %d %s: %d trials (%d stopped early), %d trial-epochs, "
                        "best val F1 %.4f, %.0f s",
                        arch,
                        seed,
                        method,
                        run.trials,
                        run.stopped_trials,
                        len(run.epoch_values),
                        curve[-1] if curve else math.nan,
                        run.wall_s,
                    )

    for path in args.runs_from:
        runs += _load_runs(Path(path), args, architectures)

    summary = summarize(runs, budget, architectures)
    plot_path = out.with_suffix(".png")
    plotted = not args.no_plot and plot(runs, budget, architectures, plot_path)
    payload = {
        **header,
        "settings": {
            "seeds": args.seeds,
            "first_seed": args.first_seed,
            "trials": args.trials,
            "epochs": args.epochs,
            "budget_trial_epochs": budget,
            "max_train_sessions": args.max_train_sessions,
            "stride": args.stride,
            "architectures": architectures,
            "methods": [m.strip() for m in args.methods.split(",") if m.strip()],
            "jobs": args.jobs,
            "space": {arch: _common.SEARCH_SPACE[arch] for arch in architectures},
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "plot": plot_path.name if plotted else None,
        "summary": summary,
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    _common.write_json(out, payload)

    row = _docs_row(header, args, summary)
    print(row)
    if not args.no_docs:
        _common.append_docs_row("bench_search", row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
