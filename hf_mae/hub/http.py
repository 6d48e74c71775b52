"""The Hub's HTTP policy: endpoint, timeouts, retries, token redaction."""

from __future__ import annotations

import contextlib
import logging
import os
import re

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


@contextlib.contextmanager
def hub_client_timeouts(timeout: float):
    """huggingface_hub's shared HTTP client with timeouts while the block runs (its default client waits for an
    answer forever): `timeout` seconds for reading, writing and the connection pool, at most CONNECT_TIMEOUT to
    connect. The client factory in place before (huggingface_hub's or the user's own) builds the client and is
    restored afterwards."""
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

    def factory():
        client = previous()
        client.timeout = type(client.timeout)(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        return client

    set_client_factory(factory)  # closes the current client: the next request builds one with timeouts
    try:
        yield
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
    message = redact(str(err), token) or "no answer"
    if "Timeout" in type(err).__name__ or isinstance(err, TimeoutError):
        return f"network failure: no answer from the Hub in time ({type(err).__name__}: {message})"
    return f"network failure ({type(err).__name__}: {message})"



