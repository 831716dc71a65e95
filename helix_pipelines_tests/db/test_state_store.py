"""PostgresStateStore: transitions applied under the row lock stay exact under contention, from
threads and from separate processes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from helix_pipelines.db.state_store import PostgresStateStore
from helix_pipelines_tests.support.db_fixtures import subprocess_env

INCREMENTS = 50

CHILD = """
import os
from helix_pipelines.db.engine import create_app_engine, with_driver
from helix_pipelines.db.state_store import PostgresStateStore
engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
store = PostgresStateStore(engine)
for _ in range({n}):
    store.transact("counter", lambda s: ({{"n": (s or {{}}).get("n", 0) + 1}}, None))
"""


def increment(state: dict | None) -> tuple[dict, int]:
    count = (state or {}).get("n", 0) + 1
    return {"n": count}, count


def test_a_new_name_starts_from_none(engine):
    store = PostgresStateStore(engine)
    assert store.read("fresh") is None
    assert store.transact("fresh", lambda state: ({"seen": state}, "result")) == "result"
    assert store.read("fresh") == {"seen": None}


def test_concurrent_threads_keep_a_counter_exact(engine):
    store = PostgresStateStore(engine)

    def work(_: int) -> list[int]:
        return [store.transact("counter", increment) for _ in range(INCREMENTS)]

    with ThreadPoolExecutor(6) as pool:
        results = [n for batch in pool.map(work, range(6)) for n in batch]

    assert store.read("counter") == {"n": 6 * INCREMENTS}
    assert sorted(results) == list(range(1, 6 * INCREMENTS + 1))  # no value handed out twice


def test_concurrent_processes_keep_a_counter_exact(engine, settings):
    code = CHILD.format(n=INCREMENTS)
    env = subprocess_env(settings)
    children = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    store = PostgresStateStore(engine)
    mine = [store.transact("counter", increment) for _ in range(INCREMENTS)]

    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]
    assert store.read("counter") == {"n": 4 * INCREMENTS}
    assert len(set(mine)) == INCREMENTS
