"""Export an hf_mae encoder or classifier to ONNX, int8 ONNX, torch.export or TorchScript, checked against
PyTorch: `python scripts/export.py --model outputs/pretrain/encoder --format all` (see --help and
hf_mae/cli/export.py)."""

from hf_mae.cli.export import cli

if __name__ == "__main__":
    cli()
