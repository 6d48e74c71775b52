"""`python -m hf_mae.push_to_hub`: the push program (hf_mae.cli.push_to_hub) under the name its retry commands use."""

import sys

from .cli.push_to_hub import cli

if __name__ == "__main__":
    sys.exit(cli())
