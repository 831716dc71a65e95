"""A run's heartbeat against the real database: it stays fresh while the run's own long
transaction (a batch, or the version swap that completes an import) holds its job's row."""

from __future__ import annotations

import threading
import uuid

import sqlalchemy as sa

from helix_pipelines.db import jobs
from helix_pipelines.db.liveness import beat

AGES = (
    "SELECT extract(epoch FROM now() - h.heartbeat_at), extract(epoch FROM now() - j.heartbeat_at) "
    "FROM run_heartbeat h JOIN import_job j ON j.dagster_run_id = h.run_id WHERE h.run_id = :r"
)


def ages(engine, run_id: str) -> tuple[float, float]:
    with engine.connect() as conn:
        run_age, job_age = conn.execute(sa.text(AGES), {"r": run_id}).one()
    return float(run_age), float(job_age)


def test_a_locked_job_row_holds_back_neither_the_run_heartbeat_nor_the_beat(engine):
    job, _ = jobs.register_job(engine, source_name="h.csv", source_path="/h.csv", sha256="3" * 64)
    run_id = "run-" + uuid.uuid4().hex
    jobs.start_job(engine, job.id, run_id, stale_after_s=300)
    with engine.begin() as conn:  # both heartbeats an hour old
        conn.execute(sa.text("UPDATE run_heartbeat SET heartbeat_at = now() - interval '1 hour' "
                             "WHERE run_id = :r"), {"r": run_id})  # fmt: skip
        conn.execute(sa.text("UPDATE import_job SET heartbeat_at = now() - interval '1 hour' "
                             "WHERE id = :j"), {"j": job.id})  # fmt: skip

    with engine.connect() as swap:  # the completing transaction, holding the job's row
        swap.execute(sa.text("SELECT 1 FROM import_job WHERE id = :j FOR UPDATE"), {"j": job.id})
        beating = threading.Thread(target=beat, args=(engine, run_id, job.id))
        beating.start()
        beating.join(timeout=30)
        assert not beating.is_alive(), "the beat waited for the job's row lock"
        run_age, job_age = ages(engine, run_id)
        assert run_age < 60 and job_age > 3000  # the run is alive; its transaction has the job
        swap.rollback()

    beat(engine, run_id, job.id)
    assert max(ages(engine, run_id)) < 60
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM run_heartbeat WHERE run_id = :r"), {"r": run_id})
        conn.execute(sa.text("DELETE FROM import_job WHERE id = :j"), {"j": job.id})
