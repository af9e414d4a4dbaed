"""Using a trained model: sample, reconstruct, encode, complete, interpolate.

Results go to stdout, one sentence (or JSON object) a line; logs to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from ..data import check_text_file
from ..errors import TextVAEError
from ..model import TextVAE
from ..prior import check_temperature
from ..runtime import resolve_device
from ..threads import govern
from .args import finite, require, seed

log = logging.getLogger("textvae")

MAX_BEAM = 64  # beams a sentence: memory grows with their number
MAX_AT_ONCE = 10_000  # completions, interpolation steps: decoded in one batch
MAX_PROPOSALS = 100_000  # importance samples of z for complete, scored in one batch
CHUNK = 256  # input sentences encoded and decoded at once: memory stays flat in their number


def _common(p: argparse.ArgumentParser, decoding: str) -> None:
    p.add_argument("run", metavar="RUN", help="run directory of a trained model")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    if decoding:
        run_default = decoding == "run"  # sample, complete: the run's model.sample_strategy
        p.add_argument("--strategy", choices=("greedy", "sample", "beam"), default=None if run_default else decoding,
                       help="decoding (default: the run's model.sample_strategy, sample unless set)" if run_default
                       else f"decoding (default {decoding})")
        p.add_argument("--temperature", type=float, default=1.0)
        p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
        p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
        p.add_argument("--beam-size", type=int, default=4)
        p.add_argument("--length-penalty", type=float, default=1.0)
        p.add_argument("--max-length", type=int, default=None, help="tokens per sentence (default: data.max_length)")
        p.add_argument("--seed", type=seed, default=None, help="makes the output reproducible")
        words = p.add_mutually_exclusive_group()
        words.add_argument("--known-words", dest="words", action="store_const", const=True, default=None,
                           help="spell only words of the training corpus (default: the run's model.known_words)")
        words.add_argument("--any-words", dest="words", action="store_const", const=False,
                           help="let sub-word pieces spell any word, new ones included")
        words.add_argument("--words", dest="words_file", metavar="FILE",
                           help="spell only the words in FILE (whitespace-separated)")


def add_refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="refine each posterior mean by N gradient steps on its own objective "
                        "(semi-amortized inference; default: the run's objective.refine_steps)")


def set_refine(model, steps) -> None:
    """``--refine N`` over the run's ``objective.refine_steps`` (checked as the config checks it)."""
    if steps is not None:
        model.config.objective = dataclasses.replace(model.config.objective, refine_steps=steps)


def register(commands) -> None:
    p = commands.add_parser("sample", help="sentences decoded from z drawn from the prior")
    _common(p, "run")
    p.add_argument("-n", type=int, default=10, help="how many sentences")
    p.add_argument("--prior-temperature", type=float, default=None, metavar="T",
                   help="draw z with the prior's spread scaled by T (< 1: nearer its modes; "
                        "default: the run's model.prior_temperature, 1 unless set)")
    p.set_defaults(handler=_sample)

    p = commands.add_parser("reconstruct", help="decode sentences from their posterior mean")
    _common(p, "greedy")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="sentences (default: one a line on stdin)")
    add_refine(p)
    p.set_defaults(handler=_reconstruct)

    p = commands.add_parser("encode", help="posterior mean and log-variance of sentences, as JSON lines")
    _common(p, "")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="sentences (default: one a line on stdin)")
    add_refine(p)
    p.set_defaults(handler=_encode)

    p = commands.add_parser("complete", help="continuations of a prefix drawn from p(z | prefix)")
    _common(p, "run")
    p.add_argument("prefix", metavar="PREFIX")
    p.add_argument("-n", type=int, default=5, help="how many completions")
    p.add_argument("--proposals", type=int, default=512, help="importance samples of z for p(z | prefix) (an exemplar prior: "
                                                                       "at least one from each exemplar)")
    p.add_argument("--continue-word", action="store_true",
                   help="let the completion continue the prefix's last word (default: it starts a new word)")
    p.set_defaults(handler=_complete)

    p = commands.add_parser("interpolate", help="sentences along the latent path between two sentences")
    _common(p, "greedy")
    p.add_argument("start", metavar="A")
    p.add_argument("end", metavar="B")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--method", choices=("linear", "slerp"), default="linear")
    add_refine(p)
    p.set_defaults(handler=_interpolate)


def _load(args: argparse.Namespace, options: Optional[dict] = None) -> TextVAE:
    """The run's model; a ``--words FILE`` list in ``options`` becomes its
    trie here, once, not once a chunk."""
    device = resolve_device(args.device)
    govern(0, device)  # one thread per core the other processes leave free (threads.py)
    model = TextVAE.from_pretrained(args.run, device=device)
    set_refine(model, getattr(args, "refine", None))
    if options is not None and isinstance(options.get("words"), list):
        from ..operations import word_constraint

        options["words"] = word_constraint(model, options["words"])
    return model


def _options(args: argparse.Namespace) -> dict:
    options = {"strategy": args.strategy, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
               "beam_size": args.beam_size, "length_penalty": args.length_penalty, "max_length": args.max_length,
               "seed": args.seed, "words": args.words}
    if args.words_file is not None:
        options["words"] = _word_file(args.words_file)
    finite(temperature=args.temperature, top_p=args.top_p, length_penalty=args.length_penalty)
    if args.temperature <= 0 or args.top_k < 0 or not 0 < args.top_p <= 1 or args.beam_size < 1 \
            or (args.max_length is not None and args.max_length < 1):
        raise TextVAEError("need --temperature > 0, --top-k >= 0, 0 < --top-p <= 1, --beam-size >= 1, --max-length >= 1")
    require(args.beam_size <= MAX_BEAM, f"--beam-size must be <= {MAX_BEAM}")
    return options


def _word_file(path: str) -> list[str]:
    """The words of ``--words FILE`` (one clear error where it is missing, empty or not UTF-8)."""
    return check_text_file(Path(path), "--words file").split()


def _texts(args: argparse.Namespace) -> list[str]:
    """Sentences from the arguments, or one a line from stdin (strict UTF-8)."""
    if args.texts:
        texts = list(args.texts)
    else:
        raw = sys.stdin.buffer.read()
        try:
            texts = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise TextVAEError(f"standard input is not UTF-8 text (line {line})") from None
    if not texts:
        raise TextVAEError("no sentences given (as arguments or on standard input)")
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise TextVAEError(f"sentence {number} is empty")
    return texts


def _emit(lines: list[str]) -> None:
    for line in lines:
        print(line)


def _sample(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise TextVAEError("-n must be >= 1")
    from ..operations import sample_stream

    if args.prior_temperature is not None:
        check_temperature(args.prior_temperature)
    options = {**_options(args), "prior_temperature": args.prior_temperature}
    model = _load(args, options)
    if not model.has_latent and args.prior_temperature not in (None, 1):
        log.info("this model has no latent: --prior-temperature changes nothing")
    for lines in sample_stream(model, args.n, **options):  # the first lines come out at once
        _emit(lines)
        sys.stdout.flush()


def _chunks(texts: list[str]):
    return (texts[i: i + CHUNK] for i in range(0, len(texts), CHUNK))


def _reconstruct(args: argparse.Namespace) -> None:
    texts, options = _texts(args), _options(args)
    model = _load(args, options)
    for chunk in _chunks(texts):
        _emit(model.reconstruct(chunk, **options))


def _encode(args: argparse.Namespace) -> None:
    texts = _texts(args)
    model = _load(args)
    for chunk in _chunks(texts):
        q = model.encode(chunk)
        for text, mean, logvar in zip(chunk, q.mean.tolist(), q.logvar.tolist()):
            print(json.dumps({"text": text, "mean": [round(v, 6) for v in mean],
                              "logvar": [round(v, 6) for v in logvar]}))


def _complete(args: argparse.Namespace) -> None:
    if args.n < 1 or args.proposals < 1:
        raise TextVAEError("-n and --proposals must be >= 1")
    require(args.n <= MAX_AT_ONCE and args.proposals <= MAX_PROPOSALS,
            f"complete writes at most -n {MAX_AT_ONCE:,} with at most --proposals {MAX_PROPOSALS:,}")
    options = _options(args)
    _emit(_load(args, options).complete(args.prefix, args.n, proposals=args.proposals, continue_word=args.continue_word,
                               **options))


def _interpolate(args: argparse.Namespace) -> None:
    for text in (args.start, args.end):
        if not text.strip():
            raise TextVAEError("interpolation endpoints must not be empty")
    require(args.steps <= MAX_AT_ONCE, f"--steps must be <= {MAX_AT_ONCE:,}")
    options = _options(args)
    _emit(_load(args, options).interpolate(args.start, args.end, args.steps, method=args.method, **options))

