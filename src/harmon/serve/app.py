"""The ASGI app of ``harmon serve``: the page, and the OpenAI-shaped API over one :class:`~harmon.serve.worker.Worker`.

Routes: ``GET /`` (the page) and ``/static/*``, ``GET /health``, ``GET /api/info`` (defaults and limits, for the
page), ``GET /v1/models``, ``POST /v1/images/generations`` and ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events). Errors are OpenAI's error JSON with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from harmon.sampling import PRESETS
from harmon.serve.limits import ServeLimits
from harmon.serve.requests import ApiError, ChatRequest, Served, parse_chat, parse_generation
from harmon.serve.worker import Job, QueueFull, Worker

STATIC = Path(__file__).parent / "static"


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


class EventStream(StreamingResponse):
    """Server-sent events (``data: <json>``) from an async iterator; a client that leaves stops the iterator."""

    def __init__(self, events: AsyncIterator[Any]) -> None:
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def __call__(self, scope, receive, send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for item in self.body_iterator:
                data = item if isinstance(item, str) else json.dumps(item)
                await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(watch())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # a send to a closed socket ends the stream too
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object: Content-Type application/json, at most ``limit`` bytes (counted as it arrives)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
    too_big = ApiError(413, f"request body is over the limit of {limit} bytes (--max-body-bytes)")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise ApiError(400, f"body is not valid JSON: {err}") from None
    except RecursionError:  # json's decoder recurses once per nesting level
        raise ApiError(400, "body nests its JSON too deeply to read") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(data).__name__}")
    return data


async def _disconnected(request: Request) -> None:
    """Returns when the client closes its connection (the body has been read, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Api:
    """The routes' state: what is served, the worker, and how long a request may take."""

    def __init__(self, pipe, served: Served, worker: Worker) -> None:
        self.pipe, self.served, self.worker = pipe, served, worker
        self.limits = served.limits

    def submit(self, request_obj: Any) -> tuple[Job, asyncio.Queue]:
        """Queue the work; 429 with Retry-After when the queue is full."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is shutting down
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(request_obj, emit, time.monotonic() + self.limits.timeout)
        try:
            self.worker.submit(job)
        except QueueFull as full:
            raise ApiError(429, str(full), headers={"Retry-After": str(full.retry_after)}) from None
        return job, events

    async def next_event(self, job: Job, queue: asyncio.Queue, request: Request | None = None) -> tuple:
        """The job's next event. Past its deadline: ApiError 504; when ``request``'s client leaves: ClientGone;
        either way the job is abandoned first, which stops its work."""
        get = asyncio.ensure_future(queue.get())
        gone = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        try:
            left = max(0.0, job.deadline - time.monotonic())
            waiting = {get} if gone is None else {get, gone}
            done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (get, gone):
                if task is not None and not task.done():
                    task.cancel()
        if get in done:
            return get.result()
        if gone is not None and gone in done:
            self.worker.cancel(job, "cancelled")
            raise ClientGone
        self.worker.cancel(job, "timed_out")
        raise ApiError(504, f"the request took longer than {self.limits.timeout:g} s (--timeout); its work was stopped")

    async def events(
        self, job: Job, queue: asyncio.Queue, first: tuple | None = None, request: Request | None = None
    ) -> AsyncIterator[tuple]:
        """``first`` (when given), then the job's events until "done" or "error", watching ``request``'s connection
        when given (see :meth:`next_event`); stopping early abandons the job."""
        try:
            event = first or await self.next_event(job, queue, request)
            while True:
                yield event
                if event[0] in ("done", "error"):
                    return
                event = await self.next_event(job, queue, request)
        finally:
            if not job.finished:
                self.worker.cancel(job, "cancelled")

    async def start(self, request: Request, work: Any) -> tuple[Job, asyncio.Queue, tuple]:
        """Queue ``work`` and wait for its first event, so that an error is still answered as a 4xx JSON."""
        job, queue = self.submit(work)
        first = await self.next_event(job, queue, request)
        if first[0] == "error":
            raise ApiError(first[1], first[2])
        return job, queue, first

    def check_settings(self, settings: dict[str, Any]) -> None:
        """The settings a generation runs with (the model's defaults, a preset applied) within the limits."""
        try:
            sampling, _ = self.pipe.generation_settings(**settings)
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        steps = sum(int(s) for s in str(sampling.num_sampling_steps).split(",") if s.strip().isdigit())
        if sampling.num_iter > self.limits.max_num_iter or steps > self.limits.max_sampling_steps:
            raise ApiError(
                400,
                f"{sampling.num_iter} steps of {steps} diffusion steps exceed --max-num-iter or --max-sampling-steps",
            )

    # ------------------------------------------------------------------ routes
    async def generate(self, request: Request) -> Response:
        body = await read_json(request, self.limits.max_body_bytes)
        work = parse_generation(body, self.served, tuple(PRESETS))
        self.check_settings(work.settings)
        try:
            job, queue, first = await self.start(request, work)
            if work.stream:
                return EventStream(self.image_stream(job, queue, first))
            data = []
            async for event in self.events(job, queue, first, request):
                if event[0] == "image":
                    data.append({"b64_json": base64.b64encode(event[1]).decode()})
                elif event[0] == "error":
                    raise ApiError(event[1], event[2])
        except ClientGone:
            return Response(status_code=499)
        return JSONResponse({"created": int(time.time()), "data": data})

    async def image_stream(self, job: Job, queue: asyncio.Queue, first: tuple) -> AsyncIterator[Any]:
        index = 0
        try:
            async for event in self.events(job, queue, first):
                if event[0] == "progress":
                    yield {"type": "image_generation.progress", "step": event[1], "total": event[2]}
                elif event[0] == "image":
                    b64 = base64.b64encode(event[1]).decode()
                    yield {
                        "type": "image_generation.completed",
                        "index": index,
                        "b64_json": b64,
                        "output_format": "png",
                    }
                    index += 1
                elif event[0] == "error":
                    yield {"type": "error", **ApiError(event[1], event[2]).body()}
        except ApiError as err:
            yield {"type": "error", **err.body()}
        yield "[DONE]"

    async def chat(self, request: Request) -> Response:
        body = await read_json(request, self.limits.max_body_bytes)
        work = parse_chat(body, self.served)
        reply_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        try:
            job, queue, first = await self.start(request, work)
            if work.stream:
                return EventStream(self.chat_stream(job, queue, first, work, reply_id, created))
            pieces, info = [], {}
            async for event in self.events(job, queue, first, request):
                if event[0] == "piece":
                    pieces.append(event[1])
                elif event[0] == "done":
                    info = event[1]
                elif event[0] == "error":
                    raise ApiError(event[1], event[2])
        except ClientGone:
            return Response(status_code=499)
        message = {"role": "assistant", "content": "".join(pieces)}
        reply = {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": self.served.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": info.get("finish_reason")}],
            "usage": usage(info),
        }
        return JSONResponse(reply)

    async def chat_stream(
        self, job: Job, queue: asyncio.Queue, first: tuple, work: ChatRequest, reply_id: str, created: int
    ) -> AsyncIterator[Any]:
        head = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": self.served.model_id}

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": ""})
        try:
            async for event in self.events(job, queue, first):
                if event[0] == "piece":
                    yield chunk({"content": event[1]})
                elif event[0] == "done":
                    yield chunk({}, event[1].get("finish_reason"))
                    if work.include_usage:
                        yield {**head, "choices": [], "usage": usage(event[1])}
                elif event[0] == "error":
                    yield ApiError(event[1], event[2]).body()
        except ApiError as err:
            yield err.body()
        yield "[DONE]"

    async def health(self, request: Request) -> Response:
        counts = dict(self.worker.stats)
        queue = {"pending": self.worker.pending, "limit": self.limits.max_queue}
        return JSONResponse({"status": "ok", "model": self.served.model_id, "queue": queue, "requests": counts})

    async def models(self, request: Request) -> Response:
        card = {"id": self.served.model_id, "object": "model", "created": 0, "owned_by": "harmon"}
        if "model" in request.path_params:
            if request.path_params["model"] != self.served.model_id:
                raise ApiError(404, f"model {request.path_params['model']!r} does not exist", "model")
            return JSONResponse(card)
        return JSONResponse({"object": "list", "data": [card]})

    async def info(self, request: Request) -> Response:
        """What the page needs: the model's defaults, the presets and the limits."""
        d = self.pipe.config.generation
        defaults = {
            "image_size": d.image_size,
            "num_iter": d.num_iter,
            "guidance_scale": d.guidance_scale,
            "num_sampling_steps": d.num_sampling_steps,
            "max_new_tokens": d.max_new_tokens,
        }
        return JSONResponse(
            {
                "model": self.served.model_id,
                "token_px": self.served.token_px,
                "defaults": defaults,
                "presets": list(PRESETS),
                "limits": asdict(self.limits),
            }
        )


def usage(info: dict) -> dict[str, int]:
    prompt, completion = info.get("prompt_tokens", 0), info.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def check_defaults(pipe, limits: ServeLimits) -> None:
    """The model's own generation defaults must be within the limits, or every plain request would be refused."""
    d = pipe.config.generation
    steps = sum(int(s) for s in str(d.num_sampling_steps).split(",") if s.strip().isdigit())
    for value, limit, flag in (
        (d.image_size, limits.max_image_size, "--max-image-size"),
        (d.num_iter, limits.max_num_iter, "--max-num-iter"),
        (steps, limits.max_sampling_steps, "--max-sampling-steps"),
    ):
        if value > limit:
            raise ValueError(f"the model's default {value} is over {flag} {limit}; raise {flag}")


def create_app(pipe, limits: ServeLimits | None = None, model_id: str = "harmon") -> Starlette:
    """The app serving ``pipe``; its worker thread starts with the app and stops with it."""
    limits = limits or ServeLimits()
    check_defaults(pipe, limits)
    d = pipe.config.generation
    served = Served(model_id, limits, pipe.config.token_px, d.image_size, d.max_new_tokens)
    worker = Worker(pipe, limits)
    api = Api(pipe, served, worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        worker.start()
        try:
            yield
        finally:
            worker.close()

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", page),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/health", api.health),
        Route("/api/info", api.info),
        Route("/v1/models", api.models),
        Route("/v1/models/{model:path}", api.models),
        Route("/v1/images/generations", api.generate, methods=["POST"]),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
    ]
    handlers = {
        ApiError: api_error,
        HTTPException: http_error,
        ClientDisconnect: client_left,
        Exception: internal_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.worker = worker
    return app


async def api_error(request: Request, err: Exception) -> Response:
    return error_response(err)  # type: ignore[arg-type]


async def http_error(request: Request, err: Exception) -> Response:
    status = getattr(err, "status_code", 500)
    detail = getattr(err, "detail", "")
    message = f"{request.method} {request.url.path}: {detail}"
    return error_response(ApiError(status, message))


async def client_left(request: Request, err: Exception) -> Response:
    return Response(status_code=499)


async def internal_error(request: Request, err: Exception) -> Response:
    return error_response(ApiError(500, f"internal error: {type(err).__name__}: {err}"))
