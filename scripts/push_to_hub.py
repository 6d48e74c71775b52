"""Push hf_mae models to the Hugging Face Hub, one commit each:
`python scripts/push_to_hub.py --checkpoint outputs/pretrain --encoder_repo me/mae-enc` (see --help and
hf_mae/cli/push_to_hub.py; `python -m hf_mae.push_to_hub` is the same program)."""

import sys

from hf_mae.cli.push_to_hub import cli

if __name__ == "__main__":
    sys.exit(cli())
