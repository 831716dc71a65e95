"""The schema DESIGN.md names, built by the migrations on the real database."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa

from helix_pipelines.db import migrate
from helix_pipelines.db.engine import create_app_engine, ensure_database
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, subprocess_env

EXPECTED_COLUMNS = {
    "import_job": {
        "id", "partition_key", "source_name", "source_path", "source_sha256", "format", "status",
        "rows_total", "rows_processed", "pairs_created", "duplicates_skipped", "row_errors",
        "checkpoint_data", "attempts", "last_error", "dagster_run_id", "created_at", "started_at",
        "heartbeat_at", "finished_at", "source_key", "source_version",
    },
    "qa_pair": {
        "id", "import_job_id", "source_row", "question", "answer", "category", "content_hash",
        "embedding", "embedding_status", "embedding_model", "embedding_attempts",
        "embedding_error", "embedded_at", "created_at", "retired_at",
    },
    "import_row_error": {"import_job_id", "source_row", "error_code", "message", "raw_excerpt"},
}  # fmt: skip


@pytest.fixture
def scratch_engine(embedded_pg):
    """A database of its own, so migrating down does not disturb the other tests."""
    ensure_database(embedded_pg.url("postgres"), "helix_scratch")
    engine = create_app_engine(embedded_pg.url("helix_scratch"))
    migrate.downgrade(engine, 8)
    yield engine
    migrate.downgrade(engine, 8)
    engine.dispose()


def test_migrations_go_up_down_and_up_again(scratch_engine):
    migrate.upgrade(scratch_engine, 8)
    assert _tables(scratch_engine) >= set(EXPECTED_COLUMNS)
    migrate.downgrade(scratch_engine, 8)
    assert not _tables(scratch_engine) & set(EXPECTED_COLUMNS)
    migrate.upgrade(scratch_engine, 8)
    assert migrate.schema_embedding_dim(scratch_engine) == 8


def test_vector_index_migration_goes_up_down_and_up_on_a_filled_table(scratch_engine):
    migrate.upgrade(scratch_engine, 8, revision="0001")
    with scratch_engine.begin() as conn:
        job = conn.scalar(
            sa.text(
                "INSERT INTO import_job (partition_key, source_name) VALUES ('k', 'f') RETURNING id"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO qa_pair (import_job_id, source_row, question, answer, content_hash,"
                " embedding, embedding_status) SELECT :j, g, 'q' || g, 'a', 'h' || g,"
                " array_fill(g::real, ARRAY[8])::vector, 'completed' FROM generate_series(1, 50) g"
            ),
            {"j": job},
        )
    assert "WITH" not in _hnsw_definition(scratch_engine)  # 0001: pgvector's defaults
    migrate.upgrade(scratch_engine, 8)
    assert "(m='8', ef_construction='32')" in _hnsw_definition(scratch_engine)
    migrate.downgrade(scratch_engine, 8, revision="0001")
    assert "WITH" not in _hnsw_definition(scratch_engine)
    migrate.upgrade(scratch_engine, 8)
    assert "(m='8', ef_construction='32')" in _hnsw_definition(scratch_engine)
    with scratch_engine.connect() as conn:
        vectors = conn.scalar(sa.text("SELECT count(*) FROM qa_pair WHERE embedding IS NOT NULL"))
    assert vectors == 50


def _hnsw_definition(engine) -> str:
    with engine.connect() as conn:
        return conn.scalar(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_qa_pair_embedding_hnsw'")
        )


def test_tables_have_the_designed_columns(session_engine):
    inspector = sa.inspect(session_engine)
    for table, expected in EXPECTED_COLUMNS.items():
        columns = {c["name"] for c in inspector.get_columns(table)}
        assert expected <= columns, f"{table} lacks {expected - columns}"


def test_vector_column_has_the_configured_dimension(session_engine):
    assert migrate.schema_embedding_dim(session_engine) == TEST_EMBEDDING_DIM


def test_unique_keys_and_indexes(session_engine):
    inspector = sa.inspect(session_engine)
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("qa_pair")}
    assert ("import_job_id", "source_row") in uniques
    job_uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("import_job")}
    assert ("partition_key",) in job_uniques
    with session_engine.connect() as conn:
        indexes = dict(
            conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'qa_pair'")
            ).all()
        )
    assert any("hnsw" in d and "vector_cosine_ops" in d for d in indexes.values()), indexes
    # Lookups by import use the unique (import_job_id, source_row) index; a second index on
    # import_job_id alone only slowed COPY (dropped in 0007).
    assert "ix_qa_pair_import_job_id" not in indexes
    assert any("btree (import_job_id, source_row)" in d for d in indexes.values()), indexes
    # Content hashes are looked up by equality only: a hash index (0009).
    assert "USING hash (content_hash)" in indexes["ix_qa_pair_content_hash"]
    fks = inspector.get_foreign_keys("qa_pair")
    assert [fk["referred_table"] for fk in fks] == ["import_job"]


@pytest.mark.parametrize(
    ("table", "column", "bad_value"),
    [("import_job", "status", "exploded"), ("qa_pair", "embedding_status", "maybe")],
)
def test_database_enforces_statuses(engine, table, column, bad_value):
    with engine.begin() as conn:
        job_id = conn.scalar(
            sa.text(
                "INSERT INTO import_job (partition_key, source_name) VALUES ('k', 'f.csv') "
                "RETURNING id"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO qa_pair (import_job_id, source_row, question, answer, content_hash)"
                " VALUES (:j, 1, 'q', 'a', 'h')"
            ),
            {"j": job_id},
        )
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {table} SET {column} = :v"), {"v": bad_value})


def test_wrong_dimension_is_one_clear_line(settings):
    env = subprocess_env(settings, HELIX_EMBEDDING_DIM=str(TEST_EMBEDDING_DIM + 1))
    result = subprocess.run(
        [sys.executable, "-m", "helix_pipelines.cli", "db", "upgrade"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert error_lines == [
        f"helix-pipelines: error: HELIX_EMBEDDING_DIM is {TEST_EMBEDDING_DIM + 1} but the "
        f"database's qa_pair.embedding is vector({TEST_EMBEDDING_DIM}): set "
        f"HELIX_EMBEDDING_DIM={TEST_EMBEDDING_DIM}, or point HELIX_DATABASE_URL at a database "
        "created for this dimension"
    ]
    assert "Traceback" not in result.stderr


def test_db_url_hides_the_password(settings):
    env = subprocess_env(settings, HELIX_DATABASE_URL="postgresql://bob:s3cret@127.0.0.1:1/x")
    result = subprocess.run(
        [sys.executable, "-m", "helix_pipelines.cli", "db", "url"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout.strip() == "postgresql+psycopg://bob:***@127.0.0.1:1/x"
    assert "s3cret" not in result.stdout + result.stderr


def _tables(engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_imports_made_before_sources_become_versions_of_theirs(scratch_engine):
    migrate.upgrade(scratch_engine, 8, revision="0003")
    names = ["faq.csv", "orders.csv", "faq (2).csv", "FAQ_2026-11-30.csv"]
    with scratch_engine.begin() as conn:
        for minute, name in enumerate(names):
            conn.execute(
                sa.text(
                    "INSERT INTO import_job (id, partition_key, source_name, status, created_at) "
                    "VALUES (gen_random_uuid(), :key, :name, 'completed', "
                    "now() - make_interval(mins => :ago))"
                ),
                {"key": f"p{minute}", "name": name, "ago": 10 - minute},
            )

    migrate.upgrade(scratch_engine, 8, revision="0004")

    with scratch_engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT source_name, source_key, source_version FROM import_job")
        ).all()
    assert sorted(found) == [
        ("FAQ_2026-11-30.csv", "faq", 3), ("faq (2).csv", "faq", 2), ("faq.csv", "faq", 1),
        ("orders.csv", "orders", 1),
    ]  # fmt: skip
