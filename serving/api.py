"""The HTTP API (FastAPI): ``/features``, ``/recommend``, ``/search``, ``/events``, ``/health``, ``/metrics``,
``/admin/reload``.

``recfeast serve`` runs :func:`create_app` under uvicorn. Every request passes :class:`Guard` first:
body size (413, before the body is read), API key and scope (401/403, :mod:`recfeast.serving.security`),
rate limit (429 with ``Retry-After``); and any unexpected exception becomes a 500 with the documented
body, counted in ``recfeast_internal_errors_total``, its traceback logged with secrets redacted.
Every input is validated: a malformed body is a 400, a well-formed one with bad values a 422, an
unknown user a 404, each with a message that names the field; a store or model problem is a 503.
Every error body is ``{"error": <message>, "detail": [...]}`` (:class:`ErrorBody`), every status code
is in the OpenAPI schema, and no body or log line holds a password (:func:`recfeast.redact.redact`).
"""


import functools
import logging
import threading
import time
import traceback
from typing import Any

import anyio
import anyio.to_thread
from recfeast.errors import ConfigError, DataError, FeatureLookupError, ModelError, RecfeastError, StoreError
from recfeast.redact import redact

log = logging.getLogger("recfeast.serving")

MAX_EVENTS = 10_000
#: ids over HTTP: JSON's exactly representable integers (RFC 7493, I-JSON). Past 2**53 JSON numbers
#: are rounded by many clients and schema validators (JavaScript, jsonschema-rs), so a bound there
#: would not mean the same on both sides; the Python SDK takes the full int64 range
ID_MIN, ID_MAX = -(2**53 - 1), 2**53 - 1
ROUTES = ("/features", "/recommend", "/search", "/events", "/health", "/metrics", "/admin/reload")


def _error_body(message: str, detail=None) -> dict:
    return {"error": redact(message), "detail": detail or []}


def _models(settings, key_types: dict | None = None):
    """Request bodies (pydantic), built on first use so importing this module stays cheap.

    ``key_types``: join key -> ``"int64"`` | ``"string"`` (the catalog spec's entity types; default
    both int64): ``user_id`` and ``item_ids`` are exact JSON integers or strict non-empty strings
    accordingly, so ``"7"`` for an int64 key or ``7`` for a string key is a 422 naming the field.
    """
    from typing import Annotated

    from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

    from recfeast.serving.sdk import MAX_KEY_CHARS
    from recfeast.serving.service import MAX_K

    def integral(v):   # JSON Schema's integer includes 12.0; 1.5, "12" and true stay refused
        return int(v) if type(v) is float and v.is_integer() and abs(v) < 2**63 else v

    def Int(**constraints):   # constraints first, so that the JSON schema says minimum/maximum
        return Annotated[StrictInt, Field(**constraints), BeforeValidator(integral)]

    key_types = key_types or {}
    Id = Int(ge=ID_MIN, le=ID_MAX)
    Str = Annotated[StrictStr, Field(min_length=1, max_length=MAX_KEY_CHARS)]
    User = Str if key_types.get("user_id") == "string" else Id
    Item = Str if key_types.get("item_id") == "string" else Id
    Ts = Int(ge=0, lt=2**33, description="unix seconds (default: the server's clock)")

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class FeaturesRequest(Strict):
        user_id: User
        item_ids: list[Item] = Field(min_length=1, max_length=settings.max_items,
                                   description=f"at most {settings.max_items} ids, {settings.max_items_vectors} "
                                               "with vectors")
        request_ts: Ts | None = None
        vectors: StrictBool = Field(default=False, description="include the embedding columns (large)")

    class RecommendRequest(Strict):
        user_id: User
        k: Int(ge=1, le=MAX_K) = 10
        request_ts: Ts | None = None

    class SearchRequest(Strict):
        query: str = Field(min_length=1, max_length=512, pattern=r"[^\s\x1c-\x1f]",
                           description="free text with at least one non-space character")
        user_id: User | None = None
        k: Int(ge=1, le=MAX_K) = 10
        request_ts: Ts | None = None

    class ErrorBody(BaseModel):
        """Every error answer: a message and, for 422, one entry per bad field."""
        model_config = ConfigDict(extra="allow")
        error: str
        detail: list = Field(default_factory=list)

    return FeaturesRequest, RecommendRequest, SearchRequest, ErrorBody


def _field(loc) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


class Guard:
    """ASGI middleware in front of every route: body size, API key and scope, rate limit, the
    catch-all for unexpected exceptions (see the module doc), and each request's latency and status
    in the metrics. Plain ASGI: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs each
    request through an extra task and memory stream, a fixed cost per request.

    Args:
        app: the wrapped ASGI app. settings: :class:`recfeast.serving.security.ApiSettings`.
        keys: :class:`recfeast.serving.security.KeyStore`. metrics: :class:`Metrics`.
    """

    def __init__(self, app, settings, keys, metrics):
        from recfeast.serving.security import RateLimiter

        self.app, self.settings, self.keys, self.metrics = app, settings, keys, metrics
        self.limiter = RateLimiter(settings.rate_per_s, settings.burst)

    async def _send(self, send, status: int, message: str, headers: dict | None = None) -> None:
        from recfeast.jsonsafe import dumps

        body = dumps(_error_body(message)).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status, t = False, 500, time.perf_counter()

        async def tracked(msg):
            nonlocal started, status
            if msg["type"] == "http.response.start":
                started, status = True, msg["status"]
            await send(msg)

        try:
            rejected = await self._check(scope, receive)
            if rejected is not None:
                code, message, headers, receive = rejected
                if code:
                    status = code
                    return await self._send(send, code, message, headers)
            await self.app(scope, receive, tracked)
        except Exception:  # a bug: answer the documented 500, count it, log it without secrets
            self.metrics.internal_errors.inc()
            log.error("unexpected error on %s %s: %s", scope.get("method"), redact(scope.get("path")),
                      redact(traceback.format_exc()))
            if not started:
                status = 500
                await self._send(send, 500, "internal error: the server failed on this request; it was logged")
        finally:
            self._observe(scope, status, time.perf_counter() - t)

    def _observe(self, scope, status: int, seconds: float) -> None:
        """Request latency and 4xx counts per endpoint (the matched route, else the path when it is
        one of :data:`ROUTES`, else ``unmatched``: no label per unknown URL)."""
        route, path = scope.get("route"), scope.get("path")
        endpoint = getattr(route, "path", None) or (path if path in ROUTES else "unmatched")
        self.metrics.request.labels(endpoint, str(status)).observe(seconds)
        if 400 <= status < 500:
            self.metrics.rejected.labels(endpoint, str(status)).inc()

    async def _check(self, scope, receive):
        """``(status, message, headers, receive)``; status 0 to go on (with a replayed body)."""
        from recfeast.serving.security import OPEN_PATHS, PATH_SCOPES, presented_key, retry_after

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        limit = self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, "invalid Content-Length header", None, receive
            if int(length) > limit:
                return 413, f"request body of {int(length)} bytes: at most {limit} bytes", None, receive
        path, method = scope.get("path", ""), scope.get("method", "GET")
        need = PATH_SCOPES.get(path)
        who = None
        if need is not None:
            try:
                key = presented_key(headers)
            except ValueError as exc:
                return 401, str(exc), {"WWW-Authenticate": "Bearer"}, receive
            if key is not None:
                who = self.keys.lookup(key)
                if who is None:
                    return 401, "unknown or revoked API key", {"WWW-Authenticate": "Bearer"}, receive
            elif self.settings.allow_anonymous:
                who = None
            else:
                return (401, "authentication required: send an API key as 'X-API-Key: <key>' or "
                        "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}, receive)
            scopes = who.scopes if who is not None else frozenset(self.settings.anonymous_scopes)
            if need not in scopes:
                name = f"API key {who.key_id}" if who is not None else "anonymous access"
                return 403, f"{name} lacks the {need!r} scope needed for {path}", None, receive
        if need is not None or path in OPEN_PATHS:
            client = scope.get("client") or ("unknown", 0)
            wait = self.limiter.take(who.key_id if who is not None else f"ip:{client[0]}")
            if wait > 0:
                return (429, f"rate limit of {self.settings.rate_per_s:g} requests/s (burst {self.settings.burst}) "
                        f"exceeded: retry in {wait:.1f} s", {"Retry-After": retry_after(wait)}, receive)
        if length is None and method in ("POST", "PUT", "PATCH"):   # chunked: read up to the limit, then replay
            chunks, size, more = [], 0, True
            while more:
                msg = await receive()
                if msg["type"] != "http.request":
                    break
                chunks.append(msg.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return 413, f"request body over {limit} bytes", None, receive
                more = msg.get("more_body", False)
            body, sent = b"".join(chunks), False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return 0, "", None, replay
        return None


def create_app(service, metrics=None, ingestor_factory=None, settings=None, keys=None, reloader=None):
    """The FastAPI app over a :class:`recfeast.serving.service.RecommendService`.

    Args:
        service: the service answering /features, /recommend, /search, /health.
        metrics: :class:`recfeast.serving.metrics.Metrics` (a new one by default).
        ingestor_factory: ``() -> ingestor`` for /events, an object with ``ingest(list[dict])``
            (``recfeast serve`` passes ``recfeast.materialize.ingest.Ingestor``; serving does not import
            the write path). None: /events answers 503.
        settings: :class:`recfeast.serving.security.ApiSettings` (default: from ``RECFEAST_API_*``).
        keys: :class:`recfeast.serving.security.KeyStore` (default: from ``settings``).
        reloader: ``() -> dict`` that reloads the online store from the tables, run in a background
            thread by ``POST /admin/reload`` (``recfeast serve`` passes the materialize package's
            online load). None: /admin/reload answers 503.

    Raises:
        ConfigError: no API key is configured and ``settings.allow_anonymous`` is off, or the keys
            file is unreadable.
    """
    from fastapi import Body, FastAPI, Query, Request, Security
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from recfeast.jsonsafe import dumps
    from recfeast.serving.metrics import Metrics
    from recfeast.serving.security import ApiSettings, KeyStore
    from recfeast.serving.service import MAX_K, UnknownUserError

    class SafeJSONResponse(JSONResponse):
        """Strict JSON that never fails: NaN, lone surrogates and deep nesting in echoed input are
        made printable (:func:`recfeast.jsonsafe.dumps`)."""

        def render(self, content) -> bytes:
            return dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    settings = settings or ApiSettings()
    keys = keys if keys is not None else KeyStore(settings.keys_file, settings.keys)
    if not len(keys) and not settings.allow_anonymous:
        raise ConfigError("no API keys: create one with `recfeast keys create --scopes read,write` (or set "
                          "RECFEAST_API_KEYS), or pass --allow-anonymous for local development")
    metrics = metrics or Metrics()
    if getattr(getattr(service, "client", None), "store", None) is not None:
        metrics.watch_freshness(lambda: _freshness_report(service))
        metrics.init_store(service.client.online_store)
        if getattr(service.client, "item_cache", None) is not None:
            metrics.watch_item_cache(service.client.item_cache)
    key_types = getattr(getattr(service, "client", None), "key_types", None)
    FeaturesRequest, RecommendRequest, SearchRequest, ErrorBody = _models(settings, key_types)
    app = FastAPI(
        title="recfeast serving", version="1", docs_url="/docs", redoc_url=None,
        default_response_class=SafeJSONResponse,
        description="Features, recommendations and search over a Feast online store. Authenticate with an API "
                    "key (`X-API-Key: <key>` or `Authorization: Bearer <key>`) that has the scope named by each "
                    "operation: `read` (/features, /recommend, /search), `write` (/events), `metrics` (/metrics), "
                    "`admin` (/admin/reload); /health is open. Every error is `{\"error\", \"detail\"}`.")
    app.state.service, app.state.metrics, app.state.settings = service, metrics, settings
    ingest_lock, ingestor = threading.Lock(), {}
    reload_state = {"running": False, "started_at": None, "finished_at": None, "error": None, "result": None}
    reload_lock = threading.Lock()
    app.state.reload = reload_state

    api_key = Security(APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key"))
    bearer = Security(HTTPBearer(auto_error=False, description="an API key as a bearer token"))
    auth = [api_key, bearer]

    def doc(*codes, extra=None):
        """OpenAPI ``responses`` for ``codes`` (all bodies :class:`ErrorBody`)."""
        text = {400: "malformed JSON body", 401: "no API key, or an unknown or revoked one",
                403: "the API key lacks the scope of this operation", 404: "unknown user",
                413: "request body too large", 422: "invalid request: the fields at fault in `detail`",
                429: "rate limit exceeded (see Retry-After)", 500: "internal error (counted in /metrics)",
                503: "online store, model or ingest path unavailable"}
        out = {c: {"model": ErrorBody, "description": text[c]} for c in codes}
        if 401 in out:
            out[401]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
        if 429 in out:
            out[429]["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": True,
                                                   "description": "seconds to wait"}}
        out.update(extra or {})
        return out

    GUARDED = (401, 403, 413, 429, 500)
    BODY = (400, 422)

    def error(code: int, message: str, detail=None) -> JSONResponse:
        return SafeJSONResponse(_error_body(message, detail), status_code=code)

    app.add_middleware(Guard, settings=settings, keys=keys, metrics=metrics)

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

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in message:   # FastAPI: undecodable or too deep
            message = "malformed JSON body: it could not be parsed (invalid UTF-8, or nested too deep)"
        elif exc.status_code == 404:
            message = f"no such endpoint: {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        resp = error(exc.status_code, message)
        for k, v in (exc.headers or {}).items():
            resp.headers[k] = v
        return resp

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

    compute = anyio.CapacityLimiter(settings.compute_threads)

    async def computed(fn, *args):
        """``fn(*args)`` in a worker thread, at most ``settings.compute_threads`` at once."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=compute)

    @app.post("/features", dependencies=auth, responses=doc(*BODY, *GUARDED, 503))
    async def features(req: FeaturesRequest):
        """Features of one user and up to 1000 items (100 with `vectors`), in the service's column order.
        Scope `read`."""
        if req.vectors and len(req.item_ids) > settings.max_items_vectors:
            return error(422, f"item_ids: {len(req.item_ids)} items with vectors: at most {settings.max_items_vectors} "
                              f"(or {settings.max_items} with \"vectors\": false)")
        # the service's clock (recfeast serve --as-of) when the request names no time, as /recommend
        def answer():
            feats = service.client.get_features(req.user_id, req.item_ids, service._now(req.request_ts))
            return SafeJSONResponse(feats.to_json(vectors=req.vectors))

        return await computed(answer)

    @app.post("/recommend", dependencies=auth, responses=doc(*BODY, 404, *GUARDED, 503))
    async def recommend(req: RecommendRequest):
        """Top k items for a user: retrieval -> features -> ranking model. Scope `read`."""
        return SafeJSONResponse(await computed(service.recommend, req.user_id, req.k, req.request_ts))

    if (key_types or {}).get("user_id") == "string":
        @app.get("/recommend", dependencies=auth, responses=doc(422, 404, *GUARDED, 503))
        async def recommend_get(user_id: str = Query(min_length=1, max_length=1024), k: int = Query(10, ge=1, le=MAX_K)):
            """``GET /recommend?user_id=<id>&k=10``: the same as the POST. Scope `read`."""
            return SafeJSONResponse(await computed(service.recommend, user_id, k))
    else:
        @app.get("/recommend", dependencies=auth, responses=doc(422, 404, *GUARDED, 503))
        async def recommend_get(user_id: int = Query(ge=ID_MIN, le=ID_MAX), k: int = Query(10, ge=1, le=MAX_K)):
            """``GET /recommend?user_id=196&k=10``: the same as the POST. Scope `read`."""
            return SafeJSONResponse(await computed(service.recommend, user_id, k))

    @app.post("/search", dependencies=auth, responses=doc(*BODY, 404, *GUARDED, 503))
    async def search(req: SearchRequest):
        """Top k items for a text query, personalised when user_id is given. Scope `read`."""
        return SafeJSONResponse(await computed(service.search, req.query, req.user_id, req.k, req.request_ts))

    event_list = {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS, "items": {
        "description": 'an event {"user_id": int, "item_id": int, "action": "click"|"rate"|..., "event_timestamp": '
                       'unix seconds or ISO-8601, "value"?: number (required for rate)}; anything else comes back '
                       "in `rejected` with the reason (and is set aside in rejected.jsonl)"}}
    events_body = {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        event_list, {"type": "object", "properties": {"events": event_list}, "required": ["events"],
                     "additionalProperties": False}]}}}}

    @app.post("/events", dependencies=auth, responses=doc(*BODY, *GUARDED, 503),
              openapi_extra={"requestBody": events_body})
    def events(body: Any = Body(...)):
        """Behaviour events through the ingest path: a list of events or `{"events": [...]}`. Scope
        `write`. 200 when any event was accepted or already logged, with the rejections; 422 when all
        were refused (each with its reason)."""
        if isinstance(body, dict) and set(body) - {"events"}:
            return error(422, f'unknown field(s) {sorted(set(body) - {"events"})}: expected {{"events": [...]}}')
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
            return SafeJSONResponse({**_error_body(f"all {len(batch)} events rejected"), **out}, status_code=422)
        return out

    @app.get("/health", responses=doc(429, 500, extra={503: {"description": "`degraded` or `unavailable`, "
                                                                            "the reason in `detail`"}}))
    def health():
        """Open (no key). 200 `ok`; 503 `degraded` when the online store is empty (flushed, restarted),
        misses loaded entities or is behind the tables, a view is past its freshness `max_lag`
        (`freshness`), or the model versions disagree, and 503 `unavailable` when the store does not
        answer; the reason is in `detail`. A reload in progress is under `reload`."""
        h = service.health()
        h["detail"] = None if h["detail"] is None else redact(h["detail"])
        h["freshness"] = freshness_health(service)
        if h["freshness"].get("stale") and h["status"] == "ok":
            h["status"] = "degraded"
            h["detail"] = f"views past their freshness max_lag: {', '.join(h['freshness']['stale'])}"
        h["reload"] = {k: reload_state[k] for k in ("running", "started_at", "finished_at", "error")}
        status = 200 if h["status"] == "ok" else 503
        return SafeJSONResponse(h, status_code=status)

    @app.get("/metrics", dependencies=auth, response_class=Response,
             responses=doc(*GUARDED, extra={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                                  "description": "Prometheus text exposition"}}))
    def prometheus():
        """Prometheus text exposition. Scope `metrics`."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    def _run_reload():
        try:
            result = reloader()
            reload_state.update(error=None, result=result)
        except Exception as exc:  # reported in /health
            reload_state.update(error=redact(f"{type(exc).__name__}: {exc}"), result=None)
        finally:
            reload_state.update(running=False, finished_at=time.time())

    @app.post("/admin/reload", dependencies=auth, status_code=202,
              responses=doc(*GUARDED, 503, extra={409: {"model": ErrorBody, "description": "a reload is running"}}))
    def reload():
        """Reload the online store from the feature tables in the background (after `/health` says
        `empty`, `incomplete` or `behind`); progress in `/health` under `reload`. Scope `admin`."""
        if reloader is None:
            return error(503, "this server has no reload path: start it with `recfeast serve`")
        with reload_lock:
            if reload_state["running"]:
                return error(409, f"a reload is running since {reload_state['started_at']:.0f}")
            reload_state.update(running=True, started_at=time.time(), finished_at=None, error=None)
        threading.Thread(target=_run_reload, name="online-reload", daemon=True).start()
        return {"status": "started", "started_at": reload_state["started_at"]}

    return app


def _freshness_report(service) -> list[dict]:
    """:func:`recfeast.freshness.report` with the events' clock at the service's ``as_of`` when it
    replays history (``recfeast serve --as-of``), else now; on Redis read with the online reader's
    client, which fails in about a second when Redis is down (Feast's retries for ~8 s: /health and
    /metrics would wait that long)."""
    from recfeast.freshness import report

    reader = service.client.reader
    return report(service.client.store, event_now_s=getattr(getattr(service, "cfg", None), "as_of", None),
                  client=reader.client if reader.kind == "redis" else None)


def freshness_health(service) -> dict:
    """The ``freshness`` field of /health: ``{"stale": [views past max_lag], "views": {view: {"lag_s",
    "state"}}}``, or ``{"error": message}`` when the record cannot be read."""
    from recfeast.redact import redact

    try:
        views = _freshness_report(service)
    except Exception as exc:
        return {"error": redact(f"freshness record: {exc}")}
    return {"stale": [v["view"] for v in views if v["state"] == "stale"],
            "views": {v["view"]: {"lag_s": v["lag_s"], "state": v["state"]} for v in views}}


def build_app(cfg, ingestor_factory=None, settings=None, reloader_factory=None) -> Any:
    """App for a :class:`recfeast.serving.service.ServiceConfig`, metrics wired into the service;
    ``ingestor_factory(service)`` builds the /events ingest path and ``reloader_factory(service)`` the
    /admin/reload callable (see :func:`create_app`). The keys are checked before the models load.

    Raises:
        ConfigError: no keys and no anonymous access (see :func:`create_app`); and the service's errors.
    """
    from recfeast.serving.metrics import Metrics
    from recfeast.serving.security import ApiSettings, KeyStore
    from recfeast.serving.service import RecommendService

    settings = settings or ApiSettings()
    keys = KeyStore(settings.keys_file, settings.keys)
    if not len(keys) and not settings.allow_anonymous:
        raise ConfigError("no API keys: create one with `recfeast keys create --scopes read,write` (or set "
                          "RECFEAST_API_KEYS), or pass --allow-anonymous for local development")
    metrics = Metrics()
    service = RecommendService.from_config(cfg, observe=metrics.observe_stage, on_cache=metrics.cache_lookup)
    factory = (lambda: ingestor_factory(service)) if ingestor_factory else None
    reloader = reloader_factory(service) if reloader_factory else None
    return create_app(service, metrics, factory, settings=settings, keys=keys, reloader=reloader)


def serve(cfg, host: str = "127.0.0.1", port: int = 8000, torch_threads: int = 1, log=print,
          ingestor_factory=None, settings=None, reloader_factory=None) -> None:
    """Build the app for ``cfg`` (and ``settings``, :class:`ApiSettings`) and run it under uvicorn
    until SIGINT/SIGTERM. Logs one line when ready (never a key or a password).

    Raises:
        ConfigError / StoreError / ModelError / DataError: the service cannot start.
    """
    import torch
    import uvicorn

    torch.set_num_threads(torch_threads)
    t = time.perf_counter()
    app = build_app(cfg, ingestor_factory, settings, reloader_factory)
    svc, st = app.state.service, app.state.settings
    access = "anonymous access ON (local development only)" if st.allow_anonymous else "API keys required"
    log(redact(f"recfeast serving {svc.client.service.name} from {svc.client.online_store}; index "
               f"{svc.index.info()['items']} items ({svc.index.model_id}); ranker {svc.ranker.version['sha256']}; "
               f"{access}; ready in {time.perf_counter() - t:.1f} s"))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
