"""`lmforge harness`: lm-evaluation-harness tasks on a run, through lm-eval's own runner."""

import json
from pathlib import Path
from typing import Any

from lmforge.errors import LMForgeError
from lmforge.interop.harness import register
from lmforge.rundir.files import write_text_atomic


def run_harness(
    run_dir: Path,
    tasks: list[str],
    include_path: Path | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    output: Path | None = None,
    batch_size: int = 1,
) -> tuple[dict[str, Any], str]:
    """lm-eval's results object for the tasks on the run, and its results table."""
    if not tasks:
        raise LMForgeError("give --tasks, e.g. --tasks hellaswag,arc_easy")
    register()
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise LMForgeError(
            f"lm-eval has no task {unknown[0]!r}; see `lm_eval --tasks list`, or give "
            "--include-path DIR with its YAML"
        )
    results = lm_eval.simple_evaluate(
        model="lmforge",
        model_args=f"run={Path(run_dir).resolve()}",
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        task_manager=manager,
    )
    table = make_table(results)
    record = json.loads(json.dumps(_plain(results), default=str))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output / "results.json", json.dumps(record, indent=2))
    return record, table


def _plain(results: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of lm-eval's results (no samples, no live config objects)."""
    keys = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "n-samples")
    return {key: results[key] for key in keys if key in results}
