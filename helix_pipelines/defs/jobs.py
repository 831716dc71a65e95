"""Jobs: the partitioned import and embedding runs."""

from dagster import define_asset_job

from helix_pipelines.defs.assets import qa_embeddings, qa_pairs

import_job = define_asset_job(
    "import_job",
    selection=[qa_pairs, qa_embeddings],
    description="Import one file (qa_pairs) and embed its pairs (qa_embeddings).",
)

embed_job = define_asset_job(
    "embed_job",
    selection=[qa_embeddings],
    description="Embed the pending pairs of one import.",
)
