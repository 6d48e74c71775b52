"""The browser demo: `python scripts/demo.py --model outputs/pretrain [--port N]`
(see --help and hf_mae/cli/demo.py)."""

from hf_mae.cli.demo import cli

if __name__ == "__main__":
    cli()
