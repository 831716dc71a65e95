"""Source versions in the database: numbering, the swap to a new version, and its undo.

The swap runs inside the transaction that completes the import (db.jobs.finish_job), under the
job's row lock and a lock on the source: a reader sees the source entirely at the previous
version or entirely at the new one, and a process killed at any instant leaves the previous
version (the import stays `processing`; recovery resumes it and the swap runs again).

Until its swap, the pairs a version inserted are hidden from search (`hidden_jobs`); a pair it
updates in place keeps its id, gets the new question, answer and category and is re-embedded;
the old values go to `qa_pair_change` so that a rollback restores them exactly
(db.source_history).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from helix_pipelines.core.normalize import question_key
from helix_pipelines.core.sources import SyncPlan
from helix_pipelines.db import dedupe
from helix_pipelines.db.schema import PUBLISHED_JOB_STATUSES

DUPLICATE_QUESTION = "duplicate_question"
CHANGES_SHOWN = 20


class SourceBusy(RuntimeError):
    """A later version of the source is in place: this one cannot be applied or undone."""

    transient = False


@dataclass(frozen=True)
class SyncOutcome:
    summary: dict  # stored as checkpoint_data["sync"]
    refused: str | None = None  # why the version was not applied


def lock_source(conn: Connection, key: str) -> None:
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("source:" + key))))


def next_version(conn: Connection, key: str) -> int:
    """The number of a new version of `key` (call with the source locked)."""
    current = conn.scalar(
        sa.text("SELECT max(source_version) FROM import_job WHERE source_key = :k"), {"k": key}
    )
    return (current or 0) + 1


def previous_version(conn: Connection, key: str, version: int) -> int | None:
    return conn.scalar(
        sa.text(
            "SELECT max(source_version) FROM import_job WHERE source_key = :k "
            "AND source_version < :v AND status = ANY(:published)"
        ),
        {"k": key, "v": version, "published": list(PUBLISHED_JOB_STATUSES)},
    )


def later_version_in_place(conn: Connection, key: str, version: int) -> int | None:
    return conn.scalar(
        sa.text(
            "SELECT max(source_version) FROM import_job WHERE source_key = :k "
            "AND source_version > :v AND status = ANY(:published)"
        ),
        {"k": key, "v": version, "published": list(PUBLISHED_JOB_STATUSES)},
    )


# -- the swap -----------------------------------------------------------------------------------


def sync_version(
    conn: Connection, job, *, max_retire_share: float, allow_shrink: bool
) -> SyncOutcome:
    """Inside the completing import's transaction: make `job` the source's current version, or
    refuse (nothing changed) when it would retire too much or a later version is in place."""
    lock_source(conn, job.source_key)
    header = {"source_key": job.source_key, "version": job.source_version}
    header["previous_version"] = previous_version(conn, job.source_key, job.source_version)
    later = later_version_in_place(conn, job.source_key, job.source_version)
    if later is not None:
        reason = f"cannot be applied: version {later}, a later one, is already in place"
        return SyncOutcome(header | {"refused": reason}, refused=reason)
    singles = _stage_first_version(conn, job) if _source_is_new(conn, job) else None
    if singles is None:
        stage_rows(conn, job)
    plan = plan_sync(conn)
    if singles is not None:
        plan = replace(plan, added=plan.added + singles[0], kept=plan.kept + singles[1])
    refusal = plan.refusal(max_retire_share, allow_shrink)
    summary = header | plan.counts() | {"retire_share": round(plan.retire_share, 4)}
    if refusal:
        return SyncOutcome(summary | {"refused": refusal}, refused=refusal)
    if plan.repeated:
        _report_repeated(conn, job.id)
    changes = _first_changes(conn, singles_of=None if singles is None else job.id)
    handed = _apply(conn, job)
    dedupe.advance(conn)  # pairs deleted or given new content: early lookups are stale
    summary["handed_over"] = handed
    return SyncOutcome(summary | {"allow_shrink": allow_shrink, "first_changes": changes})


# -- the plan, in SQL: a version of a million rows is never loaded into Python ---------------

_STAGING = ("sync_in", "sync_live", "sync_first", "sync_current", "sync_plan", "sync_heir")


def create_staging(conn: Connection) -> None:
    """The rows a plan reads: `sync_in`, the new version's rows that became (or matched) a
    pair; `sync_live`, the pairs the source holds now. Every staging table goes with the
    transaction; one left by an earlier plan in the same transaction goes here."""
    _drop_staging(conn)
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE sync_in (source_row int, pair_id bigint, key uuid, "
            "content_hash text, staged bool, retired_in_source bool) ON COMMIT DROP"
        )
    )
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE sync_live (pair_id bigint, key uuid, content_hash text) "
            "ON COMMIT DROP"
        )
    )


def stage_rows(conn: Connection, job) -> None:
    create_staging(conn)
    params = {"j": job.id, "k": job.source_key, "published": list(PUBLISHED_JOB_STATUSES)}
    # staged: inserted by this version, not yet visible. Not staged: a row skipped as a
    # duplicate of an existing pair, maybe one this source retired earlier.
    conn.execute(
        sa.text(
            "INSERT INTO sync_in SELECT source_row, id, question_key, content_hash, true, false "
            "FROM qa_pair WHERE import_job_id = :j"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "INSERT INTO sync_in SELECT d.source_row, p.id, p.question_key, p.content_hash, "
            "false, p.retired_at IS NOT NULL AND pj.source_key = :k "
            "FROM import_duplicate d JOIN qa_pair p ON p.id = d.qa_pair_id "
            "JOIN import_job pj ON pj.id = p.import_job_id WHERE d.import_job_id = :j"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "INSERT INTO sync_live SELECT p.id, p.question_key, p.content_hash FROM qa_pair p "
            "JOIN import_job j ON j.id = p.import_job_id "
            "WHERE j.source_key = :k AND j.id <> :j AND j.status = ANY(:published) "
            "AND p.retired_at IS NULL"
        ),
        params,
    )


# The rows of a version: the pairs it inserted (staged) and those it skipped as duplicates.
_VERSION_ROWS = (
    "SELECT source_row, id AS pair_id, question_key AS key, content_hash, true AS staged "
    "FROM qa_pair WHERE import_job_id = :j UNION ALL SELECT d.source_row, p.id, "
    "p.question_key, p.content_hash, false FROM import_duplicate d "
    "JOIN qa_pair p ON p.id = d.qa_pair_id WHERE d.import_job_id = :j"
)


def _source_is_new(conn: Connection, job) -> bool:
    """No other import ever held the source: nothing is live, retired or in place."""
    return not conn.scalar(
        sa.text("SELECT EXISTS (SELECT 1 FROM import_job WHERE source_key = :k AND id <> :j)"),
        {"k": job.source_key, "j": job.id},
    )


def _stage_first_version(conn: Connection, job) -> tuple[int, int] | None:
    """The first version of a source: with nothing live, a question on a single row is simply
    added (its pair is new) or kept (a duplicate), so only the rows of questions found more
    than once go to `sync_in` for the plan. Returns how many single questions were added and
    kept; None when a row has no question key (the whole plan computes the missing ones).
    One count per key instead of staging and sorting every row: 0.7 s for 500,000 rows, most of
    it the first read of the fresh rows, against 1.7 s."""
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))  # the count per key stays in memory
    counted = conn.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE n = 1 AND staged) AS added, "
            "count(*) FILTER (WHERE n = 1 AND NOT staged) AS kept, "
            "coalesce(array_agg(key) FILTER (WHERE n > 1), '{}') AS repeated, "
            "count(*) FILTER (WHERE key IS NULL) AS keyless FROM (SELECT key, count(*) AS n, "
            f"bool_and(staged) AS staged FROM ({_VERSION_ROWS}) r GROUP BY key) g"
        ),
        {"j": job.id},
    ).one()
    if counted.keyless:
        return None
    create_staging(conn)
    if counted.repeated:
        conn.execute(
            sa.text(
                "INSERT INTO sync_in SELECT source_row, pair_id, key, content_hash, staged, "
                f"false FROM ({_VERSION_ROWS}) r WHERE key = ANY(:keys)"
            ),
            {"j": job.id, "keys": counted.repeated},
        )
    return counted.added, counted.kept


KEY_BATCH = 10_000


def _fill_missing_keys(conn: Connection) -> None:
    """Pairs written before qa_pair had question keys (or by other tools) get theirs computed
    here, into the staging tables only: rewriting qa_pair would re-insert their vectors into
    the HNSW index. Streamed, so memory stays flat however many there are."""
    cursor = conn.connection.driver_connection.cursor(name="sync_missing_keys")
    # Driven from the staging tables (usually no row), each found pair fetched by its id.
    cursor.execute(
        "SELECT p.id, p.question FROM (SELECT pair_id FROM sync_in WHERE key IS NULL "
        "UNION SELECT pair_id FROM sync_live WHERE key IS NULL) m "
        "JOIN qa_pair p ON p.id = m.pair_id"
    )
    conn.execute(sa.text("CREATE TEMP TABLE sync_key (pair_id bigint, key uuid) ON COMMIT DROP"))
    writer = conn.connection.driver_connection.cursor()
    missing = 0
    while rows := cursor.fetchmany(KEY_BATCH):
        missing += len(rows)
        with writer.copy("COPY sync_key (pair_id, key) FROM STDIN") as copy:
            for pair_id, question in rows:
                copy.write_row((pair_id, uuid.UUID(bytes=question_key(question))))
    cursor.close()
    if missing:
        conn.execute(sa.text("ANALYZE sync_key"))
    for table in ("sync_in", "sync_live") if missing else ():
        conn.execute(
            sa.text(
                f"UPDATE {table} t SET key = k.key FROM sync_key k "
                "WHERE t.key IS NULL AND t.pair_id = k.pair_id"
            )
        )
    conn.execute(sa.text("DROP TABLE sync_key"))


# Each first row of the new version against the live pair with its question, if any.
_FIRSTS = (
    "FROM sync_first f LEFT JOIN sync_current c USING (key) CROSS JOIN LATERAL (SELECT CASE "
    "WHEN c.content_hash = f.content_hash THEN 'kept' "
    "WHEN c.pair_id IS NOT NULL AND f.staged THEN 'updated' WHEN f.staged THEN 'added' "
    "WHEN f.retired_in_source THEN 'revived' ELSE 'kept' END AS change) m"
)


def plan_sync(conn: Connection) -> SyncPlan:
    """What the new version (`sync_in`) does to the source's live pairs (`sync_live`):
    - the first row of each question counts (`sync_first`); the live pair of a question is
      the oldest live pair with it (`sync_current`);
    - a row whose question matches a live pair with the same content keeps it (same id);
    - a new row whose question matches a live pair updates that pair in place;
    - a row matching a pair this source retired earlier brings that pair back;
    - other new rows are added; other duplicates (a pair another import holds) are kept;
    - a later row with the same question and another answer is repeated (a row error); the
      same pair again is a duplicate, as in any import (or kept, under keep_duplicates);
    - live pairs no row matched (kept or updated) are retired.
    The changes that need work go to `sync_plan` (change, pair_id, staged_id, source_row,
    first_row, staged); kept and added pairs are only counted."""
    _fill_missing_keys(conn)
    run = lambda sql: conn.execute(sa.text(sql))  # noqa: E731
    # Sorts and hashes over a whole version stay in memory (the default spills to disk).
    run("SET LOCAL work_mem = '64MB'")
    # Every staging table is analysed once filled: without statistics the planner may join
    # them row by row (minutes for a version of 500,000 rows).
    run("ANALYZE sync_in")
    run("ANALYZE sync_live")
    # `mixed`: the question comes again in the file with another answer.
    run(
        "CREATE TEMP TABLE sync_first ON COMMIT DROP AS SELECT DISTINCT ON (key) *, "
        "min(content_hash) OVER k <> max(content_hash) OVER k AS mixed FROM sync_in "
        "WINDOW k AS (PARTITION BY key) ORDER BY key, source_row"
    )
    run(
        "CREATE TEMP TABLE sync_current ON COMMIT DROP AS "
        "SELECT DISTINCT ON (key) * FROM sync_live ORDER BY key, pair_id"
    )
    run("ANALYZE sync_first")
    run("ANALYZE sync_current")
    run(
        "CREATE TEMP TABLE sync_plan (change text, pair_id bigint, staged_id bigint, "
        "source_row int, first_row int, staged bool) ON COMMIT DROP"
    )
    # One pass over the first rows: what each does, counted, and the changes that need work.
    counts = dict(
        conn.execute(
            sa.text(
                "WITH firsts AS MATERIALIZED (SELECT m.change, c.pair_id AS live_id, "
                f"f.pair_id, f.source_row, f.staged {_FIRSTS}), planned AS ("
                "INSERT INTO sync_plan SELECT change, CASE WHEN change = 'updated' THEN live_id "
                "ELSE pair_id END, pair_id, source_row, NULL, staged FROM firsts "
                "WHERE change IN ('updated', 'revived')) "
                "SELECT change, count(*) FROM firsts GROUP BY 1"
            )
        ).all()
    )
    run(
        "INSERT INTO sync_plan SELECT 'repeated', i.pair_id, NULL, i.source_row, f.source_row, "
        "i.staged FROM sync_first f JOIN sync_in i USING (key) WHERE f.mixed "
        "AND i.source_row <> f.source_row AND i.content_hash <> f.content_hash"
    )
    run(
        "INSERT INTO sync_plan (change, pair_id) SELECT 'retired', l.pair_id FROM sync_live l "
        "WHERE NOT EXISTS (SELECT 1 FROM sync_current c JOIN sync_first f USING (key) "
        "WHERE c.pair_id = l.pair_id AND (c.content_hash = f.content_hash OR f.staged))"
    )
    run("ANALYZE sync_plan")
    counts |= dict(
        conn.execute(
            sa.text(
                "SELECT change, count(*) FROM sync_plan "
                "WHERE change IN ('retired', 'repeated') GROUP BY 1"
            )
        ).all()
    )
    live_before = conn.scalar(sa.text("SELECT count(*) FROM sync_live"))
    return SyncPlan(live_before=live_before, **counts)


def _drop_staging(conn: Connection) -> None:
    for table in _STAGING:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))


def _report_repeated(conn: Connection, job_id: uuid.UUID) -> None:
    """A second row with a question already in the file and another answer becomes a row
    error: its pair (or its duplicate record) goes, the first row with that question stays."""
    params = {"j": job_id, "code": DUPLICATE_QUESTION}
    conn.execute(
        sa.text(
            "INSERT INTO import_row_error (import_job_id, source_row, error_code, message, "
            "raw_excerpt) SELECT :j, s.source_row, :code, 'the question of row ' || "
            "s.first_row || ' again, with another answer (a pair''s identity within a source "
            "is its normalised question): row ignored', left(p.question, 500) "
            "FROM sync_plan s JOIN qa_pair p ON p.id = s.pair_id WHERE s.change = 'repeated'"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "DELETE FROM qa_pair WHERE id IN "
            "(SELECT pair_id FROM sync_plan WHERE change = 'repeated' AND staged)"
        )
    )
    conn.execute(
        sa.text(
            "DELETE FROM import_duplicate WHERE import_job_id = :j AND source_row IN "
            "(SELECT source_row FROM sync_plan WHERE change = 'repeated' AND NOT staged)"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "UPDATE import_job j SET pairs_created = pairs_created - r.staged, "
            "duplicates_skipped = duplicates_skipped - r.skipped, "
            "row_errors = row_errors + r.staged + r.skipped FROM (SELECT "
            "count(*) FILTER (WHERE staged) AS staged, count(*) FILTER (WHERE NOT staged) "
            "AS skipped FROM sync_plan WHERE change = 'repeated') r WHERE j.id = :j"
        ),
        params,
    )


OLD_COLUMNS = (
    "import_job_id, source_row, question, answer, category, content_hash, question_key, "
    "embedding, embedding_status, embedding_model, embedding_attempts, embedding_error, "
    "embedding_truncated, embedded_at, retired_at"
)
_LOG = (
    "INSERT INTO qa_pair_change (import_job_id, qa_pair_id, change, "
    + ", ".join(f"old_{c.strip()}" for c in OLD_COLUMNS.split(","))
    + f") SELECT :j, id, :change, {OLD_COLUMNS} FROM qa_pair WHERE id = "
)
# The pairs a change applies to, as one sorted array: qa_pair is then visited in id order
# through its primary key (`IN (subquery)` joined them in no order, a third slower).
_PLANNED = "ANY(ARRAY(SELECT pair_id FROM sync_plan WHERE change = '{}' ORDER BY 1))"
_RETIRED = (
    "ANY(ARRAY(SELECT pair_id FROM sync_plan s WHERE change = 'retired' "
    "AND NOT EXISTS (SELECT 1 FROM sync_heir h WHERE h.pair_id = s.pair_id) ORDER BY 1))"
)


def _apply(conn: Connection, job) -> int:
    """Apply the plan, each change logged first with the values it replaces; returns how many
    pairs the source let go of went to another import that holds them."""
    _stage_heirs(conn, job)

    def log(change: str, ids: str) -> None:
        conn.execute(sa.text(_LOG + ids), {"j": job.id, "change": change})

    log("updated", _PLANNED.format("updated"))
    log("retired", _RETIRED)
    log("revived", _PLANNED.format("revived"))
    log("handed", "ANY(ARRAY(SELECT pair_id FROM sync_heir ORDER BY 1))")
    _update_in_place(conn)
    conn.execute(sa.text(f"UPDATE qa_pair SET retired_at = now() WHERE id = {_RETIRED}"))
    handed = _hand_over(conn)
    conn.execute(
        sa.text(f"UPDATE qa_pair SET retired_at = NULL WHERE id = {_PLANNED.format('revived')}")
    )
    return handed


def _stage_heirs(conn: Connection, job) -> None:
    """Of the pairs the source lets go, those another import in place also holds (it skipped
    them as duplicates): `sync_heir` (pair_id, job_id, source_row), the earliest such import."""
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE sync_heir ON COMMIT DROP AS "
            "SELECT DISTINCT ON (d.qa_pair_id) d.qa_pair_id AS pair_id, "
            "d.import_job_id AS job_id, d.source_row "
            "FROM import_duplicate d JOIN import_job j ON j.id = d.import_job_id "
            "WHERE d.qa_pair_id IN (SELECT pair_id FROM sync_plan WHERE change = 'retired') "
            "AND d.import_job_id <> :j "
            "AND j.status = ANY(:published) AND j.source_key IS DISTINCT FROM :k "
            "ORDER BY d.qa_pair_id, j.created_at, d.source_row"
        ),
        {"j": job.id, "k": job.source_key, "published": list(PUBLISHED_JOB_STATUSES)},
    )


def _hand_over(conn: Connection) -> int:
    """Such a pair stays in the knowledge base, now the other import's (as a rollback hands
    it over): its row there stops counting as a duplicate."""
    handed = conn.scalar(sa.text("SELECT count(*) FROM sync_heir"))
    if not handed:
        return 0
    conn.execute(
        sa.text(
            "UPDATE qa_pair p SET import_job_id = h.job_id, source_row = h.source_row "
            "FROM sync_heir h WHERE p.id = h.pair_id"
        )
    )
    conn.execute(
        sa.text(
            "DELETE FROM import_duplicate d USING sync_heir h "
            "WHERE d.import_job_id = h.job_id AND d.source_row = h.source_row"
        )
    )
    recount(conn, "sync_heir", "job_id", +1)
    return handed


def recount(conn: Connection, table: str, job_column: str, sign: int) -> None:
    """Pairs created +sign, duplicates skipped -sign, per import in `table`."""
    conn.execute(
        sa.text(
            f"UPDATE import_job j SET pairs_created = j.pairs_created + {sign} * c.n, "
            f"duplicates_skipped = j.duplicates_skipped - {sign} * c.n "
            f"FROM (SELECT {job_column} AS job_id, count(*) AS n FROM {table} "
            f"GROUP BY 1) c WHERE j.id = c.job_id"
        )
    )


def _update_in_place(conn: Connection) -> None:
    """The live pair takes the new row's content and place (this version now holds it); the
    new row goes. A vector the new row already has is taken over; else the pair keeps its old
    vector (still found by its unchanged question) until the re-embedding replaces it."""
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE sync_update ON COMMIT DROP AS "
            "SELECT m.pair_id AS live_id, p.* FROM qa_pair p JOIN sync_plan m "
            "ON p.id = m.staged_id WHERE m.change = 'updated'"
        )
    )
    conn.execute(sa.text("ANALYZE sync_update"))
    conn.execute(sa.text("DELETE FROM qa_pair p USING sync_update s WHERE p.id = s.id"))
    # Another import that skipped the new row's content as a duplicate now points at the pair.
    conn.execute(
        sa.text(
            "UPDATE import_duplicate d SET qa_pair_id = s.live_id FROM sync_update s "
            "WHERE d.qa_pair_id = s.id"
        )
    )
    conn.execute(
        sa.text(
            "UPDATE qa_pair p SET import_job_id = s.import_job_id, source_row = s.source_row, "
            "question = s.question, answer = s.answer, category = s.category, "
            "content_hash = s.content_hash, question_key = s.question_key, "
            "embedding_error = NULL, "
            "embedding = CASE WHEN s.embedding_status = 'completed' THEN s.embedding "
            "ELSE p.embedding END, "
            "embedding_model = CASE WHEN s.embedding_status = 'completed' THEN s.embedding_model "
            "ELSE p.embedding_model END, "
            "embedded_at = CASE WHEN s.embedding_status = 'completed' THEN s.embedded_at "
            "ELSE p.embedded_at END, "
            "embedding_truncated = CASE WHEN s.embedding_status = 'completed' "
            "THEN s.embedding_truncated ELSE p.embedding_truncated END, "
            "embedding_status = CASE WHEN s.embedding_status = 'completed' THEN 'completed' "
            "ELSE 'pending' END, embedding_attempts = 0 "
            "FROM sync_update s WHERE p.id = s.live_id"
        )
    )
    conn.execute(sa.text("DROP TABLE sync_update"))


def _first_changes(conn: Connection, singles_of: uuid.UUID | None = None) -> list[dict]:
    """The first changes of the version, for its materialization (before they are applied):
    changed pairs with their question and their answers before and after. `singles_of`: the
    job of a first version, whose pairs of single questions are added without being staged."""
    # The first few of each kind: a top-N each, not a sort of a whole (maybe huge) change.
    planned = " UNION ALL ".join(
        f"(SELECT change, pair_id, staged_id, source_row FROM sync_plan WHERE change = "
        f"'{change}' ORDER BY source_row, pair_id LIMIT :shown)"
        for change in ("updated", "revived", "retired")
    )
    added = (
        f"(SELECT 'added', f.pair_id, f.pair_id, f.source_row {_FIRSTS} "
        "WHERE m.change = 'added' ORDER BY f.source_row LIMIT :shown)"
    )
    if singles_of is not None:
        added += (
            " UNION ALL (SELECT 'added', id, id, source_row FROM qa_pair WHERE "
            "import_job_id = :j AND question_key NOT IN (SELECT key FROM sync_in) "
            "ORDER BY source_row LIMIT :shown)"
        )
    picks = f"({planned} UNION ALL {added})"
    rows = conn.execute(
        sa.text(
            "SELECT s.change, s.pair_id, coalesce(n.question, o.question) AS question, "
            "CASE WHEN s.change IN ('updated', 'retired') THEN o.answer ELSE '' END "
            "AS old_answer, CASE WHEN s.change = 'retired' THEN '' ELSE n.answer END "
            f"AS new_answer FROM {picks} s JOIN qa_pair o ON o.id = s.pair_id "
            "LEFT JOIN qa_pair n ON n.id = CASE s.change WHEN 'retired' THEN NULL "
            "ELSE s.staged_id END ORDER BY array_position("
            "ARRAY['updated', 'added', 'revived', 'retired'], s.change), s.source_row, s.pair_id"
        ),
        {"shown": CHANGES_SHOWN, "j": singles_of},
    )
    return [
        {
            "change": "added" if r.change == "revived" else r.change,
            "qa_pair_id": r.pair_id,
            "question": r.question[:200],
            "old_answer": r.old_answer[:200],
            "new_answer": r.new_answer[:200],
        }
        for r in rows.all()[:CHANGES_SHOWN]
    ]


# Imports whose pairs are not (or no longer) the knowledge base: source versions before their
# swap, refused ones, and those being rolled back. One small array, computed once per query.
HIDDEN_JOBS = (
    "ARRAY(SELECT id FROM import_job WHERE source_key IS NOT NULL "
    "AND status NOT IN ('completed', 'completed_with_errors'))"
)
