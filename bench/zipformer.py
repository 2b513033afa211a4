"""Zipformer speed bench: forward+backward of the medium preset vs a float32 matmul, same run.

Why this exists: to know how close the pure-PyTorch Zipformer gets to the machine's matmul
throughput, and to choose the SwooshL/SwooshR backward strategy by measurement.

    python bench/zipformer.py                    # CPU, 2 threads, (4, 500, 80) batch
    python bench/zipformer.py --device cuda --amp bf16 --batch 16 --frames 1500

Prints: median step time, FLOPs counted by torch.utils.flop_counter (matmuls and convs only,
so elementwise work is not counted), achieved GFLOP/s, the same for an (n x n) float32 matmul,
their ratio; then the Swoosh variants (time and bytes kept for backward).

Measured (medium preset, training mode, batch_count 30000):
  CPU, 2 threads, torch 2.13 (quiet box), (4, 500, 80): 1.56 s/step, 196.8 GFLOP -> 126 GFLOP/s;
      1024^2 float32 matmul 180 GFLOP/s; fraction 0.70
  H100, torch 2.11+cu130, (16, 1500, 80): fp32 418 ms/step (5.8 TFLOP/s, peak 5.5 GiB) vs an
      8192^2 float32 matmul at 51 TFLOP/s, fraction 0.11; bf16 autocast 396 ms (peak 3.4 GiB)
On a shared 2-core box a busy second core can make 2-thread runs 10-100x slower; check `uptime`.
The SwooshL/R default in scaling.py (DEFAULT_SWOOSH_IMPL = "auto": uint8 on CUDA, recompute
elsewhere) follows from the variant table printed at the end (see the note there).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, List

import torch
from torch.utils.flop_counter import FlopCounterMode

from asrkit.models.zipformer import Zipformer, set_batch_count
from asrkit.models.zipformer import scaling


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], None], device: torch.device, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct tensors autograd keeps for backward while running fn()."""
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except Exception:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def bench_model(args, device: torch.device) -> None:
    torch.manual_seed(0)
    model = Zipformer.from_preset(args.preset).to(device).train()
    set_batch_count(model, 30000.0)  # past the warm-up schedules: the steady training regime
    feats = torch.randn(args.batch, args.frames, 80, device=device)
    lens = torch.full((args.batch,), args.frames, device=device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else nullcontext

    def step() -> None:
        with ctx():
            out, _ = model(feats, lens)
            loss = out.float().pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    # one checked step: finite loss and gradients (exercises the autocast paths with --amp)
    with ctx():
        out, _ = model(feats, lens)
        loss = out.float().pow(2).mean()
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not torch.isfinite(loss) or bad:
        raise RuntimeError(f"non-finite loss {loss.item()} or gradients in {bad[:5]}")
    model.zero_grad(set_to_none=True)

    flop_counter = FlopCounterMode(display=False)
    with flop_counter:
        step()
    flops = flop_counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = median_time(step, device, warmup=args.warmup, runs=args.runs)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")

    n = args.matmul_n
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t_mm = median_time(lambda: torch.mm(a, b), device, warmup=3, runs=max(args.runs, 10))
    mm_gflops = 2 * n**3 / t_mm / 1e9
    gflops = flops / t / 1e9
    nparams = sum(p.numel() for p in model.parameters())
    print(f"device={device} threads={torch.get_num_threads()} amp={args.amp} torch={torch.__version__}")
    print(f"zipformer {args.preset} ({nparams:,} params), batch ({args.batch}, {args.frames}, 80), forward+backward:")
    print(f"  median step {t * 1e3:.1f} ms over {args.runs} runs; {flops / 1e9:.1f} GFLOP counted -> {gflops:.1f} GFLOP/s"
          + (f"; peak CUDA memory {peak:.2f} GiB" if device.type == "cuda" else ""))
    print(f"  float32 matmul {n}x{n}: {t_mm * 1e3:.2f} ms -> {mm_gflops:.1f} GFLOP/s")
    print(f"  fraction of matmul throughput: {gflops / mm_gflops:.3f}")


def bench_swoosh(args, device: torch.device) -> None:
    print("SwooshL/R backward strategies (autograd = plain formula, recompute = keep x and recompute "
          "the derivative, uint8 = keep a dithered 1-byte derivative as icefall's fallback):")
    shape = (args.batch, args.frames, 1536)
    x0 = torch.randn(*shape, device=device) * 3
    g = torch.randn(*shape, device=device)
    results: List[str] = []
    for impl in scaling.SWOOSH_IMPLS:
        x = x0.clone().requires_grad_(True)

        def fwd_bwd(impl=impl, x=x) -> None:
            scaling.swoosh_op(x, "SwooshL", impl).backward(g)
            x.grad = None

        t = median_time(fwd_bwd, device, warmup=2, runs=args.runs * 2)
        nbytes = saved_bytes(lambda impl=impl, x=x: scaling.swoosh_op(x, "SwooshL", impl))
        y_ref = x0.clone().requires_grad_(True)
        scaling.swoosh(y_ref, "SwooshL").backward(g)
        xi = x0.clone().requires_grad_(True)
        scaling.swoosh_op(xi, "SwooshL", impl).backward(g)
        err = (xi.grad - y_ref.grad).abs().max().item()
        results.append(f"  {impl:9s} tensor {tuple(shape)}: {t * 1e3:7.1f} ms fwd+bwd, saved {nbytes / 2**20:7.1f} MiB, "
                       f"max grad error {err:.1e}")
    print("\n".join(results))

    # The same choice inside the front end (the only place that uses the SwooshL/R modules;
    # the encoder layers use ActivationDropoutAndLinear, which always recomputes).
    model = Zipformer.from_preset(args.preset).encoder_embed.to(device).train()
    feats = torch.randn(args.batch, args.frames, 80, device=device)
    lens = torch.full((args.batch,), args.frames, device=device)
    for impl in scaling.SWOOSH_IMPLS:
        for m in model.modules():
            if isinstance(m, (scaling.SwooshL, scaling.SwooshR)):
                m.impl = impl

        def step() -> None:
            out, _ = model(feats, lens)
            out.pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

        t = median_time(step, device, warmup=1, runs=args.runs)
        # Balancers/Whiten act at random and may keep extra tensors: same random draws per variant
        random.seed(0)
        torch.manual_seed(0)
        nbytes = saved_bytes(lambda: model(feats, lens)[0])
        peak = ""
        if device.type == "cuda":
            random.seed(0)
            torch.manual_seed(0)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            step()
            peak = f", peak CUDA memory above baseline {(torch.cuda.max_memory_allocated() - base) / 2**20:7.1f} MiB"
        print(f"  front end with {impl:9s}: {t * 1e3:7.1f} ms fwd+bwd, saved for backward {nbytes / 2**20:7.1f} MiB{peak}")

    # ActivationDropoutAndLinear (stores x only) vs the plain composition, feed-forward sized
    lin = scaling.ActivationDropoutAndLinear(1536, 512, activation="SwooshL", dropout_p=0.1, dropout_shared_dim=0).to(device).train()
    x = torch.randn(args.frames, args.batch, 1536, device=device, requires_grad=True)

    def plain() -> torch.Tensor:
        y = torch.nn.functional.dropout(scaling.swoosh(x, "SwooshL"), 0.1, training=True)
        return torch.nn.functional.linear(y, lin.weight, lin.bias)

    for name, fn in (("ActivationDropoutAndLinear", lambda: lin(x)), ("plain swoosh+dropout+linear", plain)):
        t = median_time(lambda fn=fn: fn().sum().backward(), device, warmup=2, runs=args.runs * 2)
        print(f"  {name:28s}: {t * 1e3:7.1f} ms fwd+bwd, saved {saved_bytes(fn) / 2**20:7.1f} MiB")


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--preset", default="medium")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=500)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--matmul-n", type=int, default=1024)
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--skip-swoosh", action="store_true")
    p.add_argument("--only-swoosh", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.only_swoosh:
        bench_model(args, device)
    if not args.skip_swoosh:
        bench_swoosh(args, device)


if __name__ == "__main__":
    main(sys.argv[1:])
