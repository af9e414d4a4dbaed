"""The ``textvae`` command: one small module per command group."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from typing import Optional

from ..errors import TextVAEError


class Parser(argparse.ArgumentParser):
    """argparse with its errors as our one error line (no usage block)."""

    def error(self, message: str):
        raise TextVAEError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    from . import evaluate, info, mnist, models, serve, train, use

    parser = Parser(prog="textvae", description="Sentence variational autoencoders.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, use, evaluate, info, models, serve, mnist):
        module.register(commands)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """The command: its exit status is 0, 2 after one ``textvae: error: ...``
    line, or 130 after Ctrl-C or SIGTERM (``textvae: interrupted``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    previous = _terminate_as_interrupt()
    try:
        return _run(argv)
    except TextVAEError as error:
        print(f"textvae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textvae: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `textvae sample RUN | head -1`
        sys.stderr.close()
        return 0
    except OSError as error:  # what no check foresaw: a disk that fails, a file that vanished
        where = f" ({error.filename})" if error.filename else ""
        print(f"textvae: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except MemoryError:
        print("textvae: error: out of memory", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: Optional[list[str]]) -> int:
    args = build_parser().parse_args(argv)
    args.invocation = "textvae " + shlex.join(sys.argv[1:] if argv is None else argv)  # recorded in result files
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING if args.quiet else logging.INFO,
                        format="textvae: %(message)s")
    for noisy in ("datasets", "transformers", "httpx", "huggingface_hub", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    return args.handler(args) or 0


def _terminate_as_interrupt():
    """SIGTERM ends the command as Ctrl-C does (cleanly, exit 130) rather than
    killing it where it stands; returns the previous handler (None off the main thread)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        return None
