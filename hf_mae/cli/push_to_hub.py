"""Push hf_mae models to the Hugging Face Hub from the command line: `python scripts/push_to_hub.py` or
`python -m hf_mae.push_to_hub` (the folders, cards and pushes themselves are in `hf_mae.hub`)."""

import argparse
import logging
import os
import sys
from pathlib import Path

from ..hub.folders import UPLOAD_FORMATS
from ..hub.http import (
    ATTEMPTS_ENV,
    CONNECT_TIMEOUT,
    DEFAULT_ATTEMPTS,
    DEFAULT_TIMEOUT,
    RETRY_BACKOFF_S,
    TIMEOUT_ENV,
    hub_attempts,
    hub_timeout,
)
from ..hub.push import HubPushError, push_to_hub
from .arguments import positive_float, positive_int, run_cli

CLI_EXAMPLES = r"""examples:
  # encoder + full model from a pretraining run, probe from a linear-probe run (cards from hf_mae/model_cards/)
  python scripts/push_to_hub.py --checkpoint outputs/pretrain --encoder_repo me/mae-enc \
      --pretrain_repo me/mae --probe outputs/probe --probe_repo me/mae-linprobe

  # stock transformers export (ViTModel / ViTForImageClassification, no remote code), private, a branch
  python scripts/push_to_hub.py --checkpoint outputs/pretrain --encoder_repo me/mae-enc-vit --format vit \
      --private --revision v1

  # a segmentation model (scripts/segment.py output: UperNet on the MAE encoder, its card carries the mIoU)
  python scripts/push_to_hub.py --segmentation outputs/segment --segmentation_repo me/mae-digit-scenes-upernet

  # build the folders and show what would be pushed, without pushing (no token needed)
  python scripts/push_to_hub.py --checkpoint outputs/pretrain --encoder_repo me/mae-enc --dry_run /tmp/plan

`python -m hf_mae.push_to_hub ...` is the same program (it works wherever hf_mae is installed). The token comes from
HF_TOKEN or `hf auth login` and is never printed (nor anything the server echoes of it). The Hub address is
HF_ENDPOINT (default https://huggingface.co). A request without an answer for --timeout seconds fails; a push
that fails that way (or on a network error or an HTTP 408 / 429 / 5xx) is tried --attempts times in all. On
failure the message says what happened and prints the command that retries the push.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Push hf_mae models (encoder, linear probe, full pretraining model, segmentation model) to the "
                    "Hugging Face "
                    "Hub, each as one commit with a rendered model card. The token comes from HF_TOKEN or "
                    "`hf auth login` (never printed); the Hub address from HF_ENDPOINT.",
        epilog=CLI_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a pretraining output folder (full model at its root, encoder/ inside, "
                             "training_args.json, results.json, log.jsonl, figures); needed for "
                             "--encoder_repo and --pretrain_repo, and adds the pretraining recipe to a "
                             "probe's card")
    parser.add_argument("--encoder_repo", default=None,
                        help="repo id (user/name) for the encoder (AutoModel): MAEModel, or ViTModel with "
                             "--format vit")
    parser.add_argument("--pretrain_repo", default=None,
                        help="repo id for the full pretraining model with the decoder "
                             "(AutoModelForPreTraining), with the run's logs, results and figures; always in "
                             "hf_mae format")
    parser.add_argument("--probe", type=Path, default=None,
                        help="a linear-probe output folder (MAEForImageClassification + processor + "
                             "results.json); needs --probe_repo")
    parser.add_argument("--probe_repo", default=None,
                        help="repo id for the linear probe (AutoModelForImageClassification); needs "
                             "--probe")
    parser.add_argument("--segmentation", type=Path, default=None,
                        help="a scripts/segment.py output folder (UperNet on the MAE encoder + processor + "
                             "results.json); needs --segmentation_repo")
    parser.add_argument("--segmentation_repo", default=None,
                        help="repo id for the segmentation model (AutoModelForSemanticSegmentation); needs "
                             "--segmentation")
    parser.add_argument("--format", choices=UPLOAD_FORMATS, default="hf_mae",
                        help="hf_mae: hf_mae classes with their code (trust_remote_code=True, hf_mae not "
                             "needed); vit: stock transformers ViTModel / ViTForImageClassification "
                             "(BatchNorm folded into the head; CLS-pooled probes only), no remote code. "
                             "Applies to the encoder and the probe. Default: hf_mae")
    parser.add_argument("--private", action="store_true",
                        help="create the repos private (a repo that already exists keeps its visibility)")
    parser.add_argument("--revision", default=None,
                        help="branch to commit to (created from main if missing); default: main")
    parser.add_argument("--commit_message", default=None,
                        help="commit message for every repo; default: one per kind, e.g. 'Upload MAE "
                             "encoder'")
    parser.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help=f"seconds a Hub request may wait for an answer before it fails (at most "
                             f"{CONNECT_TIMEOUT:g} to connect); default ${TIMEOUT_ENV}, else {DEFAULT_TIMEOUT:g}")
    parser.add_argument("--attempts", type=positive_int, default=None,
                        help=f"tries per repo in all when a request times out, the network fails or the Hub "
                             f"answers HTTP 408 / 429 / 5xx (waiting {RETRY_BACKOFF_S:g} s, then twice as long "
                             f"each time); default ${ATTEMPTS_ENV}, else {DEFAULT_ATTEMPTS}")
    parser.add_argument("--dry_run", type=Path, default=None, metavar="DIR",
                        help="build the upload folders into DIR (new or empty, outside the source folders) "
                             "and print what would be pushed; pushes nothing and needs no token")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.encoder_repo or args.pretrain_repo or args.probe_repo or args.segmentation_repo):
        parser.error("nothing to push: give --encoder_repo, --pretrain_repo, --probe_repo and/or --segmentation_repo")
    if (args.encoder_repo or args.pretrain_repo) and args.checkpoint is None:
        parser.error("--encoder_repo and --pretrain_repo need --checkpoint")
    if (args.probe is None) != (args.probe_repo is None):
        parser.error("--probe and --probe_repo go together")
    if (args.segmentation is None) != (args.segmentation_repo is None):
        parser.error("--segmentation and --segmentation_repo go together")
    for flag, env in (("--timeout", TIMEOUT_ENV), ("--attempts", ATTEMPTS_ENV)):
        if getattr(args, flag[2:]) is None and os.environ.get(env):
            try:
                (hub_timeout if flag == "--timeout" else hub_attempts)()
            except ValueError as err:
                parser.error(f"{flag} unset and {err}")
    return args


def main(args: argparse.Namespace) -> int:
    """Push as `args` asks; returns the exit status (0 pushed, 1 the push failed, 2 bad inputs)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        pushed = push_to_hub(checkpoint=args.checkpoint, probe=args.probe, encoder_repo=args.encoder_repo,
                             probe_repo=args.probe_repo, pretrain_repo=args.pretrain_repo,
                             segmentation=args.segmentation, segmentation_repo=args.segmentation_repo,
                             format=args.format,
                             private=args.private, revision=args.revision, commit_message=args.commit_message,
                             dry_run_dir=args.dry_run, timeout=args.timeout, attempts=args.attempts)
    except HubPushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for repo_id, url in pushed.items():
        print(f"pushed {repo_id}: {url}")
    return 0


def cli(argv=None) -> int:
    """The command line: the exit status of `main`; any other failure ends in one line (run_cli)."""
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]


if __name__ == "__main__":
    sys.exit(cli())
