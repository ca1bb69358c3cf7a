"""A scripted fake of the Anthropic Messages and OpenAI Chat Completions wire protocols.

No model API is reachable from the test machines, yet the providers must be tested with
the real SDK clients (their error classes, retry-after parsing and SSE decoding are what
production runs). This server speaks just enough of both wire formats for that:

    POST /v1/messages           Anthropic Messages (JSON, or SSE when "stream": true)
    POST /v1/chat/completions   OpenAI Chat Completions (JSON, or `data:` SSE + [DONE])
    GET  /v1/models             the models served (`served_models`), in Anthropic's format
                                when the request carries `anthropic-version`, else OpenAI's

Tests script it with a queue of behaviours, one per request received (`succeed`,
`stream`, `slow`, `rate_limited`, `overloaded`, `server_error`, `context_length`,
`midstream_error`, `truncated_stream`); when the queue is empty every request succeeds.
Every request is recorded (path, headers with credentials redacted, JSON body) so tests
can count exactly how many calls were made; the credentials presented are kept apart in
`keys_seen`. With `api_key` set, any other credential gets the API's 401.

    with ModelApiServer() as api:
        api.script(rate_limited(retry_after_s=2), succeed("Hello"))
        provider = AnthropicProvider(..., base_url=api.anthropic_url)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
REDACTED_HEADERS = frozenset({"x-api-key", "authorization", "api-key"})

Api = Literal["anthropic", "openai"]
Kind = Literal["succeed", "status", "context_length", "midstream_error", "truncated"]


@dataclass(frozen=True)
class Behaviour:
    """What the server does with one request. Build these with the functions below."""

    kind: Kind
    text: str = "Hello from the fake model."
    model: str | None = None  # reported model; None echoes the requested one
    tokens_in: int | None = None  # None: a crude count of the prompt's words
    tokens_out: int | None = None  # None: the answer's word count
    delay_s: float = 0.0
    status: int = 200
    retry_after_s: float | None = None
    require_stream: bool = False
    omit_usage: bool = False  # OpenAI-compatible servers that report no usage
    cite_first_source: bool = False  # answer citing the first [InternalDoc-N] in the prompt
    token_logprobs: tuple[float, ...] = ()  # OpenAI: sent as choices[0].logprobs when given


def succeed(
    text: str = "Hello from the fake model.",
    *,
    model: str | None = None,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
    omit_usage: bool = False,
) -> Behaviour:
    """Answer with `text`, as JSON or as an SSE stream, whichever the request asked for."""
    return Behaviour(
        "succeed",
        text=text,
        model=model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        omit_usage=omit_usage,
    )


def stream(
    text: str = "Hello from the fake model.",
    *,
    model: str | None = None,
    tokens_in: int | None = None,
    tokens_out: int | None = None,
) -> Behaviour:
    """Answer as an SSE stream; a request that did not ask to stream gets a 400."""
    return Behaviour(
        "succeed",
        text=text,
        model=model,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        require_stream=True,
    )


def grounded(delay_s: float = 0.0) -> Behaviour:
    """Answer citing the first source the prompt lists, like a model that follows it."""
    return Behaviour(
        "succeed", text="Here is what our guide says.", cite_first_source=True, delay_s=delay_s
    )


def slow(delay_s: float, then: Behaviour | None = None) -> Behaviour:
    """Wait `delay_s` before doing `then` (default: succeed); for client timeouts."""
    return replace(then or succeed(), delay_s=delay_s)


def rate_limited(retry_after_s: float | None = 1.0) -> Behaviour:
    """429 with a `retry-after` header (seconds), in the API's own error body."""
    return Behaviour("status", status=429, retry_after_s=retry_after_s)


def overloaded() -> Behaviour:
    """529 `overloaded_error`, Anthropic's "try again later" (OpenAI paths get a 529 too)."""
    return Behaviour("status", status=529)


def server_error(status: int = 500) -> Behaviour:
    """A 5xx with the API's error body (500 api_error, 503 unavailable, ...)."""
    return Behaviour("status", status=status)


def context_length() -> Behaviour:
    """The API's 400 for a prompt longer than the model's window."""
    return Behaviour("context_length", status=400)


def midstream_error() -> Behaviour:
    """A 200 stream that fails after message_start with an `overloaded_error` event."""
    return Behaviour("midstream_error")


def truncated_stream(text: str = "Your card is on") -> Behaviour:
    """A 200 stream that stops after a few tokens: the connection closes, no end event."""
    return Behaviour("truncated", text=text)


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: ModelApiServer


class ModelApiServer:
    """A context manager running the fake API on a free localhost port in a thread."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        api_key: str | None = None,
        served_models: tuple[str, ...] = (),
    ) -> None:
        self.api_key = api_key
        """When set, a request presenting any other credential gets a 401."""
        self.served_models = served_models
        """What GET /v1/models lists."""
        self.keys_seen: list[str | None] = []
        """The credential of every request, in arrival order (x-api-key or Bearer)."""
        self._lock = threading.Lock()
        self._queue: deque[Behaviour] = deque()
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self.held = 0
        self.most_held = 0
        """Requests being handled at once (now, and the most ever): concurrency seen."""
        self.default = succeed()
        self.stopping = threading.Event()
        self._httpd = _Server((host, 0), _Handler)
        self._httpd.owner = self
        # A short poll keeps shutdown (once per test) from costing serve_forever's 0.5 s.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="fake-model-api", daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()  # wakes handlers sleeping in `slow`
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    # -- addresses ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def anthropic_url(self) -> str:
        """Anthropic's SDK appends /v1/messages to the bare origin."""
        return self.url

    @property
    def openai_url(self) -> str:
        """OpenAI's SDK appends /chat/completions to a base URL ending in /v1."""
        return f"{self.url}/v1"

    # -- scripting ---------------------------------------------------------------------
    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each request takes the next one, then `default` applies."""
        with self._lock:
            self._queue.extend(behaviours)

    def rate_limit_storm(self, count: int, retry_after_s: float | None = 1.0) -> None:
        """The next `count` requests all get 429."""
        self.script(*(rate_limited(retry_after_s) for _ in range(count)))

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- inspection --------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.path == path)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._requests.clear()

    # -- used by the handler -----------------------------------------------------------
    def _hold(self, delta: int) -> None:
        with self._lock:
            self.held += delta
            self.most_held = max(self.most_held, self.held)

    def _take(self, recorded: RecordedRequest) -> tuple[Behaviour, int]:
        with self._lock:
            self._requests.append(recorded)
            behaviour = self._queue.popleft() if self._queue else self.default
            return behaviour, next(self._ids)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, the body ends when the socket closes (SSE).
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on recorded requests, not on stderr."""

    def _authorized(self, api: Api) -> bool:
        """Record the presented credential; answer the API's 401 when it is not the one."""
        owner = self.server.owner
        bearer = self.headers.get("authorization") or ""
        key = self.headers.get("x-api-key") or bearer.removeprefix("Bearer ") or None
        with owner._lock:
            owner.keys_seen.append(key)
        if owner.api_key is None or key == owner.api_key:
            return True
        self._error(api, 401)
        return False

    def do_GET(self) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        api: Api = "anthropic" if self.headers.get("anthropic-version") else "openai"
        if path != MODELS_PATH:
            self._json(404, {"error": {"type": "not_found_error", "message": self.path}})
            return
        if not self._authorized(api):
            return
        if api == "anthropic":
            data = [
                {
                    "type": "model",
                    "id": model,
                    "display_name": model,
                    "created_at": "2024-10-22T00:00:00Z",
                }
                for model in owner.served_models
            ]
            first = data[0]["id"] if data else None
            last = data[-1]["id"] if data else None
            page = {"data": data, "has_more": False, "first_id": first, "last_id": last}
            self._json(200, page)
        else:
            models = [
                {"id": model, "object": "model", "created": 0, "owned_by": "fake"}
                for model in owner.served_models
            ]
            self._json(200, {"object": "list", "data": models})

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode(errors="replace")}
        headers = {
            k.lower(): ("<redacted>" if k.lower() in REDACTED_HEADERS else v)
            for k, v in self.headers.items()
        }
        api: Api | None = {ANTHROPIC_PATH: "anthropic", OPENAI_PATH: "openai"}.get(self.path)  # type: ignore[assignment]
        if api is None:
            self._json(404, {"error": {"type": "not_found_error", "message": self.path}})
            return
        if not self._authorized(api):
            return
        behaviour, serial = owner._take(RecordedRequest(self.path, headers, body))
        if behaviour.cite_first_source:
            match = re.search(r"\[(InternalDoc-\d+)\]", json.dumps(body))
            cited = f"\nReferences: 1) {match.group(1)}" if match else ""
            behaviour = replace(behaviour, text=behaviour.text + cited)
        # Held from arrival until the answer starts: the client's call cannot end before
        # that, so `most_held` never over-counts what the client had in flight.
        owner._hold(+1)
        try:
            if behaviour.delay_s and owner.stopping.wait(behaviour.delay_s):
                return
        finally:
            owner._hold(-1)
        # A client that gave up (timeout) has closed the socket: nothing left to answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._respond(api, behaviour, body, serial)

    # -- responses ---------------------------------------------------------------------
    def _respond(self, api: Api, b: Behaviour, body: dict[str, Any], serial: int) -> None:
        wants_stream = bool(body.get("stream"))
        if b.kind == "status":
            self._error(api, b.status, retry_after_s=b.retry_after_s)
        elif b.kind == "context_length":
            self._context_length(api)
        elif b.kind == "midstream_error":
            self._anthropic_stream(b, body, serial, fail_midway=True)
        elif b.kind == "truncated" and api == "anthropic":
            self._anthropic_stream(b, body, serial, truncate=True)
        elif b.kind == "truncated":
            self._openai_stream(b, body, serial, truncate=True)
        elif b.require_stream and not wants_stream:
            self._error(api, 400, message="this behaviour expects a streaming request")
        elif api == "anthropic":
            if wants_stream:
                self._anthropic_stream(b, body, serial)
            else:
                self._json(200, _anthropic_message(b, body, serial))
        elif wants_stream:
            self._openai_stream(b, body, serial)
        else:
            self._json(200, _openai_completion(b, body, serial))

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, api: Api, status: int, *, retry_after_s: float | None = None, message: str = ""
    ) -> None:
        kind, default_message = _ERRORS.get(status, ("api_error", "Internal server error"))
        message = message or default_message
        headers = {"request-id": f"req_fake_{status}"}
        if retry_after_s is not None:
            headers["retry-after"] = f"{retry_after_s:g}"
        if api == "anthropic":
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": kind, "message": message},
            }
        else:
            code = "rate_limit_exceeded" if status == 429 else None
            openai_type = {429: "requests", 400: "invalid_request_error"}.get(
                status, "server_error"
            )
            payload = {
                "error": {"message": message, "type": openai_type, "param": None, "code": code}
            }
        self._json(status, payload, headers)

    def _context_length(self, api: Api) -> None:
        if api == "anthropic":
            payload: dict[str, Any] = {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "prompt is too long: 250000 tokens > 200000 maximum",
                },
            }
        else:
            payload = {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens. However, "
                    "your messages resulted in 250000 tokens. Please reduce the length of "
                    "the messages.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
        self._json(400, payload)

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()

    def _sse(self, event: str | None, data: object) -> None:
        head = f"event: {event}\n" if event else ""
        payload = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"{head}data: {payload}\n\n".encode())
        self.wfile.flush()

    def _anthropic_stream(
        self,
        b: Behaviour,
        body: dict[str, Any],
        serial: int,
        *,
        fail_midway: bool = False,
        truncate: bool = False,
    ) -> None:
        message = _anthropic_message(b, body, serial)
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
        self._start_sse()
        self._sse("message_start", {"type": "message_start", "message": start})
        if fail_midway:
            error = {"type": "overloaded_error", "message": "Overloaded"}
            self._sse("error", {"type": "error", "error": error})
            return
        block = {"type": "text", "text": ""}
        self._sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )
        self._sse("ping", {"type": "ping"})
        for piece in _pieces(b.text):
            delta = {"type": "text_delta", "text": piece}
            self._sse(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        if truncate:
            return  # HTTP/1.0: closing the socket ends the body, with no message_stop
        self._sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        self._sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        self._sse("message_stop", {"type": "message_stop"})

    def _openai_stream(
        self, b: Behaviour, body: dict[str, Any], serial: int, *, truncate: bool = False
    ) -> None:
        done = _openai_completion(b, body, serial)
        base = {k: done[k] for k in ("id", "created", "model")} | {
            "object": "chat.completion.chunk"
        }
        self._start_sse()
        first = {"role": "assistant", "content": ""}
        self._sse(None, {**base, "choices": [{"index": 0, "delta": first, "finish_reason": None}]})
        for piece in _pieces(b.text):
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            self._sse(None, {**base, "choices": [choice]})
        if truncate:
            return  # no finish_reason, no usage, no [DONE]
        self._sse(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage") and not b.omit_usage:
            self._sse(None, {**base, "choices": [], "usage": done["usage"]})
        self._sse(None, "[DONE]")


_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    404: ("not_found_error", "model not found"),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    502: ("api_error", "Bad gateway"),
    503: ("api_error", "Service unavailable"),
    504: ("api_error", "Gateway timeout"),
    529: ("overloaded_error", "Overloaded"),
}


def _pieces(text: str, size: int = 8) -> Iterator[str]:
    for i in range(0, len(text), size):
        yield text[i : i + size]


def _words(value: object) -> int:
    """A crude, deterministic token count of any JSON prompt fragment."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_words(v) for k, v in value.items() if k in {"content", "text"})
    return 0


def _usage(b: Behaviour, body: dict[str, Any]) -> tuple[int, int]:
    tokens_in = b.tokens_in
    if tokens_in is None:
        tokens_in = _words(body.get("system", "")) + _words(body.get("messages", []))
    tokens_out = b.tokens_out if b.tokens_out is not None else max(1, len(b.text.split()))
    # Like the real APIs, never more output than the request's max_tokens allows.
    limit = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(limit, int) and limit > 0:
        tokens_out = min(tokens_out, limit)
    return tokens_in, tokens_out


def _anthropic_message(b: Behaviour, body: dict[str, Any], serial: int) -> dict[str, Any]:
    tokens_in, tokens_out = _usage(b, body)
    return {
        "id": f"msg_fake_{serial:06d}",
        "type": "message",
        "role": "assistant",
        "model": b.model or body.get("model", "unknown"),
        "content": [{"type": "text", "text": b.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out},
    }


def _openai_completion(b: Behaviour, body: dict[str, Any], serial: int) -> dict[str, Any]:
    tokens_in, tokens_out = _usage(b, body)
    return {
        "id": f"chatcmpl-fake{serial:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": b.model or body.get("model", "unknown"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": b.text},
                "finish_reason": "stop",
                "logprobs": {
                    "content": [
                        {"token": f"t{i}", "logprob": lp, "bytes": None, "top_logprobs": []}
                        for i, lp in enumerate(b.token_logprobs)
                    ],
                    "refusal": None,
                }
                if b.token_logprobs
                else None,
            }
        ],
        "usage": None
        if b.omit_usage
        else {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }
