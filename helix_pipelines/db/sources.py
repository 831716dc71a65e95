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
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from helix_pipelines.core.sources import Incoming, LivePair, SyncPlan, plan_sync
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
    plan = plan_sync(_incoming(conn, job), _live(conn, job))
    refusal = plan.refusal(max_retire_share, allow_shrink)
    summary = header | plan.counts() | {"retire_share": round(plan.retire_share, 4)}
    if refusal:
        return SyncOutcome(summary | {"refused": refusal}, refused=refusal)
    _report_repeated(conn, job.id, plan)
    changes = _first_changes(conn, job.id, plan)
    handed = _apply(conn, job, plan)
    summary["handed_over"] = handed
    return SyncOutcome(summary | {"allow_shrink": allow_shrink, "first_changes": changes})


def _incoming(conn: Connection, job) -> list[Incoming]:
    staged = conn.execute(
        sa.text(
            "SELECT source_row, id, question, content_hash FROM qa_pair WHERE import_job_id = :j"
        ),
        {"j": job.id},
    )
    rows = [Incoming(r[0], r[1], r[2], r[3], staged=True) for r in staged]
    duplicates = conn.execute(
        sa.text(
            "SELECT d.source_row, p.id, p.question, p.content_hash, "
            "p.retired_at IS NOT NULL AND pj.source_key = :k "
            "FROM import_duplicate d JOIN qa_pair p ON p.id = d.qa_pair_id "
            "JOIN import_job pj ON pj.id = p.import_job_id WHERE d.import_job_id = :j"
        ),
        {"j": job.id, "k": job.source_key},
    )
    rows += [
        Incoming(r[0], r[1], r[2], r[3], staged=False, retired_in_source=r[4]) for r in duplicates
    ]
    return rows


def _live(conn: Connection, job) -> list[LivePair]:
    rows = conn.execute(
        sa.text(
            "SELECT p.id, p.question, p.content_hash FROM qa_pair p "
            "JOIN import_job j ON j.id = p.import_job_id "
            "WHERE j.source_key = :k AND j.id <> :j AND j.status = ANY(:published) "
            "AND p.retired_at IS NULL"
        ),
        {"k": job.source_key, "j": job.id, "published": list(PUBLISHED_JOB_STATUSES)},
    )
    return [LivePair(*r) for r in rows]


def _report_repeated(conn: Connection, job_id: uuid.UUID, plan: SyncPlan) -> None:
    """A second row with a question already in the file and another answer becomes a row
    error: its pair (or its duplicate record) goes, the first row with that question stays."""
    if not plan.repeated:
        return
    staged = [row.pair_id for row, _ in plan.repeated if row.staged]
    skipped = [row.source_row for row, _ in plan.repeated if not row.staged]
    if staged:
        conn.execute(sa.text("DELETE FROM qa_pair WHERE id = ANY(:ids)"), {"ids": staged})
    if skipped:
        conn.execute(
            sa.text(
                "DELETE FROM import_duplicate WHERE import_job_id = :j AND source_row = ANY(:r)"
            ),
            {"j": job_id, "r": skipped},
        )
    conn.execute(
        sa.text(
            "INSERT INTO import_row_error (import_job_id, source_row, error_code, message, "
            "raw_excerpt) SELECT :j, r, :code, 'the question of row ' || first || ' again, with "
            "another answer (a pair''s identity within a source is its normalised question): "
            "row ignored', "
            "left(q, 500) FROM unnest(CAST(:rows AS int[]), CAST(:firsts AS int[]), "
            "CAST(:questions AS text[])) AS t(r, first, q)"
        ),
        {
            "j": job_id,
            "code": DUPLICATE_QUESTION,
            "rows": [row.source_row for row, _ in plan.repeated],
            "firsts": [first for _, first in plan.repeated],
            "questions": [row.question for row, _ in plan.repeated],
        },
    )
    conn.execute(
        sa.text(
            "UPDATE import_job SET pairs_created = pairs_created - :staged, "
            "duplicates_skipped = duplicates_skipped - :skipped, "
            "row_errors = row_errors + :n WHERE id = :j"
        ),
        {"j": job_id, "staged": len(staged), "skipped": len(skipped), "n": len(plan.repeated)},
    )


OLD_COLUMNS = (
    "import_job_id, source_row, question, answer, category, content_hash, embedding, "
    "embedding_status, embedding_model, embedding_attempts, embedding_error, "
    "embedding_truncated, embedded_at, retired_at"
)
_LOG = sa.text(
    "INSERT INTO qa_pair_change (import_job_id, qa_pair_id, change, "
    + ", ".join(f"old_{c.strip()}" for c in OLD_COLUMNS.split(","))
    + f") SELECT :j, id, :change, {OLD_COLUMNS} FROM qa_pair WHERE id = ANY(:ids)"
)


def _apply(conn: Connection, job, plan: SyncPlan) -> int:
    """Apply the plan, each change logged first with the values it replaces; returns how many
    pairs the source let go of went to another import that holds them."""

    def log(change: str, ids: list[int]) -> None:
        if ids:
            conn.execute(_LOG, {"j": job.id, "change": change, "ids": ids})

    heirs = _heirs(conn, job, plan.retired)
    retired = [pair for pair in plan.retired if pair not in heirs]
    log("updated", [live for _, live in plan.updated])
    log("retired", retired)
    log("revived", plan.revived)
    log("handed", list(heirs))
    if plan.updated:
        _update_in_place(conn, plan.updated)
    if retired:
        conn.execute(
            sa.text("UPDATE qa_pair SET retired_at = now() WHERE id = ANY(:ids)"),
            {"ids": retired},
        )
    _hand_over(conn, heirs)
    if plan.revived:
        conn.execute(
            sa.text("UPDATE qa_pair SET retired_at = NULL WHERE id = ANY(:ids)"),
            {"ids": plan.revived},
        )
    return len(heirs)


def _heirs(conn: Connection, job, pair_ids: list[int]) -> dict[int, tuple[uuid.UUID, int]]:
    """Of the pairs the source lets go, those another import in place also holds (it skipped
    them as duplicates): pair -> (that import, its row), the earliest such import."""
    if not pair_ids:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (d.qa_pair_id) d.qa_pair_id, d.import_job_id, d.source_row "
            "FROM import_duplicate d JOIN import_job j ON j.id = d.import_job_id "
            "WHERE d.qa_pair_id = ANY(:ids) AND d.import_job_id <> :j "
            "AND j.status = ANY(:published) AND j.source_key IS DISTINCT FROM :k "
            "ORDER BY d.qa_pair_id, j.created_at, d.source_row"
        ),
        {"ids": pair_ids, "j": job.id, "k": job.source_key,
         "published": list(PUBLISHED_JOB_STATUSES)},
    )  # fmt: skip
    return {r[0]: (r[1], r[2]) for r in rows}


def _hand_over(conn: Connection, heirs: dict[int, tuple[uuid.UUID, int]]) -> None:
    """Such a pair stays in the knowledge base, now the other import's (as a rollback hands
    it over): its row there stops counting as a duplicate."""
    if not heirs:
        return
    params = {
        "ids": list(heirs),
        "jobs": [str(job_id) for job_id, _ in heirs.values()],
        "rows": [row for _, row in heirs.values()],
    }
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE sync_heir ON COMMIT DROP AS SELECT * FROM unnest("
            "CAST(:ids AS bigint[]), CAST(:jobs AS uuid[]), CAST(:rows AS int[])) "
            "AS h(pair_id, job_id, source_row)"
        ),
        params,
    )
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
    conn.execute(sa.text("DROP TABLE sync_heir"))


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


def _update_in_place(conn: Connection, updated: list[tuple[int, int]]) -> None:
    """The live pair takes the new row's content and place (this version now holds it); the
    new row goes. A vector the new row already has is taken over; else the pair keeps its old
    vector (still found by its unchanged question) until the re-embedding replaces it."""
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE sync_update ON COMMIT DROP AS "
            "SELECT m.live_id, p.* FROM qa_pair p JOIN unnest(CAST(:staged AS bigint[]), "
            "CAST(:live AS bigint[])) AS m(staged_id, live_id) ON p.id = m.staged_id"
        ),
        {"staged": [s for s, _ in updated], "live": [live for _, live in updated]},
    )
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
            "content_hash = s.content_hash, embedding_error = NULL, "
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


def _first_changes(conn: Connection, job_id: uuid.UUID, plan: SyncPlan) -> list[dict]:
    """The first changes of the version, for its materialization (before they are applied)."""
    picks = [("updated", live, staged) for staged, live in plan.updated[:CHANGES_SHOWN]]
    picks += [("added", pid, pid) for pid in plan.added[:CHANGES_SHOWN]]
    picks += [("added", pid, pid) for pid in plan.revived[:CHANGES_SHOWN]]
    picks += [("retired", pid, pid) for pid in plan.retired[:CHANGES_SHOWN]]
    ids = sorted({pid for _, a, b in picks for pid in (a, b)})
    rows = conn.execute(
        sa.text("SELECT id, question, answer FROM qa_pair WHERE id = ANY(:ids)"), {"ids": ids}
    )
    text = {r.id: (r.question, r.answer) for r in rows}
    changes = []
    for change, pair_id, new_id in picks[: CHANGES_SHOWN * 2]:
        old_answer = text[pair_id][1] if change != "added" else ""
        new_answer = text[new_id][1] if change != "retired" else ""
        changes.append(
            {
                "change": change,
                "qa_pair_id": pair_id,
                "question": text[new_id][0][:200],
                "old_answer": old_answer[:200],
                "new_answer": new_answer[:200],
            }
        )
    return changes[:CHANGES_SHOWN]


# Imports whose pairs are not (or no longer) the knowledge base: source versions before their
# swap, refused ones, and those being rolled back. One small array, computed once per query.
HIDDEN_JOBS = (
    "ARRAY(SELECT id FROM import_job WHERE source_key IS NOT NULL "
    "AND status NOT IN ('completed', 'completed_with_errors'))"
)
