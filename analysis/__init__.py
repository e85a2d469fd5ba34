"""Run analysis: reads what runs recorded (config.yaml, metrics.jsonl, launch.json) into reports, studies,
tables and the results page; it never builds a model or starts a run.

    python -m analysis.report <run or sweep dirs> [--out DIR] [--reference VARIANT]
    python -m analysis.results --out docs/results.md <sweep dir> [<sweep dir> ...]

Nothing else in the project imports this package (tests/test_layers.py).
"""
