"""Worker records made in bulk, the way upstream's ``DataManager.create_worker`` makes one.

Upstream creates workers one row and one transaction at a time; a scale step
here creates a pool's whole batch in one transaction, already placed in its
pool. The fields mirror ``create_worker``'s; ``tests/unit/test_upstream_contract.py``
fails loudly if upstream's columns or that method change.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from dask_gateway_server.backends.db_base import JobStatus, Worker
from dask_gateway_server.backends.db_base import workers as workers_table
from dask_gateway_server.utils import timestamp

if TYPE_CHECKING:
    from dask_gateway_server.backends.db_base import Cluster, DataManager


def create_workers(db: DataManager, cluster: Cluster, pool_name: str, n: int) -> list[Worker]:
    """Create ``n`` worker records of ``cluster`` in one transaction, placed in ``pool_name``."""
    now = timestamp()
    created = []
    with db.db.begin() as conn:
        for _ in range(n):
            fields = {
                "name": uuid.uuid4().hex,
                "status": JobStatus.CREATED,
                "target": JobStatus.RUNNING,
                "state": {"pool": pool_name},
                "start_time": now,
                "close_expected": False,
            }
            res = conn.execute(workers_table.insert().values(cluster_id=cluster.id, **fields))
            worker = Worker(id=res.inserted_primary_key[0], cluster=cluster, **fields)
            cluster.workers[worker.name] = worker
            created.append(worker)
    return created
