"""One retry budget per pushed repo, whatever layer retries (hf_mae's loop or huggingface_hub's own backoff).

Against the loopback stand-in (`hub_server`): a commit answered with 500 forever, 429s, 503s that clear, a
server that never answers. Each case checks how many requests arrived, how long the push took against the
bound `attempts x timeout + backoffs`, that the token is in no output and that the source folder is untouched.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_timeout, tiny_config
from hub_server import FakeHub, SilentServer
from huggingface_hub import close_session, constants

from hf_mae import MAEForPreTraining, MAEImageProcessor
from hf_mae.hub import http as hub_http
from hf_mae.hub.push import HubPushError, push_to_hub

TOKEN = "hf_BUDGETtokenNeverLeak0123456789abcd"
REPO_ROOT = Path(__file__).resolve().parents[1]


def backoff_bound(attempts: int, timeout: float) -> float:
    """What one repo's push may take at most: every attempt waits its full timeout, with the backoffs between."""
    return attempts * timeout + sum(min(60.0, hub_http.RETRY_BACKOFF_S * 2 ** k) for k in range(attempts - 1))


def folder_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A pretraining output folder with its encoder, as scripts/pretrain.py writes it."""
    folder = tmp_path_factory.mktemp("budget") / "pretrain"
    model = MAEForPreTraining(tiny_config()).eval()
    processor = MAEImageProcessor.for_config(model.config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    model.encoder.save_pretrained(folder / "encoder")
    processor.save_pretrained(folder / "encoder")
    (folder / "training_args.json").write_text(json.dumps({"epochs": 1}))
    return folder


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = FakeHub(TOKEN).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    close_session()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_saved_token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    close_session()
    server.stop()


@pytest.mark.parametrize("client_path", ["xet-pipeline", "create_commit"])
@pytest.mark.parametrize("attempts", [1, 3])
def test_commit_answered_500_is_posted_at_most_attempts_times(hub, run_folder, monkeypatch, caplog, capfd,
                                                               client_path, attempts):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", client_path == "create_commit")
    hub.commit_status = 500
    before = folder_state(run_folder)
    start = time.monotonic()
    with pytest.raises(HubPushError, match=rf"HTTP 500: commit failed with 500 \(after {attempts} attempt") as info:
        push_to_hub(checkpoint=run_folder, encoder_repo="tester/enc", timeout=5, attempts=attempts)
    elapsed = time.monotonic() - start
    assert 1 <= hub.commit_attempts["tester/enc"] <= attempts
    assert elapsed < backoff_bound(attempts, 5), elapsed
    assert hub.repo("tester/enc").commits == []
    captured = capfd.readouterr()
    assert TOKEN not in str(info.value) + caplog.text + captured.out + captured.err
    assert folder_state(run_folder) == before


def test_rate_limited_create_counts_against_the_same_budget(hub, run_folder, monkeypatch):
    """429 twice then fine: two failures of a budget of 3 (the push succeeds); with a budget of 2 it fails
    after exactly 2 create requests, though huggingface_hub alone would retry 429 five times."""
    monkeypatch.setattr(hub_http, "RETRY_BACKOFF_S", 0.1)
    hub.create_errors = [429, 429]
    pushed = push_to_hub(checkpoint=run_folder, encoder_repo="tester/ok", attempts=3)
    assert list(pushed) == ["tester/ok"] and len(hub.repo("tester/ok").commits) == 1
    hub.create_errors = [429, 429, 429, 429, 429]
    creates_before = sum(path == "/api/repos/create" for _, path in hub.requests)
    with pytest.raises(HubPushError, match=r"HTTP 429.*after 2 attempts"):
        push_to_hub(checkpoint=run_folder, encoder_repo="tester/limited", attempts=2)
    assert sum(path == "/api/repos/create" for _, path in hub.requests) - creates_before == 2


def test_each_repo_has_its_own_budget(hub, run_folder, monkeypatch):
    """A failure on the first repo does not use up the second's: 503 for the pretraining repo, then fine."""
    monkeypatch.setattr(hub_http, "RETRY_BACKOFF_S", 0.1)
    hub.create_errors = [503]
    pushed = push_to_hub(checkpoint=run_folder, pretrain_repo="tester/full", encoder_repo="tester/enc2",
                         attempts=2)
    assert set(pushed) == {"tester/full", "tester/enc2"}


def test_commit_that_never_answers_ends_within_the_bound(hub, run_folder, monkeypatch, capfd):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub.hang_commits = True
    before = folder_state(run_folder)
    start = time.monotonic()
    with pytest.raises(HubPushError, match="no answer from the Hub in time"):
        push_to_hub(checkpoint=run_folder, encoder_repo="tester/hang", timeout=1, attempts=2)
    elapsed = time.monotonic() - start
    assert hub.commit_attempts["tester/hang"] <= 2
    assert elapsed < backoff_bound(2, 1) + 2, elapsed  # + the folder build and the quick requests before
    assert TOKEN not in "".join(capfd.readouterr())
    assert folder_state(run_folder) == before


def test_cli_against_a_silent_endpoint_ends_within_the_bound(run_folder, tmp_path):
    """`python -m hf_mae.push_to_hub --timeout 1 --attempts 3` against a server that never sends a byte."""
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": "", "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf_home"), "NO_PROXY": "127.0.0.1,localhost"}
    before = folder_state(run_folder)
    with SilentServer() as silent:
        env["HF_ENDPOINT"] = silent.url
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hf_mae.push_to_hub", "--checkpoint", str(run_folder),
                               "--encoder_repo", "tester/silent", "--timeout", "1", "--attempts", "3"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=subprocess_timeout(120))
        elapsed = time.monotonic() - start
        connections = silent.connections
    assert proc.returncode != 0 and "after 3 attempts" in proc.stderr, proc.stderr[-2000:]
    assert connections <= 3 + 1, connections  # + huggingface_hub's optional agent look-up (not the push's)
    startup = 30.0  # importing torch + transformers in a fresh python on 2 shared cores
    assert elapsed < backoff_bound(3, 1) + startup, elapsed
    assert TOKEN not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert folder_state(run_folder) == before


def test_budget_spent_is_not_retried_by_huggingface_hub():
    """The budget's error is not an httpx error, so huggingface_hub's backoff lets it through at once."""
    from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS

    budget = hub_http.RetryBudget(attempts=2, timeout=1.0)
    budget.failed("HTTP 503: first")
    with pytest.raises(hub_http.HubBudgetSpent) as info:
        budget.failed("HTTP 503: second")
    assert not isinstance(info.value, _DEFAULT_RETRY_ON_EXCEPTIONS) and budget.spent
    assert hub_http._transient(info.value) and "second" in hub_http._describe_http_error(info.value, "x/y")
    budget.start()
    assert budget.failures == 0 and not budget.spent
