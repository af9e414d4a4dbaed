"""The ``textvae`` command: one small module per command group."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import Optional

from ..errors import TextVAEError


def build_parser() -> argparse.ArgumentParser:
    from . import evaluate, info, mnist, models, serve, train, use

    parser = argparse.ArgumentParser(prog="textvae", description="Sentence variational autoencoders.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, use, evaluate, info, models, serve, mnist):
        module.register(commands)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    args.invocation = "textvae " + shlex.join(sys.argv[1:] if argv is None else argv)  # recorded in result files
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING if args.quiet else logging.INFO,
                        format="textvae: %(message)s")
    for noisy in ("datasets", "transformers", "httpx", "huggingface_hub", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return args.handler(args) or 0
    except TextVAEError as error:
        print(f"textvae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textvae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `textvae sample RUN | head -1`
        sys.stderr.close()
        return 0
