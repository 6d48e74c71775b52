"""The browser demo (needs the demo extra: pip install -e ".[demo]"): masked input and reconstruction of any image.

    python scripts/demo.py --model outputs/pretrain                       # http://127.0.0.1:7860
    python scripts/demo.py --model outputs/pretrain --classifier outputs/probe --port 7861
    python scripts/demo.py --model me/mae-mnist --push_space me/mae-mnist-demo   # a Space that loads me/mae-mnist

Named API endpoints (gradio_client): /heldout_digit, /reconstruct and, with a classifier, /classify.
"""

from __future__ import annotations

import argparse
import os

from ..evaluation.classifier import DEFAULT_MODEL
from .arguments import add_model_argument, positive_int, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser, default=DEFAULT_MODEL,
                       help="a pretraining folder or Hub id (reconstructions), or a classifier (top-5); default "
                            f"{DEFAULT_MODEL}")
    parser.add_argument("--classifier", default=None,
                        help="a linear-probe or fine-tune folder / Hub id whose top-5 classes are shown too")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine "
                        "only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default 7860)")
    space = parser.add_argument_group("Space")
    space.add_argument("--push_space", metavar="USER/NAME", default=None,
                       help="instead of serving, upload app.py + requirements.txt as a gradio Space that loads the "
                            "model from its Hub repo (--space_model, else --model when it is a Hub id)")
    space.add_argument("--space_model", metavar="USER/NAME", default=None,
                       help="the Hub repo the Space loads (push the run there first with scripts/push_to_hub.py)")
    space.add_argument("--space_classifier", metavar="USER/NAME", default=None,
                       help="the Hub repo of a classifier the Space shows (default: --classifier if a Hub id)")
    space.add_argument("--private", action="store_true", help="create the Space private")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _hub_id(name: str | None) -> str | None:
    return None if name is None or os.path.exists(name) else name


def main(args: argparse.Namespace) -> str | None:
    """Serve the demo on args.host:args.port (blocks), or push the Space and return its commit URL."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    if args.push_space:
        from ..hub.push import HubPushError
        from ..hub.space import push_space

        model_repo = args.space_model or _hub_id(args.model)
        if model_repo is None:
            raise ValueError(f"--model {args.model!r} is a local folder and the Space loads its model from the Hub: "
                             f"push it (python scripts/push_to_hub.py --checkpoint {args.model} --pretrain_repo "
                             f"USER/NAME) and pass --space_model USER/NAME")
        try:
            url = push_space(args.push_space, model_repo=model_repo, private=args.private,
                             classifier_repo=args.space_classifier or _hub_id(args.classifier))
        except HubPushError as error:
            raise SystemExit(f"error: {error}") from None
        print(f"Space pushed: {url}")
        return url
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('The demo needs gradio: pip install -e ".[demo]"') from None
    from ..demo import build_demo

    demo = build_demo(args.model, classifier=args.classifier)
    print(f"hf_mae demo of {args.model} on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, show_error=True)
    return None


def cli(argv=None):
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]
