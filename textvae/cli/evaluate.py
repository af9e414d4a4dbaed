"""``textvae eval``, ``textvae compare`` and ``textvae plot``."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from .. import builtin
from ..builtin import resolve_run
from ..errors import TextVAEError

log = logging.getLogger("textvae")

COMPARE_COLUMNS = [("nll", "NLL"), ("ppl", "PPL"), ("elbo", "ELBO"), ("rec", "rec"), ("kl", "KL"), ("mi", "MI"),
                   ("au", "AU"), ("bleu", "BLEU"), ("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU")]


def register(commands) -> None:
    p = commands.add_parser("eval", help="IW-NLL, PPL, ELBO, KL, MI, AU, BLEU and sample diversity of a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--data", required=True, help="file or folder (as for train)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--iw-samples", type=int, default=500, help="importance samples per sentence (default 500)")
    p.add_argument("--iw-chunk", type=int, default=50, help="samples per decoder pass (memory bound)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=500, help="prior samples for distinct-n and self-BLEU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 autocast: several times faster on CPUs with AMX (checked against fp32 by the tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.set_defaults(handler=_eval)

    p = commands.add_parser("compare", help="Markdown table of the stored evaluations of several runs")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--split", default="test")
    p.set_defaults(handler=_compare)

    p = commands.add_parser("plot", help="PNG figures of a run's training curves")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", help="folder for the PNG files (default RUN/plots)")
    p.set_defaults(handler=_plot)


def _eval(args: argparse.Namespace) -> None:
    from ..data import load_splits, read_texts
    from ..evaluation.text_eval import EvalSettings, evaluate_text, format_table
    from ..model import TextVAE
    from ..training.trainer import describe_device, resolve_device

    if args.iw_samples < 1 or args.iw_chunk < 1 or args.batch_size < 1 or args.samples < 1:
        raise TextVAEError("--iw-samples, --iw-chunk, --batch-size and --samples must be >= 1")
    device = resolve_device(args.device)
    model = TextVAE.from_pretrained(args.run, device=device)
    texts = read_texts(args.data, [args.split], model.config.data.text_column)
    if args.split not in texts:
        raise TextVAEError(f"{args.data} has no {args.split} split")
    split = load_splits(args.data, model.tokenizer, [args.split], model.config.data.max_length, texts=texts)[args.split]
    settings = EvalSettings(args.iw_samples, args.iw_chunk, args.batch_size, args.samples, args.seed, args.precision)
    result = evaluate_text(model, split, settings, device)
    result["data"] = args.data
    result["device"] = describe_device(device)
    result["command"] = args.invocation
    print(format_table(result))
    text = json.dumps(result, indent=2) + "\n"
    run_dir = resolve_run(args.run)
    if not run_dir.resolve().is_relative_to(builtin.PRETRAINED_DIR.resolve()):  # built-in models are read-only
        _write_atomic(run_dir / f"eval_{args.split}.json", text)
    if args.json:
        _write_atomic(Path(args.json), text)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _compare(args: argparse.Namespace) -> None:
    rows = []
    for run in args.runs:
        path = Path(run) / f"eval_{args.split}.json"
        if not path.exists():
            raise TextVAEError(f"{run} has no stored evaluation ({path.name}); run `textvae eval {run} --data ...`")
        rows.append((run, json.loads(path.read_text())))
    header = "| run | " + " | ".join(label for _, label in COMPARE_COLUMNS) + " |"
    print(header)
    print("|" + "---|" * (len(COMPARE_COLUMNS) + 1))
    for run, result in rows:
        cells = []
        for key, _ in COMPARE_COLUMNS:
            value = result.get(key)
            cells.append("–" if value is None else f"{value:d}" if isinstance(value, int) else f"{value:.2f}")
        print(f"| {Path(run).name} | " + " | ".join(cells) + " |")


def _plot(args: argparse.Namespace) -> None:
    from ..evaluation.plots import plot_run

    for path in plot_run(Path(args.run), Path(args.out) if args.out else None):
        print(path)
