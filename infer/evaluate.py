"""`python -m infer.evaluate SOURCE --tasks T [T ...]`: lm-evaluation-harness scores as JSON (and wandb).

SOURCE is a run, checkpoint or export dir (infer/load.py). Tasks are lm-eval's own (hellaswag, arc_easy,
piqa, lambada_openai, ...: their data comes from the Hugging Face Hub, so they need network access) or tasks
defined in YAML files under --include-path, e.g. tests/infer/tasks (local JSONL data, works offline).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import errors
from errors import ConfigError
from infer.load import Loaded, add_source_arguments, load_from_args


def evaluate(
    loaded: Loaded,
    tasks: list[str],
    include_path: Path | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """lm-eval's results for `tasks` on a loaded model: {"results": {task: {metric: value}}, ...}."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from infer.lm_eval_model import DiffV2LM

    manager = None
    if (
        include_path is not None
    ):  # indexing lm-eval's own thousands of task files takes a while: skip when unused
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=str(include_path) if include_path else None)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        where = f" or under --include-path {include_path}" if include_path else ""
        raise ConfigError(f"unknown lm-eval task(s) {missing}: not among lm-eval's tasks{where}")
    lm = DiffV2LM(loaded, batch_size=batch_size, seed=seed)
    out = simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    return {
        "source": str(loaded.source),
        "tasks": tasks,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "results": out["results"],
        "n-samples": out.get("n-samples"),
        "versions": out.get("versions"),
    }


def scores(results: dict[str, Any]) -> dict[str, float]:
    """Flat {"lm_eval/<task>/<metric>": value} of the numeric results (wandb's and the console's view)."""
    flat = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "sample_len":
                flat[f"lm_eval/{task}/{key.replace(',none', '')}"] = value
    return flat


def log_wandb(results: dict[str, Any], mode: str, project: str, out: Path) -> None:
    import wandb

    run = wandb.init(
        project=project,
        mode=mode,
        dir=str(out.parent),
        job_type="eval",
        name=f"lm_eval-{Path(results['source']).name}",
        config={k: results[k] for k in ("source", "tasks", "num_fewshot", "limit")},
    )
    run.log(scores(results))
    run.finish()


@errors.reports_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m infer.evaluate", description=__doc__)
    add_source_arguments(parser)
    parser.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names")
    parser.add_argument("--include-path", type=Path, help="a folder of extra task YAML files")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="at most this many documents per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("lm_eval_results.json"), help="results JSON")
    parser.add_argument("--wandb-mode", choices=["disabled", "offline", "online"], default="disabled")
    parser.add_argument("--wandb-project", default="diffv2")
    args = parser.parse_args(argv)
    if args.include_path is not None and not args.include_path.is_dir():
        raise ConfigError(
            f"--include-path {args.include_path} is not a directory: pass a folder of task YAML files"
        )
    try:
        results = evaluate(
            load_from_args(args),
            args.tasks,
            args.include_path,
            args.num_fewshot,
            args.limit,
            args.batch_size,
            args.seed,
        )
    except ValueError as err:  # lm-eval reports a bad task YAML or argument as ValueError
        raise ConfigError(str(err)) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if args.wandb_mode != "disabled":
        log_wandb(results, args.wandb_mode, args.wandb_project, args.out)
    for key, value in scores(results).items():
        print(f"{key}: {value:.4f}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
