"""Progress lines in a running step's event log (the UI shows them live), at a steady cadence:
the first and last always, in between at most one every `every_s` seconds."""

from __future__ import annotations

from dagster import AssetExecutionContext

from helix_pipelines.core.progress import (
    Cadence,
    Meter,
    describe_embedding,
    describe_import,
)
from helix_pipelines.pipeline.embedding import EmbedProgress
from helix_pipelines.pipeline.importing import ImportProgress


class ImportProgressLog:
    def __init__(self, context: AssetExecutionContext, every_s: float):
        self.context, self.cadence = context, Cadence(every_s)
        self.file: Meter | None = None
        self.rows = Meter(None)
        self.at_end = False

    def __call__(self, progress: ImportProgress) -> None:
        if self.file is None:  # the first batch: the rate counts from here
            self.file = Meter(progress.bytes_total, start=progress.bytes_read)
            self.rows = Meter(None, start=progress.rows)
            self._log(progress)
        elif self.cadence.due() or (progress.bytes_read >= progress.bytes_total > 0
                                    and not self.at_end):  # fmt: skip
            self.at_end = progress.bytes_read >= progress.bytes_total
            self._log(progress)

    def _log(self, progress: ImportProgress) -> None:
        file = self.file.update(progress.bytes_read, progress.bytes_total)
        self.context.log.info(describe_import(file, self.rows.update(progress.rows)))


class EmbedProgressLog:
    def __init__(self, context: AssetExecutionContext, every_s: float):
        self.context, self.cadence = context, Cadence(every_s)
        self.pairs: Meter | None = None
        self.waiting: str | None = None

    def __call__(self, progress: EmbedProgress) -> None:
        first = self.pairs is None
        if first:
            self.pairs = Meter(progress.total)
        done = progress.embedded + progress.failed
        snapshot = self.pairs.update(done, progress.total)
        changed = progress.waiting != self.waiting and progress.waiting is not None
        self.waiting = progress.waiting
        if first or changed or self.cadence.due() or done >= progress.total:
            self.context.log.info(describe_embedding(snapshot, progress.waiting))
