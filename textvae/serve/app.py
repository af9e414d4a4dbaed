"""The web application: one page and a JSON API over an ``Explorer``.

    GET  /                 the explorer page (static/index.html, no external files)
    GET  /api/info         config, tokenizer, parameter count, stored evaluation, latent statistics, curves
    POST /api/encode       {"sentences"} -> {"mean", "logvar"}
    POST /api/decode       {"z", "strategy"?} -> {"sentences"}
    POST /api/interpolate  {"a", "b", "steps"?, "method"?} -> {"sentences", "z"}
    POST /api/sample       {"n"?, "prior_temperature"?, "temperature"?, "top_p"?, "seed"?} -> {"sentences"}
    POST /api/complete     {"prefix", "n"?, "seed"?} -> {"sentences"}
    GET  /api/map          the training sentences' map: {"available", "points", "sentences", ...}
    POST /api/map          {"sentences"} or {"z"} -> {"points"} on the same map
    POST /api/map/decode   {"points"} -> {"sentences", "z"}: the latent codes of map points, decoded
    POST /api/neighbours   {"sentences"} or {"z"}, "k"? -> the nearest training sentences of the map sample
    POST /api/arithmetic   {"a", "b", "c"} -> decoding of z(a) - z(b) + z(c), or
                           {"sentence", "positive", "negative", "strength"?}: an attribute vector added

Decoding fields (``strategy``, ``temperature``, ``top_p``, ``seed``,
``known_words``) are accepted wherever sentences are decoded. Every refusal is a 4xx answer with
``{"error": "..."}``; an unexpected failure is a 500 with the same shape,
logged, and the server goes on.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from . import schemas
from .explorer import Explorer, RequestError

log = logging.getLogger("textvae")

MAX_BODY_BYTES = 1 << 20  # far above what the limits allow; refuses oversized bodies before they are parsed


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(error: RequestValidationError) -> tuple[int, str]:
    """(status, one line) for the first problem pydantic found in a body."""
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return 400, "the request body is not valid JSON"
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
    if where == "body" and first.get("type") == "missing":
        return 400, "the request needs a JSON object as its body"
    return 422, f"{where}: {first.get('msg', 'invalid value')}"


def _decoding(body: schemas.Decoding) -> dict[str, Any]:
    return {"strategy": body.strategy, "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
            "words": body.known_words}


def create_app(explorer: Explorer) -> FastAPI:
    """The FastAPI application for one explorer (no docs pages: they load scripts from the internet)."""
    app = FastAPI(title="textvae explorer", docs_url=None, redoc_url=None)
    page = resources.files("textvae.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return _error(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(*_validation_message(error))

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def failure(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return explorer.info()

    @app.post("/api/encode")
    def encode(body: schemas.Sentences) -> dict[str, Any]:
        return explorer.encode(body.sentences)

    @app.post("/api/decode")
    def decode(body: schemas.DecodeRequest) -> dict[str, Any]:
        return explorer.decode(body.z, _decoding(body))

    @app.post("/api/interpolate")
    def interpolate(body: schemas.InterpolateRequest) -> dict[str, Any]:
        return explorer.interpolate(body.a, body.b, body.steps, body.method, _decoding(body))

    @app.post("/api/sample")
    def sample(body: schemas.SampleRequest) -> dict[str, Any]:
        return explorer.sample(body.n, _decoding(body), body.prior_temperature)

    @app.post("/api/complete")
    def complete(body: schemas.CompleteRequest) -> dict[str, Any]:
        return explorer.complete(body.prefix, body.n, _decoding(body))

    @app.get("/api/map")
    def training_map() -> dict[str, Any]:
        return explorer.training_map()

    @app.post("/api/map")
    def project(body: schemas.LatentsOrSentences) -> dict[str, Any]:
        return explorer.project(body.sentences, body.z)

    @app.post("/api/map/decode")
    def unproject(body: schemas.MapDecodeRequest) -> dict[str, Any]:
        return explorer.unproject(body.points, _decoding(body))

    @app.post("/api/neighbours")
    def neighbours(body: schemas.NeighboursRequest) -> dict[str, Any]:
        return explorer.neighbours(body.sentences, body.z, body.k)

    @app.post("/api/arithmetic")
    def arithmetic(body: schemas.ArithmeticRequest) -> dict[str, Any]:
        fields = body.model_dump(include={"a", "b", "c", "sentence", "positive", "negative", "strength"})
        return explorer.arithmetic(fields, _decoding(body))

    return app
