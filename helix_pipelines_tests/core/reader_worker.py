"""A child process that parses files for the hostile-input and fuzz tests, so that a crash (a
segmentation fault, an abort, exhausted memory) kills only the child and fails one test.

Run as ``python -m helix_pipelines_tests.core.reader_worker``. Protocol: one JSON request per
line on stdin, ``{"path": ..., "options": {...ParseOptions fields}}``; one JSON answer per line
on stdout with the pairs, the row errors, ``unreadable`` (the FileUnreadable message), ``bug``
(the traceback of any other exception) and ``rss_growth_mb``: the process's peak RSS above
its baseline, taken after the readers and their libraries were loaded and used once.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import traceback
from pathlib import Path

from helix_pipelines.core.parsing import FileUnreadable, ParseOptions, open_source


def parse(path: str, options: dict, keep_pairs: bool = True) -> dict:
    """``keep_pairs=False`` keeps only their count, so a big file's memory is the reader's."""
    answer: dict = {"pairs": [], "errors": [], "unreadable": None, "bug": None, "summary": None}
    answer["pair_count"] = 0
    try:
        with open_source(path, ParseOptions(**options)) as source:
            for chunk in source.chunks():
                answer["pair_count"] += len(chunk.pairs)
                if keep_pairs:
                    answer["pairs"] += [[p.source_row, p.question, p.answer] for p in chunk.pairs]
                answer["errors"] += [
                    [e.source_row, e.error_code, e.message, e.raw_excerpt] for e in chunk.errors
                ]
            answer["summary"] = source.summary.as_dict()
    except FileUnreadable as exc:
        answer["unreadable"] = str(exc)
    except BaseException:  # noqa: BLE001 - any other exception is the bug being looked for
        answer["bug"] = traceback.format_exc()
    return answer


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_up() -> None:
    """Load every reader and library once (pyarrow's pools, openpyxl) before the baseline."""
    from helix_pipelines_tests.core.hostile_files import write_shared_strings_xlsx

    rows = [("question", "answer"), *((f"q{i}", f"a{i}") for i in range(50))]
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "w.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
        (base / "w.json").write_text(json.dumps([{"question": "q", "answer": "a"}] * 50))
        (base / "w.jsonl").write_text('{"question": "q", "answer": "a"}\n' * 50)
        write_shared_strings_xlsx(base / "w.xlsx", rows)
        for name in ("w.csv", "w.json", "w.jsonl", "w.xlsx"):
            parse(str(base / name), {})


def main() -> None:
    _warm_up()
    baseline = _peak_mb()
    for line in sys.stdin:
        request = json.loads(line)
        answer = parse(request["path"], request.get("options", {}), request.get("keep_pairs", True))
        answer["rss_growth_mb"] = round(_peak_mb() - baseline, 1)
        sys.stdout.write(json.dumps(answer, ensure_ascii=True) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
