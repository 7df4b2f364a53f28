"""search._ray_worker: the trial quotas and the trial counts they work from."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search._ray_worker import StorageQuota, StudySnapshot, TrialQuota, take_snapshot
from search.engine import count_budget_trials
from storage import open_storage


def _snapshot(budget_used: int = 0, running: int = 0, retries: int = 0) -> StudySnapshot:
    return StudySnapshot(
        budget_used=budget_used, running=running, running_with_heartbeat=running, waiting=0,
        retries=retries,
    )


EMPTY = {"transformer": _snapshot(), "tft": _snapshot()}


def test_trial_quota_simultaneous_claims_capped() -> None:
    quota = TrialQuota({"transformer": 4}, {"transformer": _snapshot()})

    grants = [quota.claim(worker, {"transformer": _snapshot()}) for worker in range(8)]

    assert grants.count("transformer") == 4
    assert grants.count(None) == 4


def test_trial_quota_ties_spread_over_studies() -> None:
    quota = TrialQuota({"transformer": 5, "tft": 5}, EMPTY)

    assert quota.claim(0, EMPTY) == "transformer"
    assert quota.claim(1, EMPTY) == "tft"
    assert quota.progress() == {"transformer": 1, "tft": 1}


def test_trial_quota_study_behind_first() -> None:
    quota = TrialQuota({"transformer": 5, "tft": 5}, {"transformer": _snapshot(3), "tft": _snapshot(1)})

    assert quota.claim(0, EMPTY) == "tft"
    assert quota.claim(0, EMPTY) == "tft"
    assert quota.claim(0, EMPTY) == "transformer"


def test_trial_quota_unused_grant_returned() -> None:
    quota = TrialQuota({"transformer": 1}, {"transformer": _snapshot()})

    assert quota.claim(0, {"transformer": _snapshot()}) == "transformer"
    quota.release(0, ran_trial=False)

    assert quota.claim(1, {"transformer": _snapshot()}) == "transformer"
    quota.release(1, ran_trial=True)
    assert quota.claim(2, {"transformer": _snapshot()}) is None


def test_trial_quota_retry_reopens_budget() -> None:
    quota = TrialQuota({"transformer": 2}, {"transformer": _snapshot(budget_used=2, running=1)})
    assert quota.claim(0, {"transformer": _snapshot(2, running=1)}) is None

    # The running trial's worker died: Optuna failed it and queued a retry.
    assert quota.claim(0, {"transformer": _snapshot(1, retries=1)}) == "transformer"
    assert quota.claim(1, {"transformer": _snapshot(1, retries=1)}) is None


def test_trial_quota_restarted_worker_keeps_count() -> None:
    quota = TrialQuota({"transformer": 2}, {"transformer": _snapshot()})

    assert quota.claim(0, {"transformer": _snapshot()}) == "transformer"
    # Ray restarted worker 0's task: its first grant counts as a trial that started.
    assert quota.claim(0, {"transformer": _snapshot()}) == "transformer"
    assert quota.claim(1, {"transformer": _snapshot()}) is None


def test_trial_quota_no_budget_unlimited() -> None:
    quota = TrialQuota({"transformer": None}, {"transformer": _snapshot()})

    assert all(quota.claim(worker, {"transformer": _snapshot()}) for worker in range(50))


def test_storage_quota_counts_storage() -> None:
    quota = StorageQuota({"transformer": 3, "tft": 3})

    assert quota.claim(7, {"transformer": _snapshot(1), "tft": _snapshot(2)}) == "transformer"
    assert quota.claim(7, {"transformer": _snapshot(3), "tft": _snapshot(2)}) == "tft"
    assert quota.claim(7, {"transformer": _snapshot(3), "tft": _snapshot(3)}) is None


def test_take_snapshot_matches_engine_count(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "counts.journal"))
    study = optuna.create_study(study_name="counts/transformer", storage=storage, direction="maximize")
    distribution: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}
    for state, value in [(TrialState.COMPLETE, 0.5), (TrialState.PRUNED, None), (TrialState.FAIL, None)]:
        study.add_trial(create_trial(state=state, value=value, params={"x": 0.1}, distributions=distribution))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.2}, distributions=distribution))
    study.add_trial(
        create_trial(
            state=TrialState.WAITING, params={"x": 0.2}, distributions=distribution,
            system_attrs={"failed_trial": 3, "retry_history": [3]},
        )
    )
    study.ask()  # pops the retry: RUNNING

    snapshot = take_snapshot(study, fail_stale=False)

    assert snapshot.budget_used == count_budget_trials(study)
    assert snapshot.budget_used == 4  # COMPLETE, PRUNED, FAIL, RUNNING retry; not the retried FAIL
    assert snapshot.running == 1
    assert snapshot.running_with_heartbeat == 0  # no worker attribute: not a worker's trial
    assert snapshot.waiting == 0
    assert snapshot.retries == 1
