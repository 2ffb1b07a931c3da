"""`lmforge serve`: a run behind an OpenAI-compatible HTTP API (FastAPI + uvicorn, the `[serve]`
extra).

Endpoints: GET / (a chat page: assets/chat.html), GET /health, GET /v1/models,
POST /v1/completions, POST /v1/chat/completions (server-sent events with `stream`),
GET /tokenizer_info, POST /tokenize and /detokenize (what lm-eval's `local-completions` model
asks for).
Errors are OpenAI's JSON, {"error": {"message", "type",
"param", "code"}}, with 400 (bad values, too long), 401 (API key), 422 (wrong types, malformed
JSON) and 429 (queue full); the server keeps serving. Fields the API defines that lmforge does
not use are accepted and ignored.

Concurrent requests are decoded together: they join the running batch between tokens
(jobs/batching.py, up to `max_batch` rows); up to `queue_size` may wait.
"""

import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.config import SamplingConfig
from lmforge.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from lmforge.errors import ConfigError, LMForgeError
from lmforge.generation.sampling import require_causal_lm
from lmforge.jobs.batching import Batcher
from lmforge.jobs.generate import load_for_generation
from lmforge.rundir.load import read_chat_template
from lmforge.tokenizer import Tokenizer


def require_serve_extra() -> None:
    """FastAPI and uvicorn, or the error that says how to get them."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LMForgeError(
            "lmforge serve needs FastAPI and uvicorn: pip install 'lmforge[serve]'"
        ) from None


class APIError(Exception):
    """A request the API refuses: HTTP status, OpenAI error type, message, offending field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error"
        )
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


@dataclass
class Model:
    """The served run: model, tokenizer, chat template, name, and the lock that serialises it."""

    name: str
    model: torch.nn.Module
    tokenizer: Tokenizer
    template: ChatTemplate
    lock: threading.Lock
    batcher: Batcher

    @property
    def context(self) -> int:
        return self.model.cfg.block_size


def load_model(run_dir: Path, dtype: str = "float32", max_batch: int = 8) -> Model:
    model, tokenizer = load_for_generation(run_dir, "latest", dtype)
    require_causal_lm(model)
    template = read_chat_template(run_dir, tokenizer) or ChatTemplate(
        DEFAULT_TEMPLATE, eos_token=tokenizer.end_token or ""
    )
    lock = threading.Lock()
    batcher = Batcher(model, tokenizer, lock, max_batch)
    return Model(Path(run_dir).resolve().name, model, tokenizer, template, lock, batcher)


# ---------------------------------------------------------------- request values


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise APIError(422, f"{name} must be a number, got {value!r}", name)
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(422, f"{name} must be an integer, got {value!r}", name)
    if value < low:
        raise APIError(400, f"{name} must be >= {low}, got {value}", name)
    return value


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return [s for s in stop if s]
    raise APIError(422, "stop must be a string or a list of up to 4 strings", "stop")


def sampling_of(body: dict, default_max: int) -> tuple[SamplingConfig, int]:
    """The sampling settings of a request (OpenAI defaults: temperature 1, top_p 1) and its
    max_tokens."""
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise APIError(400, "top_p must be > 0", "top_p")
    max_tokens = _integer(body, "max_tokens", default_max, 0)
    if "max_completion_tokens" in body:
        max_tokens = _integer(body, "max_completion_tokens", default_max, 0)
    seed = _integer(body, "seed", None, 0)
    if _integer(body, "n", 1, 1) != 1:
        raise APIError(400, "n must be 1: lmforge returns one choice", "n")
    return SamplingConfig(
        max_new_tokens=max(max_tokens or 0, 1),
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        seed=seed,
    ), max_tokens or 0


def prompts_of(body: dict, tokenizer: Tokenizer) -> list[list[int]]:
    """A completions prompt as token ids: a string, strings, token ids, or lists of them."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [tokenizer.encode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [tokenizer.encode(p) for p in prompt]
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [_checked_ids(prompt, tokenizer)]
        if all(isinstance(p, list) and p for p in prompt):
            return [_checked_ids(p, tokenizer) for p in prompt]
    raise APIError(422, "prompt must be a string, a list of strings or of token ids", "prompt")


def _checked_ids(ids: list, tokenizer: Tokenizer) -> list[int]:
    if not all(isinstance(t, int) and 0 <= t < tokenizer.vocab_size for t in ids):
        raise APIError(400, f"token ids must be integers in [0, {tokenizer.vocab_size})", "prompt")
    return list(ids)


# ---------------------------------------------------------------- the work


@torch.inference_mode()
def token_logprobs(model: torch.nn.Module, ids: list[int]) -> list[float | None]:
    """log P(token_i | tokens before it) for every token (None for the first), in fp32."""
    if len(ids) < 2:
        return [None] * len(ids)
    logits = model(torch.tensor([ids]))[0].float()  # (T, V)
    logp = F.log_softmax(logits[:-1], dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [None, *logp.tolist()]


def check_length(served: Model, ids: list[int], max_tokens: int) -> None:
    if len(ids) + max_tokens > served.context:
        raise APIError(
            400,
            f"this model's context is {served.context} tokens; the prompt has {len(ids)} and "
            f"max_tokens is {max_tokens}: shorten the prompt or lower max_tokens",
            "prompt",
            "context_length_exceeded",
        )


def completion(served: Model, body: dict) -> dict[str, Any]:
    """A non-streamed /v1/completions answer (one choice per prompt)."""
    sampling, max_tokens = sampling_of(body, 16)
    stops, echo = _stops(body), bool(body.get("echo", False))
    logprobs = _integer(body, "logprobs", None, 0)
    choices, used = [], {"prompt_tokens": 0, "completion_tokens": 0}
    for index, ids in enumerate(prompts_of(body, served.tokenizer)):
        check_length(served, ids, max_tokens)
        text, new, finish = "", [], "length"
        if max_tokens > 0:
            for piece, so_far, reason in served.batcher.stream(ids, sampling, stops):
                text, new, finish = text + piece, so_far, reason or finish
        choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        if echo:
            choice["text"] = served.tokenizer.decode(ids) + text
        if logprobs is not None:
            with served.lock:
                choice["logprobs"] = _logprobs(served, ids, new, echo, logprobs)
        choices.append(choice)
        used["prompt_tokens"] += len(ids)
        used["completion_tokens"] += len(new)
    used["total_tokens"] = used["prompt_tokens"] + used["completion_tokens"]
    return _envelope("text_completion", served.name, choices) | {"usage": used}


def _logprobs(served: Model, ids: list[int], new: list[int], echo: bool, top: int) -> dict:
    """OpenAI's legacy logprobs object for the echoed prompt and/or the completion."""
    tokenizer = served.tokenizer
    all_ids = [*ids, *new]
    values = token_logprobs(served.model, all_ids)
    logits = None
    if top:
        with torch.inference_mode():
            logits = F.log_softmax(served.model(torch.tensor([all_ids]))[0].float(), dim=-1)
    start = 0 if echo else len(ids)
    tokens, offsets, tops, offset = [], [], [], 0
    for position in range(len(all_ids)):
        piece = tokenizer.decode([all_ids[position]])
        if position >= start:
            tokens.append(piece)
            offsets.append(offset)
            if logits is not None:
                tops.append(_top(tokenizer, logits, position, top))
        offset += len(piece)
    return {
        "tokens": tokens,
        "token_logprobs": values[start:],
        "top_logprobs": tops or None,
        "text_offset": offsets,
    }


def _top(tokenizer: Tokenizer, logprobs: torch.Tensor, position: int, k: int) -> dict | None:
    if position == 0:
        return None
    values, indices = logprobs[position - 1].topk(k)
    return {
        tokenizer.decode([i]): v for i, v in zip(indices.tolist(), values.tolist(), strict=True)
    }


def chat_prompt_ids(served: Model, body: dict) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", "messages")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in (
            "system",
            "user",
            "assistant",
            "developer",
        ):
            raise APIError(400, "every message needs a role: system, user or assistant", "messages")
        if not isinstance(message.get("content"), str):
            raise APIError(400, "message content must be a string", "messages")
    turns = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in messages]
    try:
        prompt = served.template.render(turns, add_generation_prompt=True)
    except LMForgeError as exc:
        raise APIError(400, str(exc), "messages") from None
    return served.tokenizer.encode(prompt)


def chat_completion(served: Model, body: dict) -> dict[str, Any]:
    sampling, max_tokens = sampling_of(body, served.context)
    ids = chat_prompt_ids(served, body)
    max_tokens = min(max_tokens or served.context - len(ids), served.context - len(ids))
    if max_tokens <= 0:
        check_length(served, ids, 1)
    sampling = SamplingConfig(**{**_fields(sampling), "max_new_tokens": max(max_tokens, 1)})
    stops = [*_stops(body), served.template.end_of_turn()]
    text, new, finish = "", [], "length"
    for piece, so_far, reason in served.batcher.stream(ids, sampling, stops):
        text, new, finish = text + piece, so_far, reason or finish
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    used = {"prompt_tokens": len(ids), "completion_tokens": len(new)}
    used["total_tokens"] = len(ids) + len(new)
    return _envelope("chat.completion", served.name, [choice]) | {"usage": used}


def _fields(sampling: SamplingConfig) -> dict[str, Any]:
    return {f: getattr(sampling, f) for f in sampling.__dataclass_fields__}


@dataclass(frozen=True)
class StreamPlan:
    """A checked streaming request: what to decode, and how to frame each event."""

    ids: list[int]
    sampling: SamplingConfig
    stops: list[str]
    chat: bool


def plan_stream(served: Model, body: dict, chat: bool) -> StreamPlan:
    """Check a streaming request before its stream starts (errors are then plain 4xx)."""
    if chat:
        sampling, max_tokens = sampling_of(body, served.context)
        ids = chat_prompt_ids(served, body)
        budget = min(max_tokens or served.context - len(ids), served.context - len(ids))
        if budget <= 0:
            check_length(served, ids, 1)
        sampling = SamplingConfig(**{**_fields(sampling), "max_new_tokens": max(budget, 1)})
        return StreamPlan(ids, sampling, [*_stops(body), served.template.end_of_turn()], True)
    sampling, max_tokens = sampling_of(body, 16)
    prompts = prompts_of(body, served.tokenizer)
    if len(prompts) != 1:
        raise APIError(400, "stream takes one prompt", "prompt")
    check_length(served, prompts[0], max_tokens)
    return StreamPlan(prompts[0], sampling, _stops(body), False)


def stream_events(
    served: Model, plan: StreamPlan, cancelled: threading.Event | None = None
) -> Iterator[str]:
    """Server-sent events of a streamed completion or chat answer, then `data: [DONE]`; stops
    early (freeing the model) once `cancelled` is set, e.g. when the client has gone."""
    kind = "chat.completion.chunk" if plan.chat else "text_completion"
    base = _envelope(kind, served.name, [])
    if plan.chat:
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield _event(base | {"choices": [first]})
    for piece, _, finish in served.batcher.stream(plan.ids, plan.sampling, plan.stops, cancelled):
        if cancelled is not None and cancelled.is_set():
            return
        if plan.chat:
            delta = {"content": piece} if piece else {}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece, "finish_reason": finish, "logprobs": None}
        yield _event(base | {"choices": [choice]})
    yield "data: [DONE]\n\n"


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _envelope(kind: str, model: str, choices: list) -> dict[str, Any]:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }


def check_options(host: str, port: int, queue_size: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    if queue_size < 1:
        raise ConfigError("--queue-size must be >= 1")
    if not host:
        raise ConfigError("--host must not be empty")


# ---------------------------------------------------------------- the HTTP app


def build_app(served: Model, api_key: str | None = None, queue_size: int = 64) -> Any:
    """The FastAPI application serving `served`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title=f"lmforge: {served.name}", docs_url=None, redoc_url=None)
    waiting = threading.BoundedSemaphore(queue_size)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(422, f"invalid request: {exc.errors()[:1]}").body(), 422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @app.middleware("http")
    async def authorise(request: Request, call_next: Any) -> Any:
        wanted = f"Bearer {api_key}"
        if (
            api_key
            and request.url.path.startswith("/v1")
            and request.headers.get("authorization", "") != wanted
        ):
            error = APIError(401, "missing or wrong API key: send Authorization: Bearer KEY")
            return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def queued(work: Any, *args: Any) -> Any:
        if not waiting.acquire(blocking=False):
            raise APIError(429, f"the queue of {queue_size} requests is full; retry later")
        try:
            return work(*args)
        finally:
            waiting.release()

    def streamed(body: dict, chat: bool) -> StreamingResponse:
        """Decoding runs in its own thread and hands events over a queue; when the client goes,
        the response's generator is closed, which tells the thread to stop."""
        plan = plan_stream(served, body, chat)  # a bad request is refused before streaming
        events: queue.Queue[str | None] = queue.Queue()
        cancelled = threading.Event()

        def work() -> None:
            try:
                for event in stream_events(served, plan, cancelled):
                    events.put(event)
            finally:
                events.put(None)

        async def relay() -> AsyncIterator[str]:
            threading.Thread(target=work, daemon=True).start()
            try:
                while (event := await run_in_threadpool(events.get)) is not None:
                    yield event
            finally:
                cancelled.set()

        return StreamingResponse(relay(), media_type="text/event-stream")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return files("lmforge").joinpath("assets/chat.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        batches = served.batcher.batches
        return {"status": "ok", "model": served.name, "largest_batch": max(batches, default=0)}

    @app.get("/v1/models")
    def models() -> dict:
        card = {"id": served.name, "object": "model", "created": 0, "owned_by": "lmforge"}
        return {"object": "list", "data": [card | {"max_model_len": served.context}]}

    async def answer(request: Request, chat: bool) -> Any:
        """A completion or chat answer: streamed as events, or whole once decoded."""
        body = await body_of(request)
        if body.get("stream"):
            return streamed(body, chat)
        work = chat_completion if chat else completion
        return await run_in_threadpool(queued, work, served, body)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await answer(request, chat=True)

    @app.get("/tokenizer_info")
    def tokenizer_info() -> dict:
        tokenizer = served.tokenizer
        return {
            "eos_token": tokenizer.end_token,
            "eos_token_id": tokenizer.eot_id,
            "bos_token": served.template.bos_token or None,
            "pad_token": tokenizer.end_token,
            "chat_template": served.template.source,
            "vocab_size": tokenizer.vocab_size,
            "model_max_length": served.context,
        }

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await body_of(request)
        text = body.get("prompt", body.get("text"))
        if not isinstance(text, str):
            raise APIError(422, 'tokenize takes {"prompt": TEXT}', "prompt")
        ids = served.tokenizer.encode(text)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.context}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        body = await body_of(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            raise APIError(422, 'detokenize takes {"tokens": [ids]}', "tokens")
        return {"prompt": served.tokenizer.decode(_checked_ids(tokens, served.tokenizer))}

    return app


def serve(
    run_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    queue_size: int = 64,
    dtype: str = "float32",
    max_batch: int = 8,
) -> None:
    """Serve a run until interrupted."""
    require_serve_extra()
    check_options(host, port, queue_size)
    import uvicorn

    if max_batch < 1:
        raise ConfigError("--max-batch must be >= 1")
    served = load_model(run_dir, dtype, max_batch)
    app = build_app(served, api_key, queue_size)
    uvicorn.run(app, host=host, port=port, log_level="warning")
