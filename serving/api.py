"""The HTTP API (FastAPI): ``/features``, ``/recommend``, ``/search``, ``/events``, ``/health``, ``/metrics``.

``recfeast serve`` runs :func:`create_app` under uvicorn. Every input is validated: a malformed body
is a 400, a well-formed one with bad values a 422, an unknown user a 404, each with a message that
names the field; a store or model problem is a 503. Error bodies are ``{"error": <message>,
"detail": [...]}``.
"""


import logging
import threading
import time
from typing import Any

from recfeast.errors import DataError, FeatureLookupError, ModelError, RecfeastError, StoreError

log = logging.getLogger("recfeast.serving")

MAX_EVENTS = 10_000


def _models():
    """Request bodies (pydantic), built on first use so importing this module stays cheap."""
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

    from recfeast.serving.sdk import MAX_ITEMS
    from recfeast.serving.service import MAX_K

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class FeaturesRequest(Strict):
        user_id: StrictInt
        item_ids: list[StrictInt] = Field(min_length=1, max_length=MAX_ITEMS)
        request_ts: StrictInt | None = Field(default=None, ge=0, lt=2**33)
        vectors: StrictBool = True

    class RecommendRequest(Strict):
        user_id: StrictInt
        k: StrictInt = Field(default=10, ge=1, le=MAX_K)
        request_ts: StrictInt | None = Field(default=None, ge=0, lt=2**33)

    class SearchRequest(Strict):
        query: str = Field(min_length=1, max_length=512)
        user_id: StrictInt | None = None
        k: StrictInt = Field(default=10, ge=1, le=MAX_K)
        request_ts: StrictInt | None = Field(default=None, ge=0, lt=2**33)

    return FeaturesRequest, RecommendRequest, SearchRequest


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def create_app(service, metrics=None, ingestor_factory=None):
    """The FastAPI app over a :class:`recfeast.serving.service.RecommendService`.

    Args:
        service: the service answering /features, /recommend, /search, /health.
        metrics: :class:`recfeast.serving.metrics.Metrics` (a new one by default).
        ingestor_factory: ``() -> ingestor`` for /events, an object with ``ingest(list[dict])``
            (``recfeast serve`` passes ``recfeast.materialize.ingest.Ingestor``; serving does not import
            the write path). None: /events answers 503.
    """
    from fastapi import Body, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    from recfeast.serving.metrics import Metrics
    from recfeast.serving.service import UnknownUserError

    metrics = metrics or Metrics()
    metrics.init_store(service.client.online_store)
    FeaturesRequest, RecommendRequest, SearchRequest = _models()
    app = FastAPI(title="recfeast serving", version="1", docs_url="/docs", redoc_url=None)
    app.state.service, app.state.metrics = service, metrics
    ingest_lock, ingestor = threading.Lock(), {}

    def error(code: int, message: str, detail=None) -> JSONResponse:
        return JSONResponse({"error": message, "detail": detail or []}, status_code=code)

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t = time.perf_counter()
        response = await call_next(request)
        endpoint = request.scope.get("route").path if request.scope.get("route") else "unmatched"
        metrics.request.labels(endpoint, str(response.status_code)).observe(time.perf_counter() - t)
        if 400 <= response.status_code < 500:
            metrics.rejected.labels(endpoint, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            e = next(e for e in errs if e.get("type") == "json_invalid")
            return error(400, f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}")
        if any(e.get("type") == "missing" and tuple(e.get("loc", ())) == ("body",) for e in errs):
            return error(422, "no JSON body: send the request as JSON (content-type: application/json)")
        detail = [{"field": _field(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")} for e in errs]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in detail[:5])
        return error(422, f"invalid request: {summary}", detail)

    @app.exception_handler(RecfeastError)
    async def recfeast_error(request: Request, exc: RecfeastError):
        if isinstance(exc, UnknownUserError):
            return error(404, str(exc))
        if isinstance(exc, (FeatureLookupError, DataError)):
            return error(422, str(exc))
        if isinstance(exc, StoreError):
            metrics.store_errors.labels(service.client.online_store).inc()
            return error(503, f"online store unavailable: {exc}")
        if isinstance(exc, ModelError):
            return error(503, f"model versions: {exc}")
        return error(503, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: say so without a traceback
        log.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    @app.post("/features")
    def features(req: FeaturesRequest):
        """Features of one user and up to 1000 items (ranking_v1), in the service's column order."""
        # the service's clock (recfeast serve --as-of) when the request names no time, as /recommend
        feats = service.client.get_features(req.user_id, req.item_ids, service._now(req.request_ts))
        return feats.to_json(vectors=req.vectors)

    @app.post("/recommend")
    def recommend(req: RecommendRequest):
        """Top k items for a user: retrieval -> features -> ranking model."""
        return service.recommend(req.user_id, req.k, req.request_ts)

    @app.get("/recommend")
    def recommend_get(user_id: int, k: int = 10):
        """``GET /recommend?user_id=196&k=10``: the same as the POST."""
        return service.recommend(user_id, k)

    @app.post("/search")
    def search(req: SearchRequest):
        """Top k items for a text query, personalised when user_id is given."""
        return service.search(req.query, req.user_id, req.k, req.request_ts)

    @app.post("/events")
    def events(body: Any = Body(...)):
        """Behaviour events, a list or ``{"events": [...]}``, through the ingest path."""
        batch = body.get("events") if isinstance(body, dict) else body
        if not isinstance(batch, list):
            return error(422, 'expected a JSON list of events or {"events": [...]}')
        if not batch:
            return error(422, "no events: send at least one")
        if len(batch) > MAX_EVENTS:
            return error(422, f"{len(batch)} events: at most {MAX_EVENTS} per request")
        with ingest_lock:
            if "it" not in ingestor:
                if ingestor_factory is None:
                    return error(503, "this server has no ingest path: start it with `recfeast serve`")
                ingestor["it"] = ingestor_factory()
        result = ingestor["it"].ingest(batch)
        out = result.to_json()
        if result.accepted == 0 and result.duplicates == 0:
            return JSONResponse({"error": f"all {len(batch)} events rejected", **out}, status_code=422)
        return out

    @app.get("/health")
    def health():
        """Store reachability, index state, model versions, query cache."""
        h = service.health()
        return JSONResponse(h, status_code=200 if h["status"] != "unavailable" else 503)

    @app.get("/metrics")
    def prometheus():
        """Prometheus text exposition."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    return app


def build_app(cfg, ingestor_factory=None) -> Any:
    """App for a :class:`recfeast.serving.service.ServiceConfig`, metrics wired into the service;
    ``ingestor_factory(service)`` builds the /events ingest path (see :func:`create_app`)."""
    from recfeast.serving.metrics import Metrics
    from recfeast.serving.service import RecommendService

    metrics = Metrics()
    service = RecommendService.from_config(cfg, observe=metrics.observe_stage, on_cache=metrics.cache_lookup)
    factory = (lambda: ingestor_factory(service)) if ingestor_factory else None
    return create_app(service, metrics, factory)


def serve(cfg, host: str = "127.0.0.1", port: int = 8000, torch_threads: int = 1, log=print,
          ingestor_factory=None) -> None:
    """Build the app for ``cfg`` and run it under uvicorn until SIGINT/SIGTERM.

    Raises:
        ConfigError / StoreError / ModelError / DataError: the service cannot start.
    """
    import torch
    import uvicorn

    torch.set_num_threads(torch_threads)
    t = time.perf_counter()
    app = build_app(cfg, ingestor_factory)
    svc = app.state.service
    log(f"recfeast serving {svc.client.service.name} from {svc.client.online_store}; index {svc.index.info()['items']} "
        f"items ({svc.index.model_id}); ranker {svc.ranker.version['sha256']}; ready in {time.perf_counter() - t:.1f} s")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
