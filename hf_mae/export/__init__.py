"""Deployment exports (ONNX, int8 ONNX, torch.export, TorchScript), each checked against PyTorch: what an export
is (`spec`), models wrapped for export (`wrappers`), the exporters (`formats`), parity checks (`parity`) and
one export folder (`folder`). The program is `hf_mae.cli.export`."""
