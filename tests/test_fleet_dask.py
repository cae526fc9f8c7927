"""memfail fleet on a real Dask cluster: same seed, same numbers as the local run.

Starts a scheduler and two worker processes on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from memfail.fleet import engine
from memfail.fleet.oracle import TableOracle
from memfail.fleet.params import load_fleet

distributed = pytest.importorskip("distributed")

TABLE = TableOracle.from_dict({"rules": [
    {"when": {"second_fault": True}, "outcome": {"host_panic": 1}},
    {"when": {"consumed": True}, "outcome": {"vm_paused": 1}},
]})


def test_dask_cluster_gives_the_local_numbers() -> None:
    fleet = load_fleet()
    axes = {"scrub.period_hours": [12, 48]}
    local_run = engine.run(fleet, TABLE, 60_000, seed=7, workers=1).to_dict()
    local_sweep = [r.to_dict() for r in engine.sweep(fleet, axes, TABLE, 20_000, seed=7)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        addr = cluster.scheduler_address
        ticks: list[int] = []
        remote_run = engine.run(fleet, TABLE, 60_000, seed=7, scheduler=addr,
                                progress=ticks.append).to_dict()
        remote_sweep = [r.to_dict() for r in engine.sweep(fleet, axes, TABLE, 20_000, seed=7,
                                                          scheduler=addr)]
    assert remote_run == local_run
    assert remote_sweep == local_sweep
    assert sum(ticks) == len(engine.Plan.for_host_years(60_000).shards())


def test_unreachable_scheduler_is_one_line() -> None:
    with pytest.raises(engine.FleetError, match="cannot reach the Dask scheduler"):
        engine.run(load_fleet(), TABLE, 6400, seed=0, scheduler="tcp://127.0.0.1:9")
