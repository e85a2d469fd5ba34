"""`python -m train.plan <overrides of python -m train> [--world-size N | --nodes N --gpus-per-node G]
[--device h100-80gb|...|cpu] [--memory-gib G] [--mfu 0.4] [--json] [--no-advice]`

Exit codes: 0 the run fits, 2 a bad option or config value (the message names it), 3 it does not fit (the
output names the knob that helps most).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from train.plan.devices import DEVICES, GIB

EXIT_BAD_VALUE = 2
EXIT_DOES_NOT_FIT = 3


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m train.plan",
        description="Plan a training run without a GPU: memory per rank against the device, FLOPs and "
        "step time. Every other argument is a Hydra override, as for python -m train.",
    )
    parser.add_argument("--world-size", type=int, help="ranks in all (default: nodes x gpus-per-node)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="ranks per node (default 1)")
    parser.add_argument(
        "--device", default="h100-80gb", help=f"one of {['cpu', *DEVICES]} (default h100-80gb)"
    )
    parser.add_argument("--memory-gib", type=float, help="the device's memory instead of the table's")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--no-advice", action="store_true", help="when it does not fit, skip tracing the knobs"
    )
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        print(f"plan: error: unknown option(s) {unknown}; see python -m train.plan --help", file=sys.stderr)
        return EXIT_BAD_VALUE
    world = args.world_size or args.nodes * args.gpus_per_node
    per_node = min(args.gpus_per_node, world)
    from hydra.errors import HydraException

    from conf import compose_run_config
    from train.plan import detect_device, find_device, make_plan
    from train.plan.report import format_plan

    try:
        if world < 1:
            raise ValueError(f"--world-size={world} must be at least 1")
        device = detect_device(per_node) if args.device == "auto" else find_device(args.device, per_node)
        if args.memory_gib is not None:
            device = dataclasses.replace(device, memory_bytes=int(args.memory_gib * GIB))
        cfg = compose_run_config(overrides, world_size=world)
    except (ValueError, HydraException) as err:  # ConfigError is a ValueError
        print(f"plan: config error: {err}", file=sys.stderr)
        return EXIT_BAD_VALUE
    plan = make_plan(cfg, world, device, args.mfu, advise=not args.no_advice)
    print(plan.to_json() if args.json else format_plan(plan), flush=True)
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
