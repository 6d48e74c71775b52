"""Convert an MAE / ViT checkpoint between official MAE, timm, transformers and hf_mae layouts:
`python scripts/convert_checkpoint.py mae_pretrain_vit_base.pth outputs/mae-vit-base` (see --help and
hf_mae/cli/convert_checkpoint.py)."""

import sys

from hf_mae.cli.convert_checkpoint import cli

if __name__ == "__main__":
    sys.exit(cli())
