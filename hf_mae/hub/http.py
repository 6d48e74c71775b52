"""The Hub's HTTP policy: endpoint, timeouts, retries, token redaction."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time

from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import set_client_factory

TIMEOUT_ENV, ATTEMPTS_ENV = "HF_MAE_HUB_TIMEOUT", "HF_MAE_HUB_ATTEMPTS"

logger = logging.getLogger(__name__)


# Every Hub request gives up after TIMEOUT seconds without an answer (CONNECT_TIMEOUT to connect), and a push
# whose request fails with a timeout, a network error or an HTTP 408 / 429 / 5xx is tried ATTEMPTS times in all,
# RETRY_BACKOFF_S, 2x, 4x ... seconds apart. Override with push_to_hub(timeout=, attempts=), the CLI's --timeout
# / --attempts, or the environment variables below (for the training programs' --push_to_hub).
DEFAULT_TIMEOUT = 60.0


CONNECT_TIMEOUT = 10.0


DEFAULT_ATTEMPTS = 3


RETRY_BACKOFF_S = 2.0


# ----------------------------------------------------------------------------------------------------------
# settings read at call time
# ----------------------------------------------------------------------------------------------------------
def hub_endpoint() -> str:
    """The Hub address: `HF_ENDPOINT` as set now (huggingface_hub reads it at import only), else default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


# ----------------------------------------------------------------------------------------------------------
# talking to the Hub: timeouts, bounded retries, nothing of the token in what is shown
# ----------------------------------------------------------------------------------------------------------
def _setting(value, env: str, default, parse, what: str):
    """An explicit value, else the environment variable `env`, else the default; refused if not positive."""
    source = "argument"
    if value is None and os.environ.get(env):
        value, source = os.environ[env], f"environment variable {env}"
    if value is None:
        return default
    raw = value
    try:
        value = parse(value)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value < float("inf"):
        kind = "a positive integer" if parse is int else "a positive finite number"
        raise ValueError(f"{what} ({source}) must be {kind}, got {raw!r}")
    return value


def hub_timeout(timeout: float | None = None) -> float:
    """Seconds a Hub request may wait for an answer: `timeout`, else $HF_MAE_HUB_TIMEOUT, else 60."""
    return _setting(timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT, float, "the Hub timeout")


def hub_attempts(attempts: int | None = None) -> int:
    """Tries of one push in all: `attempts`, else $HF_MAE_HUB_ATTEMPTS, else 3."""
    return _setting(attempts, ATTEMPTS_ENV, DEFAULT_ATTEMPTS, int, "the number of Hub attempts")


class HubTransientFailure(RuntimeError):
    """A transient Hub failure (HTTP 408 / 429 / 5xx, no answer in time, a network error), already counted
    against the push's RetryBudget. Not an HTTP-client error, so huggingface_hub does not retry it inside a
    call: the push's own loop retries, and every failure is counted once."""

    def __init__(self, description: str, failures: int):
        super().__init__(description)
        self.description = description
        self.failures = failures


class HubBudgetSpent(HubTransientFailure):
    """The push's retry budget is spent: its `attempts`-th transient failure, or its deadline passed. No layer
    retries it."""


class RetryBudget:
    """One budget of transient failures for a push, whichever layer retries: every HTTP 408 / 429 / 5xx answer,
    timeout and network error counts, and the `attempts`-th raises `HubBudgetSpent`. A request may not start
    after the deadline, `attempts` x `timeout` + the backoffs between attempts after the last answer that was
    not a failure, and its timeouts are cut to the time left. `start()` opens a new budget (one per repo)."""

    def __init__(self, attempts: int, timeout: float):
        self.attempts, self.timeout = attempts, timeout
        backoffs = sum(min(60.0, RETRY_BACKOFF_S * 2 ** k) for k in range(attempts - 1))
        self.allowance = attempts * (timeout + min(timeout, CONNECT_TIMEOUT)) + backoffs
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        with self._lock:
            self.failures, self.last_failure = 0, None
            self._deadline = time.monotonic() + self.allowance

    @property
    def spent(self) -> bool:
        return self.failures >= self.attempts

    def seconds_left(self) -> float:
        return self._deadline - time.monotonic()

    def answered(self) -> None:
        """An answer that was not a transient failure: the deadline counts from here."""
        with self._lock:
            self._deadline = time.monotonic() + self.allowance

    def failed(self, description: str) -> None:
        """Count one transient failure; raises HubBudgetSpent on the last one allowed."""
        with self._lock:
            self.failures += 1
            self.last_failure = description
            if self.failures >= self.attempts:
                raise HubBudgetSpent(description, self.failures)

    def check_deadline(self) -> None:
        """Refuses to start a request once the budget is spent (a layer that swallowed the error goes on)."""
        if self.spent:
            raise HubBudgetSpent(self.last_failure or "the retry budget is spent", self.failures)
        if self.seconds_left() <= 0:
            with self._lock:
                self.failures = max(self.failures, self.attempts)
            raise HubBudgetSpent(f"network failure: no answer from the Hub in time (the push's "
                                 f"{self.allowance:g} s budget is spent; last: {self.last_failure or 'none'})",
                                 self.failures)


def _server_message(response) -> str:
    """What the server said about a failure, as huggingface_hub reads it (header, JSON `error`, else body)."""
    try:
        response.read()
        body = response.text
    except Exception:  # noqa: BLE001 - a body that cannot be read says nothing more
        body = ""
    message = response.headers.get("X-Error-Message")
    if not message:
        try:
            message = json.loads(body).get("error")
        except (ValueError, AttributeError):
            message = None
    return str(message or body[:300])


# huggingface_hub's look-up of known agent harnesses (for its user agent): optional, its failures are swallowed
OPTIONAL_LOOKUPS = ("/api/agent-harnesses",)


def _counts(request) -> bool:
    """Whether a request is part of the push: anything sent to the Hub endpoint but its optional look-ups, and
    every upload elsewhere (LFS and Xet storage)."""
    from urllib.parse import urlsplit

    if request.url.path in OPTIONAL_LOOKUPS:
        return False
    return request.method != "GET" or request.url.host == (urlsplit(hub_endpoint()).hostname or "")


class _BudgetedTransport:
    """The client's transport: each transient failure is counted against the push's RetryBudget and raised as
    HubTransientFailure (HubBudgetSpent for the last one allowed)."""

    def __init__(self, inner, budget: RetryBudget):
        self.inner, self.budget = inner, budget

    def handle_request(self, request):
        budget = self.budget
        if not _counts(request):
            return self.inner.handle_request(request)
        budget.check_deadline()
        left = max(0.01, budget.seconds_left())
        timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {key: left if value is None else min(value, left)
                                         for key, value in {"connect": None, "read": None, "write": None,
                                                            "pool": None, **timeouts}.items()}
        try:
            response = self.inner.handle_request(request)
        except Exception as err:  # noqa: BLE001 - only transient failures are counted; the rest passes through
            if not _transient(err):
                raise
            description = _describe_http_error(err, "")
            budget.failed(description)
            raise HubTransientFailure(description, budget.failures) from err
        status = response.status_code
        if status in (408, 429) or status >= 500:
            description = f"HTTP {status}: {_server_message(response)}"
            response.close()
            budget.failed(description)
            raise HubTransientFailure(description, budget.failures)
        budget.answered()
        return response

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)


@contextlib.contextmanager
def hub_client_timeouts(timeout: float, attempts: int | None = None):
    """huggingface_hub's shared HTTP client with timeouts and one RetryBudget while the block runs (its default
    client waits for an answer forever and retries inside each call): `timeout` seconds for reading, writing
    and the connection pool, at most CONNECT_TIMEOUT to connect; `attempts` transient failures in all (default
    `hub_attempts()`). Yields the budget. The client factory in place before (huggingface_hub's or the user's
    own) builds the client and is restored afterwards."""
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
    budget = RetryBudget(hub_attempts(attempts), timeout)

    def factory():
        client = previous()
        client.timeout = type(client.timeout)(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        client._transport = _BudgetedTransport(client._transport, budget)
        client._mounts = {pattern: None if transport is None else _BudgetedTransport(transport, budget)
                          for pattern, transport in client._mounts.items()}
        return client

    set_client_factory(factory)  # closes the current client: the next request builds one with timeouts
    try:
        yield budget
    finally:
        set_client_factory(previous)


_TOKEN_PATTERNS = [re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"), re.compile(r"\b(?:hf|api)_[A-Za-z0-9]{16,}")]


REDACTED = "hf_***"


def redact(text: str, token: str | None = None) -> str:
    """`text` with the token, any `Bearer ...` value (an echoed Authorization header) and anything shaped like
    a Hugging Face token replaced by "hf_***"."""
    text = str(text)
    if token:
        text = text.replace(token, REDACTED)
    text = _TOKEN_PATTERNS[0].sub(lambda m: m.group(1) + REDACTED, text)
    return _TOKEN_PATTERNS[1].sub(REDACTED, text)


def _transient(err: BaseException) -> bool:
    """A failure worth another try: no answer in time, a network error, HTTP 408 / 429 / 5xx."""
    if isinstance(err, HubTransientFailure):
        return True
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return status in (408, 429) or status >= 500
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError",
                         "TimeoutError", "ConnectionError"})


def _describe_http_error(err: Exception, repo_id: str, token: str | None = None) -> str:
    """What went wrong, in words, with the token redacted from anything the server sent back."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        try:
            body = err.response.text[:300]
        except Exception:  # noqa: BLE001 - a streamed response whose body was not read
            body = ""
        server = redact(err.server_message or body, token)
        if status in (401, 403):
            return (f"the Hub refused the token (HTTP {status}: {server}); it needs write access to the "
                    f"namespace of {repo_id}")
        if status == 404:
            return (f"HTTP 404: {server}. The model repo or the revision was not found (a dataset or Space "
                    f"of the same name does not count)")
        return f"HTTP {status}: {server}"
    if isinstance(err, HubTransientFailure):
        return redact(err.description, token)
    message = redact(str(err), token) or "no answer"
    if "Timeout" in type(err).__name__ or isinstance(err, TimeoutError):
        return f"network failure: no answer from the Hub in time ({type(err).__name__}: {message})"
    return f"network failure ({type(err).__name__}: {message})"



