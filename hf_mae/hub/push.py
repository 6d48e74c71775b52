"""Pushes: one commit per repo, bounded retries, errors that print the command that retries."""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
import time
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token

from .cards import _WHAT
from .folders import Upload, build_upload_folders, describe_uploads
from .http import (
    RETRY_BACKOFF_S,
    HubBudgetSpent,
    RetryBudget,
    _describe_http_error,
    _transient,
    hub_attempts,
    hub_client_timeouts,
    hub_endpoint,
    hub_timeout,
    redact,
)

logger = logging.getLogger(__name__)

PUSH_COMMAND = ["python", "-m", "hf_mae.push_to_hub"]  # what `scripts/push_to_hub.py` runs; works after any install


class HubPushError(RuntimeError):
    """A push to the Hub failed. The message says what happened, that nothing local changed, how to retry.

    Attributes: `repo_id` (the repo that failed), `retry_command` (a shell command), `pushed` ({repo_id:
    commit url} of the repos that were pushed before the failure).
    """

    def __init__(self, message: str, *, repo_id: str | None = None, retry_command: str | None = None,
                 pushed: dict[str, str] | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.retry_command = retry_command
        self.pushed = dict(pushed or {})


def retry_command(*, checkpoint=None, probe=None, encoder_repo=None, probe_repo=None, pretrain_repo=None,
                  segmentation=None, segmentation_repo=None, format: str = "hf_mae", private: bool = False,
                  revision: str | None = None, commit_message: str | None = None, timeout: float | None = None,
                  attempts: int | None = None) -> str:
    """The `python -m hf_mae.push_to_hub` command line that repeats a push (absolute paths; never the token). It runs
    wherever hf_mae is installed, from any folder."""
    args = list(PUSH_COMMAND)
    for flag, value in (("--checkpoint", checkpoint), ("--probe", probe), ("--segmentation", segmentation)):
        if value is not None:
            args += [flag, str(Path(value).resolve())]
    for flag, value in (("--pretrain_repo", pretrain_repo), ("--encoder_repo", encoder_repo),
                        ("--probe_repo", probe_repo), ("--segmentation_repo", segmentation_repo)):
        if value:
            args += [flag, value]
    if format != "hf_mae":
        args += ["--format", format]
    if private:
        args.append("--private")
    if revision:
        args += ["--revision", revision]
    if commit_message:
        args += ["--commit_message", commit_message]
    if timeout is not None:
        args += ["--timeout", f"{timeout:g}"]
    if attempts is not None:
        args += ["--attempts", str(attempts)]
    command = shlex.join(args)
    if os.environ.get("HF_ENDPOINT"):
        command = f"HF_ENDPOINT={shlex.quote(os.environ['HF_ENDPOINT'])} {command}"
    return command


def _failure(what: str | None, repo_id: str, detail: str, sources: list[Path], command: str,
             pushed: dict[str, str], token: str | None = None) -> HubPushError:
    subject = f"the {what} " if what else ""
    lines = [f"Pushing {subject}to {repo_id} ({hub_endpoint()}) failed: {redact(detail, token)}",
             "Nothing local was changed: " + ", ".join(str(s.resolve()) for s in sources) + " untouched "
             "(uploads are built in a temporary folder)."]
    if pushed:
        lines.append("Already pushed: " + ", ".join(f"{repo} ({url})" for repo, url in pushed.items())
                     + ". The retry pushes them again with the same files, which is harmless.")
    lines.append(f"Retry with:\n  {command}")
    return HubPushError(redact("\n".join(lines), token), repo_id=repo_id, retry_command=command, pushed=pushed)


def push_folder(upload: Upload, *, api: HfApi, private: bool = False, revision: str | None = None) -> str:
    """Push one built folder as one commit; returns the commit URL. Raises HfHubHTTPError, network errors,
    or a ValueError when the name belongs to a repo of another type (push_to_hub makes HubPushErrors)."""
    logger.info("Creating or finding the model repo %s at %s", upload.repo_id, api.endpoint)
    repo_url = api.create_repo(upload.repo_id, repo_type="model", private=private or None, exist_ok=True)
    if getattr(repo_url, "repo_type", "model") not in (None, "model"):
        raise ValueError(f"{upload.repo_id} already exists as a {repo_url.repo_type} repo, not a model repo; "
                         f"choose another repo id")
    if revision and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(upload.repo_id, branch=revision, repo_type="model", exist_ok=True)
    logger.info("Pushing %d files to %s/%s (revision %s) in one commit", len(upload.files()), api.endpoint,
                upload.repo_id, revision or "main")
    info = api.upload_folder(folder_path=upload.folder, repo_id=upload.repo_id, repo_type="model",
                             revision=revision, commit_message=upload.commit_message)
    logger.info("Pushed %s: %s", upload.repo_id, info.commit_url)
    return info.commit_url


def _push_with_retries(upload: Upload, *, api: HfApi, private: bool, revision: str | None,
                       budget: RetryBudget, token: str | None) -> str:
    """`push_folder`, tried again after transient failures (no answer in time, network errors, HTTP 408 / 429 /
    5xx) up to `budget.attempts` tries in all, RETRY_BACKOFF_S, 2x, 4x ... (at most 60) seconds apart. The
    client's transport counts every failed request against the one budget of this repo and raises it past
    huggingface_hub's own retries, so this loop is the only one that retries."""
    budget.start()
    for attempt in range(1, budget.attempts + 1):
        try:
            return push_folder(upload, api=api, private=private, revision=revision)
        except (KeyboardInterrupt, SystemExit, ValueError, HubBudgetSpent):
            raise
        except Exception as err:  # noqa: BLE001 - HTTP errors and network failures from the client
            if attempt == budget.attempts or not _transient(err):
                raise
            wait = min(60.0, RETRY_BACKOFF_S * 2 ** (attempt - 1))
            logger.warning("Pushing %s failed (%s); trying again in %g s (attempt %d of %d)", upload.repo_id,
                           _describe_http_error(err, upload.repo_id, token), wait, attempt + 1, budget.attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")


def push_to_hub(*, checkpoint=None, probe=None, encoder_repo: str | None = None,
                probe_repo: str | None = None, pretrain_repo: str | None = None, segmentation=None,
                segmentation_repo: str | None = None, format: str = "hf_mae", private: bool = False,
                revision: str | None = None, commit_message: str | None = None, token: str | None = None,
                dry_run_dir=None, timeout: float | None = None, attempts: int | None = None) -> dict[str, str]:
    """Build and push the requested repos; returns {repo_id: commit url} (empty for a dry run).

    `checkpoint`: a pretraining output folder (full model at its root, `encoder/`); `probe`: a linear-probe
    output folder; `segmentation`: a scripts/segment.py output folder. `format` ("hf_mae" or "vit") applies to
    the encoder and the probe. With `dry_run_dir` the folders are built there and described, and nothing is
    pushed (no token needed). `timeout`: seconds a Hub request may wait for an answer (default
    $HF_MAE_HUB_TIMEOUT, else 60); `attempts`: tries per repo after timeouts, network errors and HTTP 408 / 429
    / 5xx (default $HF_MAE_HUB_ATTEMPTS, else 3). Raises
    HubPushError on any push failure (the token redacted from everything it shows); ValueError /
    FileNotFoundError for bad inputs, before anything is pushed.
    """
    kwargs = dict(checkpoint=checkpoint, probe=probe, encoder_repo=encoder_repo, probe_repo=probe_repo,
                  pretrain_repo=pretrain_repo, segmentation=segmentation, segmentation_repo=segmentation_repo,
                  format=format, commit_message=commit_message)
    command = retry_command(**kwargs, private=private, revision=revision, timeout=timeout, attempts=attempts)
    timeout, attempts = hub_timeout(timeout), hub_attempts(attempts)
    sources = [Path(p) for p in (checkpoint, probe, segmentation) if p is not None]
    if dry_run_dir is not None:
        dry_run_dir = Path(dry_run_dir)
        if dry_run_dir.exists() and not dry_run_dir.is_dir():
            raise FileExistsError(f"--dry_run {dry_run_dir} is a file: give a new or empty folder")
        if dry_run_dir.exists() and any(dry_run_dir.iterdir()):
            raise FileExistsError(f"--dry_run folder {dry_run_dir} is not empty: give a new or empty one")
        for source in sources:
            if dry_run_dir.resolve().is_relative_to(source.resolve()):
                raise ValueError(f"--dry_run folder {dry_run_dir} is inside {source}: source folders are "
                                 f"never written to, give a folder outside them")
        uploads = build_upload_folders(dry_run_dir, **kwargs)
        print(f"Dry run: nothing pushed. Built folders are in {dry_run_dir}.")
        print(describe_uploads(uploads, private=private, revision=revision))
        return {}
    first_repo = pretrain_repo or encoder_repo or probe_repo or segmentation_repo
    token = token or get_token()
    if not token:
        raise _failure(None, first_repo, "no Hugging Face token found. Set HF_TOKEN to a token with "
                       "write access, or log in once with `hf auth login`.", sources, command, {})
    if constants.is_offline_mode():
        raise _failure(None, first_repo, "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1 when it "
                       "was imported). Unset HF_HUB_OFFLINE to push.", sources, command, {})
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="hf_mae")
    pushed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hf_mae_push_") as tmp, hub_client_timeouts(timeout, attempts) as budget:
        uploads = build_upload_folders(tmp, **kwargs)
        for upload in uploads:
            what = _WHAT[upload.kind]
            try:
                pushed[upload.repo_id] = _push_with_retries(upload, api=api, private=private, revision=revision,
                                                            budget=budget, token=token)
            except (KeyboardInterrupt, SystemExit):
                raise
            except ValueError as err:  # a repo of another type, or invalid metadata found by the client
                failure = _failure(what, upload.repo_id, str(err), sources, command, pushed, token)
            except Exception as err:  # noqa: BLE001 - HTTP errors and network failures from the client
                detail = _describe_http_error(err, upload.repo_id, token)
                if _transient(err):
                    tries = max(budget.failures, 1)
                    detail += (f" (after {tries} attempt{'s' if tries > 1 else ''}, {timeout:g} s timeout"
                               f" per request)")
                if "network" in detail:
                    detail += ". The commit may or may not have reached the Hub; retrying is safe"
                failure = _failure(what, upload.repo_id, detail, sources, command, pushed, token)
            else:
                continue
            # raised outside the except block, so that no traceback shows the client's exception (its text
            # may hold what the server echoed, the token included)
            raise failure
    return pushed


def push_pretraining_outputs(output_dir, hub_model_id: str, *, encoder_repo_id: str | None = None,
                             push_encoder: bool = True, format: str = "hf_mae", private: bool = False,
                             revision: str | None = None, commit_message: str | None = None,
                             token: str | None = None) -> dict[str, str]:
    """Push a pretraining output folder: the full model to `hub_model_id`, the encoder to `encoder_repo_id`
    (default `hub_model_id + "-encoder"`). For `scripts/pretrain.py --push_to_hub` (main process only)."""
    encoder_repo = (encoder_repo_id or f"{hub_model_id}-encoder") if push_encoder else None
    return push_to_hub(checkpoint=output_dir, pretrain_repo=hub_model_id, encoder_repo=encoder_repo,
                       format=format, private=private, revision=revision, commit_message=commit_message,
                       token=token)


def push_probe(output_dir, repo_id: str, *, checkpoint=None, format: str = "hf_mae", private: bool = False,
               revision: str | None = None, commit_message: str | None = None,
               token: str | None = None) -> str:
    """Push a linear-probe output folder to `repo_id`; `checkpoint` (the pretraining output it probed) adds
    the pretraining recipe to the card. For `scripts/linear_probe.py --push_to_hub`. Returns the commit
    URL."""
    pushed = push_to_hub(checkpoint=checkpoint, probe=output_dir, probe_repo=repo_id, format=format,
                         private=private, revision=revision, commit_message=commit_message, token=token)
    return pushed[repo_id]
