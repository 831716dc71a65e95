from dagster import DynamicPartitionsDefinition

# One partition = one import job = one file. Keys are `[A-Za-z0-9._-]`: the file's name plus a
# short content hash (see core.naming); the original name stays in import_job.source_name.
import_files = DynamicPartitionsDefinition(name="import_files")
