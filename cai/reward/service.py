"""`cai serve-reward`: the constitutional reward model over HTTP, for RL engines past one machine.

    python -m cai serve-reward runs/demo/reward_model --port 5000            # 127.0.0.1 only
    python -m cai serve-reward runs/demo/reward_model --host 0.0.0.0 --port 5000 --batch_size 32
    # OpenRLHF:  --remote_rm_url http://HOST:5000/get_reward

Protocol (OpenRLHF's remote reward model, `openrlhf.utils.remote_rm_utils`):
`POST /get_reward` with JSON `{"query": [...], "prompts": [...], "labels": [...]}` answers
`{"rewards": [...], "scores": [...]}`: one float per query, in order (`rewards` is the key
OpenRLHF's client reads; `scores` repeats it for clients set to that key). A query is the full rendered text,
chat template + response, as OpenRLHF decodes a rollout (pad and EOS strings included; they are
stripped). `prompts`, when sent, are the rendered heads; a query that starts with its prompt
is tokenized in two parts as a rollout is built (cai/chat_format.py), otherwise as one text.
`labels` and any other key are ignored.

For clients that hold raw text (verl's custom reward function, scripts): the same endpoint
takes `{"prompts": [...], "responses": [...]}` with each prompt a user message (string) or a
message list; the server applies the chat template, exactly as cai's reward stage trained.

`GET /health` answers `{"status": "ok", ...}`. Mistakes are answered, never fatal: malformed
JSON, a wrong shape or a length mismatch 400, a body over `--max_body_mb` or a batch over
`--max_batch` 413, another path 404, another method 405; a failure while scoring 500.
The stdlib ThreadingHTTPServer serves connections in threads; the one model scores one request
at a time (each request is a batch, scored `--batch_size` sequences per forward pass).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cai.errors import CaiError

ENDPOINT = "/get_reward"


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def string_list(body: dict[str, Any], key: str, *, conversational: bool = False) -> list[Any]:
    value = body[key]
    if not isinstance(value, list):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key!r} must be a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        ok = isinstance(item, str) or (conversational and isinstance(item, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in item) and item)
        if not ok:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"{key}[{i}] must be a string{' or a list of role/content messages' if conversational else ''}, got {type(item).__name__}")
    return value


def parse_request(raw: bytes, *, max_batch: int) -> tuple[str, list[Any], list[Any] | None]:
    """The request as ("query", queries, prompts or None) or ("responses", prompts, responses); BadRequest otherwise."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"malformed JSON ({error})") from None
    if not isinstance(body, dict):
        raise BadRequest(HTTPStatus.BAD_REQUEST, f'expected a JSON object {{"query": [...], "prompts": [...]}}, got {type(body).__name__}')
    if "query" in body:
        queries = string_list(body, "query")
        prompts = string_list(body, "prompts") if body.get("prompts") is not None else None
        if prompts is not None and prompts and len(prompts) != len(queries):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"{len(queries)} queries but {len(prompts)} prompts; send one prompt per query, or none")
        batch = ("query", queries, prompts or None)
    elif "responses" in body and "prompts" in body:
        prompts, responses = string_list(body, "prompts", conversational=True), string_list(body, "responses")
        if len(prompts) != len(responses):
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"{len(prompts)} prompts but {len(responses)} responses; send one prompt per response")
        batch = ("responses", prompts, responses)
    else:
        raise BadRequest(HTTPStatus.BAD_REQUEST, 'expected {"query": [...], "prompts": [...]} (OpenRLHF) or {"prompts": [...], "responses": [...]}')
    if len(batch[1]) > max_batch:
        raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{len(batch[1])} sequences in one request, more than --max_batch={max_batch}; split the batch")
    return batch


class RewardServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the scorer; `max_requests` scoring requests (None: no limit), then it stops.

    Handler threads are joined on close (not daemons, the stdlib's default here): a daemon thread
    still inside torch when the interpreter exits can abort the process (seen as exit -6 under load).
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, scorer: Any, host: str = "127.0.0.1", port: int = 0, *, max_batch: int = 256, max_body_bytes: int = 16 << 20, max_requests: int | None = None, name: str = "", quiet: bool = True):
        super().__init__((host, port), RewardHandler)
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.max_requests = max_requests
        self.name = name
        self.quiet = quiet
        self.served = 0
        self.count_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{ENDPOINT}"

    def score(self, batch: tuple[str, list[Any], list[Any] | None]) -> list[float]:
        kind, first, second = batch
        if kind == "query":
            return self.scorer.score_texts(first, second)
        return self.scorer.score(first, second)

    def count_request(self) -> None:
        """After the last allowed request is answered, stop serving (from another thread: shutdown waits for the loop)."""
        with self.count_lock:
            self.served += 1
            done = self.max_requests is not None and self.served >= self.max_requests
        if done:
            threading.Thread(target=self.shutdown, daemon=True).start()


class RewardHandler(BaseHTTPRequestHandler):
    server: RewardServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this, so closing the server never waits forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's signature)
        if not self.server.quiet:
            super().log_message(format, *args)

    def reply(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/health", ""):
            self.reply(HTTPStatus.OK, {"status": "ok", "model": self.server.name, "endpoint": ENDPOINT, "max_batch": self.server.max_batch})
        elif self.path == ENDPOINT:
            self.reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"use POST {ENDPOINT} with a JSON body"})
        else:
            self.reply(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}; POST {ENDPOINT}"})

    def do_POST(self) -> None:
        if self.path != ENDPOINT:
            self.reply(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}; POST {ENDPOINT}"})
            return
        try:
            raw = self.read_body()
            batch = parse_request(raw, max_batch=self.server.max_batch)
        except BadRequest as error:
            self.reply(error.status, {"error": str(error)})
            return
        try:
            rewards = self.server.score(batch)
        except ValueError as error:  # e.g. a message list the template cannot render
            self.reply(HTTPStatus.BAD_REQUEST, {"error": str(error).splitlines()[0]})
            return
        except Exception as error:  # the server stays up; the client sees why
            self.reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"scoring failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})
            return
        self.reply(HTTPStatus.OK, {"rewards": rewards, "scores": rewards})
        self.server.count_request()

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header with the JSON body")
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"Content-Length {length!r} is not a number") from None
        if size < 0:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"Content-Length {size} is negative")
        if size > self.server.max_body_bytes:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {size} bytes, more than --max_body_mb allows ({self.server.max_body_bytes} bytes); split the batch")
        return self.rfile.read(size)


# ---------------------------------------------------------------- clients


def remote_rewards(url: str, queries: list[str], prompts: list[str] | None = None, *, timeout: float = 600) -> list[float]:
    """What OpenRLHF's `remote_rm_fn` does: POST the rendered texts, read `rewards`."""
    return _post(url, {"query": queries, "prompts": prompts}, timeout=timeout)


def _post(url: str, payload: dict[str, Any], *, timeout: float) -> list[float]:
    from urllib.request import Request, urlopen

    request = Request(url, data=json.dumps(payload).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST")
    with urlopen(request, timeout=timeout) as response:
        return [float(x) for x in json.loads(response.read())["rewards"]]


def verl_compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None, **_: Any) -> float:
    """verl's `custom_reward_function` (name: verl_compute_score): the response scored by the service at $CAI_REWARD_URL.

    verl passes the decoded response only; the user prompt must ride in the dataset's
    `extra_info` as `prompt` (a string or a message list).
    """
    import os

    url = os.environ.get("CAI_REWARD_URL", "http://127.0.0.1:5000/get_reward")
    prompt = (extra_info or {}).get("prompt")
    if prompt is None:
        raise ValueError("verl_compute_score: extra_info has no 'prompt'; add the user prompt to each row's extra_info")
    return _post(url, {"prompts": [prompt], "responses": [solution_str]}, timeout=600)[0]


# ---------------------------------------------------------------- the command


def serve_command(args: Any) -> int:
    """`python -m cai serve-reward PATH --port N`: load, serve until Ctrl-C / SIGTERM (or --max_requests), close cleanly."""
    from cai.launch import quiet_libraries
    from cai.reward.function import ConstitutionalReward

    for name in ("batch_size", "max_batch", "max_length"):
        if getattr(args, name) < 1:
            raise CaiError(f"--{name}: must be at least 1, got {getattr(args, name)}")
    if args.max_requests is not None and args.max_requests < 1:
        raise CaiError(f"--max_requests: must be at least 1, got {args.max_requests}")
    quiet_libraries()
    from cai import models

    models.use_precision(args.precision)
    scorer = ConstitutionalReward.from_pretrained(args.reward_model, device=args.device, max_length=args.max_length, batch_size=args.batch_size)
    try:
        server = RewardServer(scorer, args.host, args.port, max_batch=args.max_batch, max_body_bytes=int(args.max_body_mb * (1 << 20)), max_requests=args.max_requests, name=args.reward_model, quiet=not args.log_requests)
    except OSError as error:
        raise CaiError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({error.strerror or error}); choose another port or stop what holds it") from None

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    print(f"[serve-reward] {args.reward_model} on {scorer.model.device}: POST {server.url} (OpenRLHF --remote_rm_url); Ctrl-C stops", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        signal.signal(signal.SIGTERM, previous)
    print(f"[serve-reward] stopped after {server.served} scoring request(s)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Everything is closed and flushed. Leave without interpreter teardown: torch state created by
    # scoring in handler threads can abort the process while static objects are destroyed
    # ("terminate called without an active exception", exit -6, about 1 run in 5 here).
    os._exit(0)


def add_parser(commands: Any) -> None:
    from cai.config import PRECISIONS

    serve = commands.add_parser("serve-reward", help="serve a reward model over HTTP (OpenRLHF's remote reward protocol: POST /get_reward)")
    serve.add_argument("reward_model", help="the reward model: a run's reward_model/ folder (or any sequence-classification checkpoint)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; default loopback only)")
    serve.add_argument("--port", type=int, default=5000, help="port (0: any free port, printed at start)")
    serve.add_argument("--batch_size", type=int, default=16, help="sequences per forward pass")
    serve.add_argument("--max_batch", type=int, default=256, help="most sequences one request may carry (more: 413)")
    serve.add_argument("--max_body_mb", type=float, default=16.0, help="largest request body in MiB (more: 413)")
    serve.add_argument("--max_length", type=int, default=1024, help="longest scored sequence in tokens; longer prompts are cut from the left (as in training)")
    serve.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    serve.add_argument("--precision", default="auto", choices=PRECISIONS, help="scoring precision (auto: bf16 where the GPU or CPU has bf16 instructions, else fp32)")
    serve.add_argument("--max_requests", type=int, default=None, help="stop after this many scoring requests (default: serve until stopped)")
    serve.add_argument("--log_requests", action="store_true", help="print one line per HTTP request")
