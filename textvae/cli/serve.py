"""``textvae serve RUN``: the latent-space explorer, a web page and a JSON API.

The address is checked and bound before the model loads, so a port in use or
a bad host is one error line at once; Ctrl-C stops the server cleanly.
"""

from __future__ import annotations

import argparse
import errno
import math
import socket
import sys

from ..errors import TextVAEError
from .args import seed


def register(commands) -> None:
    p = commands.add_parser(
        "serve", help="a latent-space explorer in the browser (a web page and a JSON API)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve a page to explore a run's latent space (reconstruction with per-dimension sliders, "
                    "interpolation, prior samples, completion, a 2-D map of the training sentences, latent "
                    "arithmetic, diagnostics) and the JSON API under /api/ that it uses. Requests beyond the "
                    "limits below are refused with a 4xx JSON error.")
    p.add_argument("run", metavar="RUN", help="run directory of a trained text model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--map-data", metavar="FILE",
                   help="sentences for the map (a file, one a line, or a data folder); default: the training "
                        "split of the run's data.path")
    p.add_argument("--map-size", type=int, default=2000, help="training sentences drawn (seeded) for the map")
    p.add_argument("--map-seconds", type=float, default=60.0,
                   help="time allowed for encoding the map's sentences; the map keeps what was done by then")
    p.add_argument("--projection", choices=("pca", "umap"), default="pca",
                   help="2-D projection of the posterior means (umap needs umap-learn)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the map's sample")
    p.add_argument("--max-n", type=int, default=32, help="most sentences per sample or completion request")
    p.add_argument("--max-steps", type=int, default=20, help="most points on an interpolation path")
    p.add_argument("--max-chars", type=int, default=500, help="most characters per input sentence")
    p.add_argument("--max-sentences", type=int, default=64,
                   help="most sentences, latent rows or map points per request")
    p.add_argument("--access-log", action="store_true", help="log every request on stderr")
    p.set_defaults(handler=serve)


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise TextVAEError(f"--port must be between 0 and 65535, got {args.port}")
    for flag in ("map_size", "max_n", "max_steps", "max_chars", "max_sentences"):
        if getattr(args, flag) < 1:
            raise TextVAEError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.max_steps < 2:
        raise TextVAEError("--max-steps must be >= 2 (an interpolation has two ends)")
    if not (math.isfinite(args.map_seconds) and args.map_seconds > 0):
        raise TextVAEError("--map-seconds must be a positive number")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a TextVAEError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise TextVAEError(f"cannot listen on {host}:{port}: unknown host ({error})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        reason = "the port is in use" if error.errno == errno.EADDRINUSE else error.strerror or str(error)
        raise TextVAEError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def _resolve_device(name: str):
    from ..runtime import resolve_device

    return resolve_device(name)


def serve(args: argparse.Namespace) -> int:
    _check(args)
    sock = bind(args.host, args.port)
    try:
        import uvicorn

        from ..model import TextVAE
        from ..serve import Explorer, Limits, MapSettings
        from ..serve.app import create_app

        model = TextVAE.from_pretrained(args.run, device=_resolve_device(args.device))
        limits = Limits(args.max_n, args.max_steps, args.max_chars, args.max_sentences)
        settings = MapSettings(args.map_data, args.map_size, args.map_seconds, args.projection, args.seed)
        from ..builtin import resolve_run

        app = create_app(Explorer(model, str(resolve_run(args.run)), limits, settings))  # a built-in name's folder
        config = uvicorn.Config(app, log_config=None, access_log=args.access_log, lifespan="off",
                                log_level="info" if args.access_log else "warning")
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"textvae: serving {args.run} at http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down, then passes the Ctrl-C on
            pass
        print("textvae: stopped", file=sys.stderr)
        return 0
    finally:
        sock.close()
