"""Measure the deployment exports of a linear-probe classifier: file sizes, parity with PyTorch, CPU latency at
batch 1 and 32, and held-out top-1 for PyTorch fp32, ONNX fp32 and ONNX int8 (onnxruntime), and PyTorch int8
(torch dynamic quantization of the Linear layers, for comparison). The numbers of the README's deployment
section come from here.

    accelerate launch scripts/pretrain.py                                  # -> outputs/pretrain/encoder
    accelerate launch scripts/linear_probe.py --model outputs/pretrain     # -> outputs/probe
    python benchmarks/export_report.py --probe outputs/probe --rounds 7 --json outputs/export_report.json

The probe comes from `--probe`, else `outputs/probe`; without one, a probe is trained here with
scripts/linear_probe.py's program on `--encoder` (default `outputs/pretrain/encoder`, else a randomly
initialised `mae-vit-mnist-patch4` encoder, seed 0) into `<output>/probe`, and reused from there by later
runs. Accuracy is measured on the embedded held-out split (1,000 MNIST digits) through the probe's image
processor.

Latency: every backend runs the same preprocessed digits with the same number of threads (`--threads`,
default 1: on a shared 2-core machine two OpenMP threads collapse under load, 5 ms -> 450 ms for one image),
onnxruntime without busy-waiting; rounds are interleaved (the order rotates each round), each round times
`--iters` calls after one warm-up; reported: median per-call time over rounds and the median of the per-round
ratios. The load average before and after is printed: compare numbers only from one run.
"""

import argparse
import copy
import io
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hf_mae import MAEConfig, MAEImageProcessor, MAEModel
from hf_mae.data.sources import load_embedded_default
from hf_mae.export.folder import export_model
from hf_mae.export.parity import onnx_session
from hf_mae.export.spec import FILE_NAMES
from hf_mae.export.wrappers import load_model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default=None,
                        help="linear-probe classifier folder (scripts/linear_probe.py output; default outputs/probe "
                             "if it exists, else one is trained here on --encoder)")
    parser.add_argument("--encoder", default=None,
                        help="encoder to train a probe on when there is no --probe (default outputs/pretrain/encoder "
                             "if it exists, else a random-init mae-vit-mnist-patch4 encoder)")
    parser.add_argument("--output", default="outputs/export_report",
                        help="folder for the exported files (and a probe trained here); default outputs/export_report")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for every backend (torch and onnxruntime intra-op; default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--iters", type=int, nargs=2, default=[30, 4], metavar=("BATCH1", "BATCH32"),
                        help="timed calls per round at batch 1 and at batch 32 (default 30 4)")
    parser.add_argument("--per_channel", action="store_true", help="int8 ONNX with per-channel weight scales")
    parser.add_argument("--json", default=None, help="also write every number here (default <output>/report.json)")
    return parser.parse_args(argv)


def uptime() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on {os.cpu_count()} CPUs"


def resolve_probe(args) -> tuple[str, str]:
    """The probe folder and a sentence on where it came from (training one here when needed)."""
    if args.probe:
        return args.probe, f"probe {args.probe}"
    if os.path.isfile("outputs/probe/config.json"):
        return "outputs/probe", "probe outputs/probe"
    encoder = args.encoder or ("outputs/pretrain/encoder" if os.path.isfile("outputs/pretrain/encoder/config.json")
                               else None)
    output = Path(args.output)
    if encoder is None:
        torch.manual_seed(0)
        config = MAEConfig.from_preset("mae-vit-mnist-patch4")
        encoder = str(output / "random_encoder")
        MAEModel(config).save_pretrained(encoder)
        MAEImageProcessor.for_config(config).save_pretrained(encoder)
        where = "a random-init mae-vit-mnist-patch4 encoder (seed 0)"
    else:
        where = f"encoder {encoder}"
    from hf_mae.cli.linear_probe import main as probe_main
    from hf_mae.cli.linear_probe import parse_args as probe_args
    from hf_mae.training.output_dir import read_run_marker

    probe = output / "probe"
    marker = read_run_marker(probe) or {}
    if marker.get("program") == "linear probe" and marker.get("status") == "finished":
        return str(probe), f"linear probe trained by an earlier run of this report ({probe})"
    flags = ["--overwrite_output_dir"] if probe.exists() else []  # this report's own scratch folder
    probe_main(probe_args(["--model", encoder, "--output_dir", str(probe), "--num_workers", "0", *flags]))
    return str(probe), f"linear probe trained here (scripts/linear_probe.py defaults) on {where}"


def file_size(path) -> int:
    return Path(path).stat().st_size


def state_dict_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def main(args):
    torch.set_num_threads(args.threads)
    load_before = uptime()
    probe_dir, probe_note = resolve_probe(args)
    model, processor = load_model(probe_dir)
    out = Path(args.output) / "classifier"
    print(f"exporting {probe_note} -> {out}")
    # atol=None: measure, do not gate (scripts/export.py gates at 1e-4); the verdict is printed below.
    info = export_model(model, out, ["onnx", "int8", "export", "torchscript"], processor=processor, atol=None,
                        per_channel=args.per_channel, source=probe_dir)
    keep_dir = Path(args.output) / "classifier_int8_fc2_fp32"
    keep_info = export_model(model, keep_dir, ["int8"], processor=processor, per_channel=args.per_channel,
                             keep_fp32=["mlp/fc2"], source=probe_dir)
    encoder_info = export_model(model.encoder, Path(args.output) / "encoder", ["onnx", "export", "torchscript"],
                                processor=processor, atol=None, source=f"{probe_dir} (its encoder)")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's eager dynamic quantization is deprecated (moving to torchao)
        from torch.ao.quantization import quantize_dynamic

        torch_int8 = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8).eval()
    sessions = {"onnx": onnx_session(out / FILE_NAMES["onnx"], args.threads),
                "int8": onnx_session(out / FILE_NAMES["int8"], args.threads),
                "int8_keep": onnx_session(keep_dir / FILE_NAMES["int8"], args.threads)}

    def torch_runner(module):
        def run(x):
            with torch.inference_mode():
                return module(x).logits.numpy()
        return run

    backends = {
        "PyTorch fp32": torch_runner(model),
        "ONNX fp32 (onnxruntime)": lambda x: sessions["onnx"].run(None, {"pixel_values": x.numpy()})[0],
        "ONNX int8 (onnxruntime dynamic)": lambda x: sessions["int8"].run(None, {"pixel_values": x.numpy()})[0],
        "ONNX int8, MLP fc2 kept fp32": lambda x: sessions["int8_keep"].run(None, {"pixel_values": x.numpy()})[0],
        "PyTorch int8 (torch dynamic)": torch_runner(torch_int8),
    }
    sizes = {
        "PyTorch fp32": file_size(Path(probe_dir) / "model.safetensors"),
        "ONNX fp32 (onnxruntime)": info["files"]["onnx"]["size_bytes"],
        "ONNX int8 (onnxruntime dynamic)": info["files"]["int8"]["size_bytes"],
        "ONNX int8, MLP fc2 kept fp32": keep_info["files"]["int8"]["size_bytes"],
        "PyTorch int8 (torch dynamic)": state_dict_bytes(torch_int8),
    }

    validation = load_embedded_default()["validation"]
    x_val = processor(images=list(validation["image"]), return_tensors="pt")["pixel_values"].float()
    y_val = np.asarray(validation["label"])
    # Dynamic quantization takes one activation scale per input tensor, so int8 results depend on what shares
    # the batch: accuracy at the two deployment shapes, every image alone and batches of 32.
    accuracy = {}
    for eval_batch in (1, 32):
        logits = {name: np.concatenate([run(x_val[i:i + eval_batch]) for i in range(0, len(x_val), eval_batch)])
                  for name, run in backends.items()}
        reference = logits["PyTorch fp32"]
        for name, value in logits.items():
            correct = value.argmax(1) == y_val
            accuracy.setdefault(name, {})[eval_batch] = {
                "top1": 100.0 * float(correct.mean()),
                "delta_points": 100.0 * float(correct.mean() - (reference.argmax(1) == y_val).mean()),
                "argmax_agreement": 100.0 * float((value.argmax(1) == reference.argmax(1)).mean()),
                "max_abs_logit_diff": float(np.abs(value - reference).max()),
            }

    latency = {}
    names = list(backends)
    for batch, iters in zip((1, 32), args.iters):
        x = x_val[:batch]
        times = {name: [] for name in names}
        for round_index in range(args.rounds):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                run = backends[name]
                run(x)
                start = time.perf_counter()
                for _ in range(iters):
                    run(x)
                times[name].append(1000 * (time.perf_counter() - start) / iters)
        latency[batch] = {name: {"median_ms": statistics.median(t),
                                 "ratio_to_pytorch_fp32": statistics.median(
                                     a / b for a, b in zip(t, times["PyTorch fp32"])),
                                 "ratio_to_onnx_fp32": statistics.median(
                                     a / b for a, b in zip(t, times["ONNX fp32 (onnxruntime)"])),
                                 "rounds_ms": t} for name, t in times.items()}
    load_after = uptime()

    report = {"probe": probe_note, "threads": args.threads, "rounds": args.rounds, "iters": args.iters,
              "load_before": load_before, "load_after": load_after, "torch": torch.__version__,
              "sizes_bytes": sizes, "accuracy": accuracy, "latency_ms": latency,
              "parity_classifier": {fmt: entry.get("check") for fmt, entry in info["files"].items()},
              "parity_encoder": {fmt: entry.get("check") for fmt, entry in encoder_info["files"].items()},
              "other_files_bytes": {"model.pt2": info["files"]["export"]["size_bytes"],
                                    "model.pt": info["files"]["torchscript"]["size_bytes"]}}
    json_path = Path(args.json or Path(args.output) / "report.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")

    fp32_size = sizes["PyTorch fp32"]
    print(f"\n{probe_note}; {args.threads} thread(s); {args.rounds} interleaved rounds; {load_before} before, "
          f"{load_after} after")
    print("| backend | size | size ratio | top-1, eval batch 1 / 32 (delta, points) | agreement with fp32 "
          "(b1 / b32) | latency b1 | latency b32 | latency ratio b1 / b32 vs PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        b1, b32 = latency[1][name], latency[32][name]
        a1, a32 = accuracy[name][1], accuracy[name][32]
        print(f"| {name} | {sizes[name] / 2**20:.2f} MiB | {sizes[name] / fp32_size:.2f} | "
              f"{a1['top1']:.1f}% ({a1['delta_points']:+.1f}) / {a32['top1']:.1f}% ({a32['delta_points']:+.1f}) | "
              f"{a1['argmax_agreement']:.1f}% / {a32['argmax_agreement']:.1f}% | {b1['median_ms']:.2f} ms | "
              f"{b32['median_ms']:.1f} ms | {b1['ratio_to_pytorch_fp32']:.2f} / {b32['ratio_to_pytorch_fp32']:.2f} |")
    for name in ("ONNX int8 (onnxruntime dynamic)", "ONNX int8, MLP fc2 kept fp32"):
        print(f"{name} vs ONNX fp32: latency {latency[1][name]['ratio_to_onnx_fp32']:.2f} (batch 1), "
              f"{latency[32][name]['ratio_to_onnx_fp32']:.2f} (batch 32); size "
              f"{sizes[name] / sizes['ONNX fp32 (onnxruntime)']:.2f}")
    print("\nparity, max |exported - PyTorch| (random batch 1 / random batch 3 / real digits; max relative):")
    for what, parity in (("classifier logits", report["parity_classifier"]),
                         ("encoder outputs", report["parity_encoder"])):
        for fmt, check in parity.items():
            if check:
                verdict = "" if fmt == "int8" else ("  <= 1e-4" if check["max_abs_diff"] <= 1e-4 else "  > 1e-4 !")
                print(f"  {what:<18} {fmt:<12} {check['max_abs_diff_random_batch1']:.1e} / "
                      f"{check['max_abs_diff_random_batch3']:.1e} / {check['max_abs_diff_real']:.1e}; "
                      f"{check['max_rel_diff']:.1e}{verdict}")
    print("  all 1,000 held-out digits, logits (eval batch 1 / 32): " + "; ".join(
        f"{name} {accuracy[name][1]['max_abs_logit_diff']:.2g} / {accuracy[name][32]['max_abs_logit_diff']:.2g}"
        for name in names[1:]))
    print(f"\nnumbers: {json_path}")
    return report


if __name__ == "__main__":
    main(parse_args())
