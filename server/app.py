"""create_app(settings, engine): assembles the app; builds nothing but the wiring."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from engine import AsyncEngine, Embedder, EngineConfig
from server.admission import Admission, AdmissionMiddleware
from server.auth import APIKeyChecker, APIKeyMiddleware, resolve_route_name
from server.embeddings import EmbeddingServing
from server.embeddings import router as embeddings_router
from server.errors import install_error_handlers
from server.limits import BodySizeLimitMiddleware
from server.logfilter import install_log_sanitizer
from server.metrics import MetricsMiddleware, ServerMetrics
from server.paths import TrailingSlashMiddleware
from server.registry import CombinedStats, ModelRegistry
from server.response_store import ResponseStore
from server.request_limits import RequestLimits
from server.routes import router
from server.routes_anthropic import AnthropicMiddleware
from server.routes_anthropic import router as anthropic_router
from server.routes_responses import router as responses_router
from server.routes_tokens import router as tokens_router
from server.serving import OpenAIServing
from server.settings import ModelSpec, Settings

logger = logging.getLogger("gptserve.server")
STATIC_DIR = Path(__file__).parent / "static"


class PublicMetricsAPIKeyMiddleware(APIKeyMiddleware):
    """--metrics-public: /metrics without a key (scrapers often cannot send one); all else as before."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and resolve_route_name(self.router, scope) == "metrics":
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class ChatPage(StaticFiles):
    """The built-in chat page at "/"; only GET and HEAD, so a POST to an unknown path is a 404."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(404)
        await super().__call__(scope, receive, send)


class ChatPageMount(Mount):
    """Mounted at "/" but never claims the API's namespace, so there the router's own answers
    stand: 405 for a known path with the wrong method, 404 (after auth) for an unknown one."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if path == "/v1" or path.startswith("/v1/"):
            return Match.NONE, {}
        return super().matches(scope)


def build_engine(settings: Settings, spec: ModelSpec | None = None, is_default: bool = True) -> AsyncEngine:
    """Blocking: reads the weights and the tokenizer. Every model gets the same engine settings
    (its own KV cache of --kv-cache-memory-gb); --chat-template applies to the default model."""
    spec = spec or settings.model_specs[0]
    return AsyncEngine.from_config(EngineConfig(
        model=spec.path, device=settings.device, dtype=settings.dtype,
        max_model_len=settings.max_model_len, max_num_seqs=settings.max_num_seqs,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        max_decode_slowdown=settings.max_decode_slowdown,
        kv_cache_memory_gb=settings.kv_cache_memory_gb, kv_cache_dtype=settings.kv_cache_dtype,
        enable_prefix_caching=not settings.no_prefix_caching,
        quantization=None if settings.quantization == "none" else settings.quantization,
        chat_template=settings.read_chat_template() if is_default else None,
        fault_injection_step=settings.fault_injection_step))


def request_limits(settings: Settings) -> RequestLimits:
    """What one request may ask for: never more sequences than the scheduler runs at once."""
    max_sequences = min(settings.max_sequences_per_request or settings.max_num_seqs, settings.max_num_seqs)
    return RequestLimits(max_sequences=max_sequences, max_logprobs=settings.max_logprobs_per_request,
                         grammar_cache_bytes=int(settings.grammar_cache_mb * 2**20))


def build_embedder(settings: Settings) -> Embedder:
    """Blocking: reads the embedding model's weights and tokenizer."""
    return Embedder(settings.embedding_spec.path, device=settings.device, dtype=settings.dtype)


async def in_loader_thread(app: FastAPI, build: Callable, *args):
    """``build(*args)`` on a daemon thread of its own, awaited. Loading weights cannot be
    interrupted, and a thread of asyncio's executor would hold the process at exit until the load
    ended; a daemon thread does not, so SIGTERM during a load stops the server at once
    (``server.__main__`` then exits without waiting for it)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def run() -> None:
        if app.state.load_delay:  # tests only: a load that takes this long
            time.sleep(app.state.load_delay)
        try:
            result = build(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            # bound now: the name ``exc`` is gone once this block ends, before the loop runs the callback
            loop.call_soon_threadsafe(lambda error=exc: future.done() or future.set_exception(error))
        else:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(result))

    thread = threading.Thread(target=run, name="gptserve-loader", daemon=True)
    app.state.loader_thread = thread
    thread.start()
    return await future


def describe(engine, names: list[str], settings: Settings, checker: APIKeyChecker) -> str:
    inner = getattr(engine, "engine", engine)  # AsyncEngine wraps an LLMEngine that knows these
    kv_tokens = getattr(inner, "num_kv_tokens", None)
    capacity = f"{kv_tokens} tokens" if kv_tokens else f"{engine.stats().get('num_total_blocks')} blocks"
    dtype = str(getattr(inner, "dtype", settings.dtype)).removeprefix("torch.")
    return (f"gptserve ready at http://{settings.host}:{settings.port} — model {engine.model_config.name} "
            f"served as {', '.join(names)}; device {getattr(inner, 'device', settings.device)}, "
            f"dtype {dtype}, context {engine.max_model_len} tokens, "
            f"KV cache {capacity}; API keys {'on (' + str(len(settings.api_key)) + ')' if checker.is_enabled else 'off'}")


def create_app(settings: Settings, engine: AsyncEngine | None = None,
               on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """``engine``: the default model's engine already built (tests); else every model is built
    in the background at start-up, one after the other and the default first, so /health
    answers and /ready says 503 until all have loaded. ``on_fatal``: called when a model fails to
    load or an engine dies, to stop the process (non-zero) for a supervisor to restart."""
    checker = APIKeyChecker(settings.api_keys)
    install_log_sanitizer()  # request fields in log lines cannot forge lines
    on_fatal = on_fatal or (lambda: None)

    async def load_and_start(app: FastAPI) -> None:
        models: ModelRegistry = app.state.models
        try:
            for i, spec in enumerate(settings.model_specs):
                engine = (app.state.engine if i == 0 else None) or \
                    await in_loader_thread(app, build_engine, settings, spec, i == 0)
                app.state.engines.append(engine)
                await engine.start()
                serving = OpenAIServing(engine, spec.names, on_engine_dead=on_fatal, metrics=app.state.metrics,
                                        reasoning_parser=settings.reasoning_parser,
                                        limits=request_limits(settings),
                                        special_tokens_in_messages=settings.special_tokens_in_messages)
                if i == 0:
                    app.state.engine, app.state.serving = engine, serving
                else:
                    models.set_serving(i, serving)
                logger.info(describe(engine, spec.names, settings, checker))
            if settings.embedding_spec is not None:
                embedder = await in_loader_thread(app, build_embedder, settings)
                app.state.embedder = embedder
                await embedder.start()
                models.embeddings = EmbeddingServing(embedder, settings.embedding_spec.names)
                logger.info("embedding model %s served as %s at /v1/embeddings: %d dimensions, %d tokens at most",
                            embedder.name, ", ".join(settings.embedding_spec.names), embedder.dimensions,
                            embedder.max_model_len)
        except Exception:
            logger.exception("a model failed to load or start")
            app.state.load_failed = True
            on_fatal()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not checker.is_enabled:
            logger.warning("no API key configured: the API is open to anyone who can reach %s:%s",
                           settings.host, settings.port)
        if app.state.engine is not None:  # built already: be ready before the first request
            await load_and_start(app)
        is_pending = app.state.serving is None and not app.state.load_failed
        loading = asyncio.create_task(load_and_start(app)) if is_pending else None
        yield
        if loading is not None:
            loading.cancel()
        for engine in app.state.engines:
            await engine.shutdown()
        if app.state.embedder is not None:
            await app.state.embedder.shutdown()

    app = FastAPI(title="gptserve", version="0.1.0", lifespan=lifespan)
    app.state.engine = engine  # the default (first) model's engine
    app.state.serving = None  # the default model's OpenAIServing; app.state.models has them all
    app.state.engines = []  # every generation engine started, in --model order
    app.state.embedder = None
    app.state.models = ModelRegistry([spec.names for spec in settings.model_specs],
                                     settings.embedding_spec.names if settings.embedding_spec else None,
                                     get_default=lambda: app.state.serving)
    app.state.load_failed = False
    app.state.loader_thread = None  # the thread loading a model's weights, if any
    app.state.load_delay = settings.fault_injection_load_seconds
    # engine gauges and counters summed over the models
    app.state.metrics = ServerMetrics(lambda: CombinedStats(app.state.engines) if app.state.engines else None)
    app.state.admission = Admission(settings.max_num_seqs + settings.max_queued_requests,
                                    max_queued_tokens=settings.max_queued_tokens,
                                    request_timeout=settings.request_timeout)
    app.state.response_store = ResponseStore(settings.response_store_max_responses,
                                             settings.response_store_max_bytes, is_keyed=checker.is_enabled)
    install_error_handlers(app)
    # flat (not include_router, which nests them in one opaque route): auth resolves each
    # request to the very route object the app's router will dispatch it to
    app.router.routes.extend(router.routes + tokens_router.routes + embeddings_router.routes
                             + responses_router.routes + anthropic_router.routes)
    if STATIC_DIR.is_dir():  # after the API routes: they win over files of the same name
        app.router.routes.append(ChatPageMount("/", app=ChatPage(directory=STATIC_DIR, html=True), name="static"))
    # the last added runs first: error counting, CORS (answers preflights), auth, the body
    # (read in full under its size limit and timeout), then admission (429/503 before the body
    # is parsed; a client slow to send its body holds no slot)
    app.add_middleware(AdmissionMiddleware, admission=app.state.admission, router=app.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_body_bytes,
                       body_timeout=settings.body_timeout)
    auth = PublicMetricsAPIKeyMiddleware if settings.metrics_public else APIKeyMiddleware
    app.add_middleware(auth, checker=checker, router=app.router, share_prefix_cache=settings.share_prefix_cache)
    if settings.cors_allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_allowed_origins,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"])
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(AnthropicMiddleware, router=app.router)  # Anthropic's key header and error shape
    app.add_middleware(TrailingSlashMiddleware)  # outermost: every layer sees /v1/x/ as /v1/x
    return app
