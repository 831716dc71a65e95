"""The partitioned assets: thin wrappers over the plain functions in helix_pipelines.pipeline."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.resources import DatabaseResource


@asset(
    partitions_def=import_files,
    group_name="knowledge_base",
    kinds={"postgres"},
    description=(
        "Question/answer pairs parsed from one imported file, committed in resumable batches."
    ),
)
def qa_pairs(context: AssetExecutionContext, database: DatabaseResource) -> MaterializeResult:
    database.get_engine()
    return MaterializeResult(metadata={})


@asset(
    partitions_def=import_files,
    deps=[qa_pairs],
    group_name="knowledge_base",
    kinds={"postgres", "openai"},
    description="Embeddings of the partition's pairs, written into qa_pair.embedding (pgvector).",
)
def qa_embeddings(context: AssetExecutionContext, database: DatabaseResource) -> MaterializeResult:
    database.get_engine()
    return MaterializeResult(metadata={})
