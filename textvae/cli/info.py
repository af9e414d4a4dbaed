"""``textvae info``: where a run stands (text or MNIST), for people and scripts.

    textvae info RUN            # step, status, training time, best validation
    textvae info RUN --json     # the same facts as one JSON object (training/info.py, RunInfo)
    textvae info RUN --get status   # one of them, for shell scripts: finished, resumable, no checkpoint
"""

from __future__ import annotations

import argparse
import json

from ..builtin import builtin_or_path
from ..errors import TextVAEError
from ..training.info import RunInfo, run_info


def register(commands) -> None:
    p = commands.add_parser("info", help="where a run stands: step, finished, stop reason, best validation")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--get", metavar="FIELD", help="print one field (e.g. status, step, finished)")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> None:
    info = run_info(builtin_or_path(args.run))
    facts = info.to_dict()
    if args.get:
        if args.get not in facts:
            raise TextVAEError(f"unknown field {args.get!r} (fields: {', '.join(facts)})")
        value = facts[args.get]
        print(value if isinstance(value, str) else json.dumps(value))
    elif args.json:
        print(json.dumps(facts))
    else:
        print(format_info(info))


def format_info(info: RunInfo) -> str:
    """The human-readable form: one "name  value" line per fact."""
    how = f" ({info.stop_reason})" if info.stop_reason else ""
    lines = [("run", f"{info.run} ({info.kind})"), ("status", info.status + how),
             ("weights", "model.safetensors" if info.weights else "none yet")]
    if info.step is not None:
        lines.append(("step", f"{info.step:,} ({info.epoch} epochs and {info.batch} batches done)"))
        minutes, seconds = divmod(int(info.seconds), 60)
        lines.append(("training time", f"{minutes} min {seconds} s"))
    best = info.best_valid
    if best:
        text = f"-elbo {-best['elbo']:.3f}"
        if "rec" in best:
            text = f"step {best['step']}: {text} rec {best['rec']:.3f} kl {best['kl']:.3f}"
        if "mi" in best:
            text += f" mi {best['mi']:.3f} au {best['au']}/{best['latent_dim']}"
        lines.append(("best valid", text))
    return "\n".join(f"{name:<14}{value}" for name, value in lines)
