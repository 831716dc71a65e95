"""A batch's pairs are copied, and its duplicates recorded, without a foreign key check of their
job only where that check could not fail and nothing else is switched off with it."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from helix_pipelines.core.parsing import Pair
from helix_pipelines.db.batches import Batch, _job_checked_by_lock, commit_batch
from helix_pipelines.db.engine import create_app_engine
from helix_pipelines_tests.pipeline.import_checks import empty_tables, started_job

PLAIN_ROLE = "helix_plain_role"


def batch_of(count: int, salt: str) -> Batch:
    pairs = [
        Pair(n, f"{salt} question {n}?", f"Answer {n}.", None,
             hashlib.sha256(f"{salt}{n}".encode()).hexdigest())
        for n in range(1, count + 1)
    ]  # fmt: skip
    return Batch(pairs, [], 1, count)


def pairs_of(engine, job_id) -> int:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM qa_pair WHERE import_job_id = %s"
        return conn.exec_driver_sql(query, (job_id,)).scalar()


def test_the_checks_are_off_only_around_the_copy_for_a_superuser(engine):
    with engine.begin() as conn:
        role = "SELECT current_setting('session_replication_role')"
        with _job_checked_by_lock(conn, "qa_pair"):
            assert conn.exec_driver_sql(role).scalar() == "replica"
        assert conn.exec_driver_sql(role).scalar() == "origin"
    with engine.connect() as conn:  # SET LOCAL: nothing outlives the transaction
        assert conn.exec_driver_sql(role).scalar() == "origin"


@pytest.mark.parametrize("table", ["qa_pair", "import_duplicate"])
def test_a_trigger_of_ones_own_still_fires_for_every_row(engine, table):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE seen_row (n bigint)")
        conn.exec_driver_sql(
            "CREATE FUNCTION note_row() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO seen_row VALUES (1); RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER note_row AFTER INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION note_row()"
        )
    try:
        for name in ("triggered.csv", "again.csv"):  # the second one's pairs are duplicates
            job_id, run_id = started_job(engine, name)
            commit_batch(engine, job_id, run_id, batch_of(50, "t"), keep_duplicates=False,
                         statement_timeout_s=60)  # fmt: skip
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM seen_row").scalar() == 50
            recorded = conn.exec_driver_sql("SELECT count(*) FROM import_duplicate").scalar()
            assert recorded == 50
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TRIGGER note_row ON {table}")
            conn.exec_driver_sql("DROP FUNCTION note_row()")
            conn.exec_driver_sql("DROP TABLE seen_row")
        empty_tables(engine)


@pytest.fixture
def plain_engine(engine, database_url):
    """An engine connecting as a role that is not a superuser, with the app's privileges."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {PLAIN_ROLE} LOGIN")
        conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA public TO {PLAIN_ROLE}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {PLAIN_ROLE}")
        conn.exec_driver_sql(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {PLAIN_ROLE}")
    url = sa.make_url(database_url).set(username=PLAIN_ROLE)
    plain = create_app_engine(url.render_as_string(hide_password=False))
    try:
        yield plain
    finally:
        plain.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {PLAIN_ROLE}")
            conn.exec_driver_sql(f"DROP ROLE {PLAIN_ROLE}")
        empty_tables(engine)


def test_a_role_that_may_not_switch_checks_off_imports_with_every_check(plain_engine):
    with plain_engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT current_setting('is_superuser')").scalar() == "off"
        with _job_checked_by_lock(conn, "qa_pair"):
            role = conn.exec_driver_sql("SELECT current_setting('session_replication_role')")
            assert role.scalar() == "origin"
    job_id, run_id = started_job(plain_engine, "plain.csv")
    outcome = commit_batch(plain_engine, job_id, run_id, batch_of(40, "p"),
                           keep_duplicates=False, statement_timeout_s=60)  # fmt: skip
    assert outcome.pairs_created == 40
    assert pairs_of(plain_engine, job_id) == 40
    again, run_id = started_job(plain_engine, "plain-again.csv")
    outcome = commit_batch(plain_engine, again, run_id, batch_of(40, "p"),
                           keep_duplicates=False, statement_timeout_s=60)  # fmt: skip
    assert outcome.duplicates_skipped == 40
    with plain_engine.connect() as conn:
        query = "SELECT count(*) FROM import_duplicate WHERE import_job_id = %s"
        assert conn.exec_driver_sql(query, (again,)).scalar() == 40
