"""GPU check: ViT-B/16 (or ViT-L/16: --preset) MAE training step in bf16 at batch 256, hf_mae vs transformers'
ViTMAE, in one run.

Variants (same config and weights; rounds interleaved; warm-up and compilation excluded):
    hf_mae                  bf16 autocast, fused AdamW, fused qkv, SDPA (hf_mae's defaults on a GPU)
    hf_mae_compiled         the same model under torch.compile (the pretraining script's --compile)
    transformers_bf16       ViTMAEForPreTraining with bf16 autocast and fused AdamW (equal settings)
    transformers_compiled   the same under torch.compile
    transformers_defaults   ViTMAEForPreTraining as a transformers user gets it: fp32, SDPA, torch's default AdamW
Optional: hf_mae pinned to an SDPA backend (--sdpa_backends), with another attention implementation such as
FlexAttention (--attn_implementations), under another compile mode such as max-autotune (--compile_modes),
with CUDA graphs (--cudagraphs), with Inductor's coordinate-descent tuning of its generated kernels
(--coordinate_descent_tuning), or with matmul+softmax attention in the encoder only (--eager_encoder_attention:
the encoder's sequences are 50 tokens, the decoder's 197). --deadline_s keeps a slow optional compile from
eating the time of the rest.

Reports images/s, model FLOPs utilisation (`train_gflop_per_image`: 58.2 GFLOP per image for ViT-B/16 MAE
training, 123.8 for ViT-L/16, forward and backward, against the card's dense bf16 peak), each variant's speedup
over the transformers variants, the step's peak memory above what the models and optimizers hold, and a
measured bf16 matmul rate.

    python benchmarks/benchmark_gpu.py --batch 256 --rounds 5 --json outputs/bench_gpu.json
    python benchmarks/benchmark_gpu.py --preset mae-vit-large-patch16 --no_fp32 --json outputs/bench_gpu_large.json
"""

import argparse
import contextlib
import copy
import json
import signal
import statistics
import time
from pathlib import Path

import torch
from benchmark import make_models, train_step_fn  # the shared module beside this script

PRESETS = ("mae-vit-base-patch16", "mae-vit-large-patch16", "mae-vit-huge-patch14")
BASELINES = ("hf_mae", "transformers_bf16")
DENSE_BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # datasheet, dense (no sparsity)


def train_gflop_per_image(config) -> float:
    """Matmul FLOPs of one MAE training step per image (forward + backward = 3x forward), as in the MFU of
    nanoGPT/PaLM: the encoder on the kept tokens (+ CLS), the decoder on all tokens, embeddings and head."""
    height, width = config.image_hw
    patches = (height // config.patch_size) * (width // config.patch_size)
    patch_dim = config.patch_size**2 * config.num_channels
    kept = int(patches * (1 - config.mask_ratio))

    def layers(tokens: int, width_: int, hidden: int, count: int) -> float:
        linear = 2 * tokens * (4 * width_**2 + 2 * width_ * hidden)  # qkv + proj, fc1 + fc2
        attention = 2 * 2 * tokens**2 * width_  # q @ k^T and weights @ v
        return count * (linear + attention)

    forward = (2 * kept * patch_dim * config.hidden_size  # patch embedding of the kept patches
               + layers(kept + 1, config.hidden_size, config.intermediate_size, config.num_hidden_layers)
               + 2 * (kept + 1) * config.hidden_size * config.decoder_hidden_size  # decoder embedding
               + layers(patches + 1, config.decoder_hidden_size, config.decoder_intermediate_size,
                        config.decoder_num_hidden_layers)
               + 2 * patches * config.decoder_hidden_size * patch_dim)  # prediction head
    return 3 * forward / 1e9


def card_peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS.items() if key in name), None)


def measured_matmul_tflops(device, size: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


@contextlib.contextmanager
def alarm_after(seconds: float | None):
    """Raises TimeoutError in the main thread after `seconds` (none: no limit), e.g. inside a long compile."""
    if seconds is None:
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"warm-up passed the deadline ({seconds:.0f} s left when it began)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, int(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def step_peak_mb(step, device) -> float | None:
    """Peak memory one step allocates above what is resident before it (weights, optimizer state)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    return (torch.cuda.max_memory_allocated() - resident) / 2**20


class SDPABackend(torch.nn.Module):
    """Runs a model's forward (and so its attention backward) with one scaled_dot_product_attention backend."""

    def __init__(self, model, backend: str):
        super().__init__()
        self.model, self.config, self.backend = model, model.config, backend

    def forward(self, **kwargs):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(getattr(SDPBackend, self.backend)):
            return self.model(**kwargs)


def with_encoder_attention(model, implementation: str):
    """The model with its encoder's attention layers (only) on another implementation."""
    encoder_config = copy.copy(model.config)
    encoder_config._attn_implementation = implementation
    for module in model.encoder.modules():
        if hasattr(module, "qkv"):  # MAEAttention reads its implementation from its config
            module.config = encoder_config
    return model


def build_variants(args, device) -> dict:
    """Variants in warm-up order: the baselines first, then the optional ones (the slowest compiles last)."""
    def ours(wrap=lambda model: model):  # a fresh hf_mae model (same seed, same weights) at its training defaults
        model = make_models(args.preset, device, transformers=False)[0]
        return train_step_fn(wrap(model), device, args.batch, torch.bfloat16, None, True)

    def theirs(wrap=lambda model: model, amp_dtype=torch.bfloat16, fused=True):
        return train_step_fn(wrap(make_models(args.preset, device)[1]), device, args.batch, amp_dtype, fused, False)

    variants = {"hf_mae": ours(), "transformers_bf16": theirs()}
    if not args.no_compile:
        variants["hf_mae_compiled"] = ours(torch.compile)
        variants["transformers_compiled"] = theirs(torch.compile)
    for implementation in args.attn_implementations:  # e.g. FlexAttention: Triton kernels generated per shape
        def with_implementation(model, implementation=implementation):
            model.config._attn_implementation = implementation
            return torch.compile(model)
        variants[f"hf_mae_compiled_{implementation}"] = ours(with_implementation)
    for mode in args.compile_modes:  # e.g. max-autotune: Triton matmul templates with fused epilogues
        variants[f"hf_mae_compiled_{mode}"] = ours(lambda model, mode=mode: torch.compile(model, mode=mode))
    for backend in args.sdpa_backends:  # torch picks cuDNN attention on Hopper by default; others may be faster
        variants[f"hf_mae_{backend.lower()}"] = ours(lambda model, backend=backend: SDPABackend(model, backend))
        if not args.no_compile:
            variants[f"hf_mae_compiled_{backend.lower()}"] = ours(
                lambda model, backend=backend: torch.compile(SDPABackend(model, backend)))
    if args.eager_encoder_attention:
        variants["hf_mae_compiled_eager_encoder_attention"] = ours(
            lambda model: torch.compile(with_encoder_attention(model, "eager")))
    if args.coordinate_descent_tuning:  # retunes block sizes of the LayerNorm/GELU/reduction kernels
        variants["hf_mae_compiled_coordinate_descent"] = ours(
            lambda model: torch.compile(model, options={"coordinate_descent_tuning": True}))
    if args.cudagraphs:
        variants["hf_mae_compiled_cudagraphs"] = ours(lambda model: torch.compile(model, mode="reduce-overhead"))
    if not args.no_fp32:  # what a transformers user gets: fp32, torch's default AdamW
        variants["transformers_defaults"] = theirs(amp_dtype=None, fused=False)
    return variants


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--preset", choices=PRESETS, default="mae-vit-base-patch16",
                        help="model (mae-vit-large-patch16: the paper's headline ViT-L/16)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measured rounds")
    parser.add_argument("--repeats", type=int, default=10, help="steps per variant per round (averaged)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps per variant (compilation included)")
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--no_fp32", action="store_true", help="skip transformers at its fp32 defaults")
    parser.add_argument("--sdpa_backends", nargs="*", default=[], choices=["FLASH_ATTENTION", "EFFICIENT_ATTENTION",
                        "CUDNN_ATTENTION", "MATH"], help="add hf_mae variants pinned to these attention backends")
    parser.add_argument("--attn_implementations", nargs="*", default=[], choices=["flex_attention", "eager"],
                        help="add compiled hf_mae variants with these attention implementations")
    parser.add_argument("--compile_modes", nargs="*", default=[],
                        choices=["max-autotune-no-cudagraphs", "max-autotune"],
                        help="add compiled hf_mae variants with these torch.compile modes")
    parser.add_argument("--deadline_s", type=float, default=None,
                        help="cut short optional variants still warming up (a slow compile included) this many seconds "
                             "from the start, keeping time for the measured rounds")
    parser.add_argument("--coordinate_descent_tuning", action="store_true",
                        help="add hf_mae compiled with Inductor's coordinate_descent_tuning")
    parser.add_argument("--eager_encoder_attention", action="store_true",
                        help="add hf_mae compiled with matmul+softmax attention in the encoder (50-token sequences)")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="add hf_mae under torch.compile(mode='reduce-overhead') (CUDA graphs)")
    parser.add_argument("--profile_dir", default=None,
                        help="after timing, profile two steps of each variant and write kernel tables here")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="dense bf16 peak of the card for MFU (known for H100/H200/A100)")
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--dry_run", action="store_true",
                        help="check the script on the CPU first: small preset, batch 2, no MFU or memory")
    args = parser.parse_args(argv)
    script_start = time.perf_counter()
    if args.deadline_s is not None and not hasattr(signal, "SIGALRM"):
        parser.error("--deadline_s needs SIGALRM (Linux or macOS)")
    if args.dry_run:
        args.preset = "mae-vit-mnist-patch4"
    if args.dry_run:
        device, name, peak, args.batch = torch.device("cpu"), "cpu (dry run)", None, 2
        info = {"gpu": name, "torch": torch.__version__, "batch": args.batch, "preset": args.preset}
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: this check needs a GPU (--dry_run checks the script on the CPU)")
    else:
        device = torch.device("cuda")
        name = torch.cuda.get_device_name()
        peak = card_peak_tflops(name, args.peak_tflops)
        info = {"gpu": name, "torch": torch.__version__, "batch": args.batch, "preset": args.preset,
                "peak_bf16_tflops": peak,
                "measured_matmul_bf16_tflops": round(measured_matmul_tflops(device), 1)}
    print(json.dumps(info), flush=True)

    from hf_mae import MAEConfig

    gflop = train_gflop_per_image(MAEConfig.from_preset(args.preset))
    info["train_gflop_per_image"] = round(gflop, 1)
    variants = build_variants(args, device)
    memory = {}
    for label, step in list(variants.items()):
        start = time.perf_counter()
        required = label in BASELINES  # the ratios need them: never dropped for time
        left = None if args.deadline_s is None or required else args.deadline_s - (start - script_start)
        try:
            if left is not None and left < 1:
                raise TimeoutError(f"--deadline_s {args.deadline_s:g} reached before its warm-up")
            with alarm_after(left):
                for _ in range(args.warmup):
                    step()
        except Exception as error:  # an optional variant that fails (compile, graphs, time) is reported, not fatal
            print(f"warm-up {label} FAILED, dropped: {type(error).__name__}: {str(error)[:300]}", flush=True)
            del variants[label]
            continue
        print(f"warm-up {label}: {time.perf_counter() - start:.1f} s", flush=True)
        memory[label] = step_peak_mb(step, device)
    times = {label: [] for label in variants}
    for _ in range(args.rounds):
        for label, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.repeats):
                step()  # each step ends with a device synchronize
            times[label].append((time.perf_counter() - start) / args.repeats)

    results = {"machine": info, "variants": {}}
    for label, seconds in times.items():
        median = statistics.median(seconds)
        images_per_s = args.batch / median
        row = {"step_s": median, "images_per_s": images_per_s, "step_peak_mb": memory[label],
               "mfu": images_per_s * gflop * 1e9 / (peak * 1e12) if peak else None}
        for baseline in ("transformers_bf16", "transformers_defaults"):
            if baseline in times and baseline != label:  # median of per-round ratios, as in benchmark.py
                row[f"speedup_vs_{baseline}"] = statistics.median(b / a for a, b in zip(seconds, times[baseline]))
        results["variants"][label] = row

    print(f"\n{name}, {args.preset} training step, batch {args.batch}, median of {args.rounds} rounds")
    print("| variant | step | images/s | MFU | vs transformers bf16 | vs transformers defaults | step peak memory |")
    print("|---|---|---|---|---|---|---|")
    for label, row in results["variants"].items():
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        vs = [f"{row[key]:.2f}x" if key in row else "-"
              for key in ("speedup_vs_transformers_bf16", "speedup_vs_transformers_defaults")]
        memory = f"{row['step_peak_mb']:.0f} MB" if row["step_peak_mb"] is not None else "-"
        print(f"| {label} | {row['step_s'] * 1000:.1f} ms | {row['images_per_s']:.0f} | {mfu} | {vs[0]} | {vs[1]} | "
              f"{memory} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.profile_dir:
        profile(variants, device, Path(args.profile_dir))
    return results


def profile(variants: dict, device, folder: Path) -> None:
    """Kernel tables per variant (sorted by device time) and whether the host keeps the device busy."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    folder.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for label, step in variants.items():
        start = time.perf_counter()
        with torch_profile(activities=activities) as prof:
            for _ in range(2):
                step()
        wall = (time.perf_counter() - start) / 2
        events = prof.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        device_ms = sum(e.self_device_time_total for e in kernels) / 1000 / 2
        split = {}
        for kernel in kernels:
            category = kernel_category(kernel.key)
            split[category] = split.get(category, 0.0) + kernel.self_device_time_total / 1000 / 2
        summary = ", ".join(f"{name} {ms:.1f}" for name, ms in sorted(split.items(), key=lambda item: -item[1]))
        table = events.table(sort_by=sort_key, row_limit=60, max_name_column_width=70)
        (folder / f"profile_{label}.txt").write_text(f"device ms per step by kind: {summary}\n{table}")
        print(f"profile {label}: wall {wall * 1000:.1f} ms/step, device kernels {device_ms:.1f} ms/step "
              f"({summary})", flush=True)


def kernel_category(name: str) -> str:
    """Rough kind of a GPU kernel from its name, to split a step's device time."""
    lowered = name.lower()
    if any(key in lowered for key in ("sdpa", "flash", "fmha", "attention", "flex", "cudnn::fusion")):
        return "attention"
    if any(key in lowered for key in ("nvjet", "gemm", "cutlass", "xmma", "triton_tem")):
        return "matmul"
    if "triton" in lowered:
        return "fused elementwise/norm"
    if "adam" in lowered or "multi_tensor" in lowered:
        return "optimizer"
    return "other"


if __name__ == "__main__":
    main()
