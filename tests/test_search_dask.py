"""`memfail search` on a Dask cluster (a scheduler and two worker processes on 127.0.0.1) gives
the JSON of the local run.

The fleet part's model runs are in the run cache (the test run's own, tests/conftest.py) once
the local run made them: on the cluster, each worker's fleet task reads them (the cluster's
worker processes inherit ``MEMFAIL_CACHE_DIR``), which is also what a second search on a
cluster does. The model runs on the cluster's workers in the check part here (signatures,
checks and verification); the fleet's sampling on a cluster is tests/test_fleet_dask.py's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_search import SMALL, TINY, run

distributed = pytest.importorskip("distributed")


def test_dask_cluster_gives_the_local_json(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    args = ["search", "--config", str(cfg), *SMALL, "--fleet-host-years", "6400",
            "--pareto-max", "1", "--json"]
    local = run(*args)
    assert local.exit_code == 0, local.output
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        remote = run(*args, "--scheduler", cluster.scheduler_address)
    assert remote.exit_code == 0, remote.output
    doc = json.loads(local.stdout)
    assert json.loads(remote.stdout) == doc
    assert doc["pareto"], "the fleet part ran"


def test_unreachable_scheduler_is_one_line() -> None:
    r = run("search", "--quick", "--scheduler", "tcp://127.0.0.1:9")
    assert r.exit_code == 2
    assert r.output.startswith("memfail: error: --scheduler: ")
    assert len(r.output.strip().splitlines()) == 1
