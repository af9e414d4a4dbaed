"""``textvae eval``, ``textvae compare`` and ``textvae plot``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import builtin
from ..builtin import resolve_run
from ..errors import TextVAEError
from ..evaluation.results import compare_table, read_run_result
from ..run_folder import NORMAL_PRIOR, check_output_file, eval_file, write_json_atomic
from .args import seed
from .use import add_refine, set_refine

log = logging.getLogger("textvae")


def register(commands) -> None:
    p = commands.add_parser("eval", help="IW-NLL, PPL, ELBO, KL, MI, AU, BLEU and sample diversity of a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--data", required=True, help="file or folder (as for train)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"))
    p.add_argument("--iw-samples", type=int, default=500, help="importance samples per sentence (default 500)")
    p.add_argument("--iw-chunk", type=int, default=50, help="samples per decoder pass (memory bound)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=500, help="prior samples for distinct-n and self-BLEU")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16 autocast: several times faster on CPUs with AMX (checked against fp32 by the tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--prior", choices=("run", "normal"), default="run",
                   help="p(z) of the IW-NLL and the samples: the run's (model.prior; default) or N(0, I), the "
                        "prior a VAE trains with, for a run with a second-stage prior (results then in "
                        "eval_SPLIT_normal_prior.json)")
    add_refine(p)
    p.set_defaults(handler=_eval)

    p = commands.add_parser("compare", help="Markdown table of the stored evaluations of several runs (text or MNIST)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--split", default="test")
    p.set_defaults(handler=_compare)

    p = commands.add_parser("plot", help="PNG figures of a run's training curves")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", help="folder for the PNG files (default RUN/plots)")
    p.set_defaults(handler=_plot)


def _eval(args: argparse.Namespace) -> None:
    from ..data import load_splits, read_texts
    from ..evaluation.journal import IWJournal, journal_path
    from ..evaluation.text_eval import EvalSettings, evaluate_text, format_table
    from ..model import TextVAE
    from ..runtime import describe_device, resolve_device
    from ..threads import govern

    if args.iw_samples < 1 or args.iw_chunk < 1 or args.batch_size < 1 or args.samples < 1:
        raise TextVAEError("--iw-samples, --iw-chunk, --batch-size and --samples must be >= 1")
    if args.json:
        check_output_file(Path(args.json))  # before the evaluation, not after it
    device = resolve_device(args.device)
    govern(0, device)  # one thread per core the other processes leave free (threads.py)
    model = TextVAE.from_pretrained(args.run, device=device)
    set_refine(model, args.refine)
    suffix = ""
    if args.prior == "normal" and model.config.model.prior != "normal":
        from ..prior import StandardNormalPrior

        model.prior, suffix = StandardNormalPrior(model.latent_dim), NORMAL_PRIOR
    texts = read_texts(args.data, [args.split], model.config.data.text_column)
    if args.split not in texts:
        raise TextVAEError(f"{args.data} has no {args.split} split")
    split = load_splits(args.data, model.tokenizer, [args.split], model.config.data.max_length, texts=texts)[args.split]
    settings = EvalSettings(args.iw_samples, args.iw_chunk, args.batch_size, args.samples, args.seed, args.precision)
    run_dir = resolve_run(args.run)
    # A stopped run goes on where it was (journal.py); a built-in model's folder is read-only.
    journal = None if builtin.is_builtin(run_dir) else IWJournal(journal_path(run_dir / eval_file(args.split, suffix)))
    result = evaluate_text(model, split, settings, device, journal)
    result["data"] = args.data
    result["device"] = describe_device(device)
    result["command"] = args.invocation
    result["prior"] = "normal" if suffix else model.config.model.prior
    print(format_table(result))
    targets = [] if builtin.is_builtin(run_dir) else [run_dir / eval_file(args.split, suffix)]  # built-ins are read-only
    for path in targets + ([Path(args.json)] if args.json else []):
        write_json_atomic(path, result)
    if journal is not None:
        journal.remove()


def _compare(args: argparse.Namespace) -> None:
    """One row per run, text and MNIST alike (the shared result schema)."""
    print(compare_table([(Path(run).name, read_run_result(Path(run), args.split)) for run in args.runs]))


def _plot(args: argparse.Namespace) -> None:
    from ..evaluation.plots import plot_run

    for path in plot_run(Path(args.run), Path(args.out) if args.out else None):
        print(path)
