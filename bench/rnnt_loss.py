"""RNN-T loss bench: the pruned pipeline vs the full loss (ours and warprnnt_numba's), same run, same inputs.

Why this exists: the pruned loss replaces k2's CUDA kernels for our users' training, so we need to know what
it costs against the full loss (k2 reports 6-7x faster and 5.7x less memory on GPU) and how our pure-PyTorch
recursion compares with a compiled one (warprnnt_numba) on the same full loss.

    python bench/rnnt_loss.py --quick                          # ~1 min on 2 CPU cores
    python bench/rnnt_loss.py                                  # B=8, T=300, U=80, V=500, C=512 (CPU: minutes)
    python bench/rnnt_loss.py --device cuda --batch 30 --frames 400 --symbols 100

What one training step includes (forward + backward, from encoder/decoder outputs ``enc (B, T, C)`` and
``dec (B, U + 1, C)``, random leaf tensors standing in for the networks):
  pruned: simple projections (C -> V) + rnnt_loss_smoothed (return_grad) + get_rnnt_prune_ranges +
          encoder_proj/decoder_proj (C -> C) + do_rnnt_pruning + joiner (tanh + Linear C -> V) on
          (B, T, s_range) + rnnt_loss_pruned; the loss is simple + pruned, as in training.
  full:   encoder_proj/decoder_proj + joiner on all (B, T, U + 1) cells + rnnt_loss (ours).
  numba:  the same joiner + warprnnt_numba's RNNTLossNumba (on CPU it log-softmaxes the logits itself).
Then the losses alone on given logits (full: ours vs numba; pruned: ours on (B, T, s_range, V)).
Peak memory is what the step allocates above what was live before it: on CUDA from
``torch.cuda.max_memory_allocated``, on CPU (Linux) from the resident-set high-water mark (a separate run).

Measured (CPU, 1 thread, torch 2.13, shared 2-core box with load average 3-5, so times are +-30%):
  --quick (B=4, T=100, U=25, V=200, C=256), 35 s in all:
      step: pruned 32 ms / 16 MiB, full 95 ms / 32 MiB -> full/pruned 2.9x time, 2.0x memory
      loss only: ours 11.5 ms / 9 MiB, warprnnt_numba 2.7 s / 42 MiB; pruned loss 3.5 ms / 4 MiB
  default (B=8, T=300, U=80, V=500, C=512), 4 min 17 s in all (mostly warprnnt_numba), idle box, load 1.0:
      step: pruned 404 ms / 158 MiB, full 4625 ms / 1157 MiB -> full/pruned 11.45x time, 7.31x memory
      loss only: ours 539 ms / 389 MiB (mostly the gradient, 371 MiB), warprnnt_numba 32.0 s / 1511 MiB
      (59.3x, 3.88x); pruned loss 22.9 ms / 44 MiB; full step ours vs numba 7.88x, 1.63x
  Both losses equal warprnnt_numba's to the printed digits. warprnnt_numba's CPU path is a Python loop per
  lattice cell (its CUDA kernels are the compiled part), so "ours vs numba" on CPU mostly measures that loop.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from asrkit.losses.rnnt import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_smoothed,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(fns: Dict[str, Tuple[Callable[[], None], int]], device: torch.device,
                 warmup: int) -> Dict[str, float]:
    """Median seconds per call of each fn (name -> (fn, runs)), timed in interleaved rounds so that a busy
    shared machine slows every variant alike."""
    for fn, _ in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(max(runs for _, runs in fns.values())):
        for name, (fn, runs) in fns.items():
            if r < runs:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes fn() needs at its peak above what was live when it started.

    CUDA: the caching allocator's peak. CPU (Linux, glibc): the process's resident-set high-water mark, reset
    just before through ``/proc/self/clear_refs``, after :func:`mmap_large_blocks` and ``malloc_trim``; it
    counts pages, so it reads ~10-20 MiB above the tensors' bytes. (torch.profiler's memory events would also do,
    but warprnnt_numba's CPU path runs a Python loop per lattice cell: millions of profiled ops.)
    """
    _sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated() - base
    gc.collect()
    _libc().malloc_trim(0)  # give freed heap pages back: reusing them must show as new resident pages
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current VmRSS
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def _libc():
    import ctypes

    return ctypes.CDLL("libc.so.6")


def mmap_large_blocks() -> None:
    """Make glibc serve new blocks >= 64 KiB with mmap, so freeing one lowers the resident set at once
    (otherwise freed tensors stay in the heap and the next step reuses them without new pages)."""
    _libc().mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD; also turns off its dynamic raising


class Joiner(nn.Module):
    """icefall's joiner shape: projections to the joiner dim, tanh of the sum, Linear to the vocabulary."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.encoder_proj = nn.Linear(dim, dim)
        self.decoder_proj = nn.Linear(dim, dim)
        self.output_linear = nn.Linear(dim, vocab)
        self.simple_am_proj = nn.Linear(dim, vocab)
        self.simple_lm_proj = nn.Linear(dim, vocab)

    def full_logits(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        h = self.encoder_proj(enc).unsqueeze(2) + self.decoder_proj(dec).unsqueeze(1)  # (B, T, U + 1, C)
        return self.output_linear(torch.tanh(h))


def make_inputs(args, device: torch.device):
    g = torch.Generator().manual_seed(0)
    B, T, U, V, C = args.batch, args.frames, args.symbols, args.vocab, args.dim
    enc = torch.randn(B, T, C, generator=g).to(device).requires_grad_()
    dec = torch.randn(B, U + 1, C, generator=g).to(device).requires_grad_()
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32).to(device)
    # lengths between 70% and 100% of the padded size, the longest one padded to the maximum
    t_lens = (T * (0.7 + 0.3 * torch.rand(B, generator=g))).int().clamp(1, T)
    u_lens = (U * (0.7 + 0.3 * torch.rand(B, generator=g))).int().clamp(0, U)
    t_lens[0], u_lens[0] = T, U
    joiner = Joiner(C, V).to(device)
    return enc, dec, targets, t_lens.to(device), u_lens.to(device), joiner


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="1 by default: on a shared 2-core box, 2-thread runs of the scans (thousands of small ops) "
                        "slow down 10-30x whenever the other core is busy")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--symbols", type=int, default=80)
    p.add_argument("--vocab", type=int, default=500)
    p.add_argument("--dim", type=int, default=512, help="encoder/decoder/joiner dim C")
    p.add_argument("--s-range", type=int, default=5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="B=4, T=100, U=25, V=200, C=256: about a minute on 2 cores")
    p.add_argument("--skip-numba", action="store_true")
    p.add_argument("--numba-runs", type=int, default=1,
                   help="timed runs of warprnnt_numba (its CPU path is a Python loop per lattice cell: slow)")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.frames, args.symbols, args.vocab, args.dim = 4, 100, 25, 200, 256
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    enc, dec, targets, t_lens, u_lens, joiner = make_inputs(args, device)
    B, T, U = args.batch, args.frames, args.symbols
    boundary = torch.stack((torch.zeros_like(u_lens), torch.zeros_like(u_lens), u_lens, t_lens), 1).long()
    symbols = targets.long()

    def zero() -> None:
        enc.grad = dec.grad = None
        joiner.zero_grad(set_to_none=True)

    def pruned_step() -> None:
        lm, am = joiner.simple_lm_proj(dec), joiner.simple_am_proj(enc)
        simple, (px_grad, py_grad) = rnnt_loss_smoothed(lm, am, symbols, 0, lm_only_scale=0.25, am_only_scale=0.0,
                                                        boundary=boundary, reduction="sum", return_grad=True)
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, args.s_range)
        am_p, lm_p = do_rnnt_pruning(joiner.encoder_proj(enc), joiner.decoder_proj(dec), ranges)
        logits = joiner.output_linear(torch.tanh(am_p + lm_p))
        pruned = rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, reduction="sum")
        (simple + pruned).backward()
        zero()

    def full_step() -> None:
        rnnt_loss(joiner.full_logits(enc, dec), targets, t_lens, u_lens, reduction="sum").backward()
        zero()

    # the losses alone, on fixed logits
    with torch.no_grad():
        logits_full = joiner.full_logits(enc, dec)
        lm, am = joiner.simple_lm_proj(dec), joiner.simple_am_proj(enc)
        _, (pxg, pyg) = rnnt_loss_smoothed(lm, am, symbols, 0, boundary=boundary, return_grad=True)
        ranges = get_rnnt_prune_ranges(pxg, pyg, boundary, args.s_range)
        logits_pruned = logits_full.gather(2, ranges.unsqueeze(3).expand(*ranges.shape, args.vocab))
    logits_full.requires_grad_()
    logits_pruned.requires_grad_()

    def loss_full() -> None:
        rnnt_loss(logits_full, targets, t_lens, u_lens, reduction="sum").backward()
        logits_full.grad = None

    def loss_pruned() -> None:
        rnnt_loss_pruned(logits_pruned, symbols, ranges, 0, boundary, reduction="sum").backward()
        logits_pruned.grad = None

    numba = None
    if not args.skip_numba:
        try:
            from warprnnt_numba import RNNTLossNumba
        except ImportError:
            print("warprnnt_numba not installed: skipping it (pip install warprnnt_numba numba)")
        else:
            numba_loss = RNNTLossNumba(blank=0, reduction="sum")
            t32, u32 = t_lens.int(), u_lens.int()

            # numba's OpenMP layer resets the intra-op thread count that torch shares with it: restore ours
            def numba_step() -> None:
                numba_loss(joiner.full_logits(enc, dec), targets, t32, u32).backward()
                torch.set_num_threads(args.threads)
                zero()

            def numba_only() -> None:
                numba_loss(logits_full, targets, t32, u32).backward()
                torch.set_num_threads(args.threads)
                logits_full.grad = None

            numba = (numba_step, numba_only)
            with torch.no_grad():  # same loss on the same logits
                ours = rnnt_loss(logits_full, targets, t_lens, u_lens, reduction="sum").item()
                theirs = numba_loss(logits_full, targets, t32, u32).item()
            torch.set_num_threads(args.threads)
            print(f"check: full loss ours {ours:.4f}, warprnnt_numba {theirs:.4f} "
                  f"(rel. diff {abs(ours - theirs) / abs(theirs):.1e})")

    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"B={B} T={T} U={U} V={args.vocab} C={args.dim} s_range={ranges.shape[2]}")
    fns: Dict[str, Tuple[Callable[[], None], int]] = {
        "step pruned": (pruned_step, args.runs), "step full": (full_step, args.runs),
        "loss full": (loss_full, args.runs), "loss pruned": (loss_pruned, args.runs)}
    if numba is not None:
        fns["step numba"], fns["loss numba"] = (numba[0], args.numba_runs), (numba[1], args.numba_runs)
    times = median_times(fns, device, args.warmup)  # all timings first: the memory runs change the CPU allocator
    mems = {name: float("nan") for name in fns}
    if not args.skip_memory:
        if device.type == "cpu":
            mmap_large_blocks()
        mems = {name: peak_bytes(fn, device) / 2**20 for name, (fn, _) in fns.items()}
    labels = {"step": "training step (joiner + loss)", "loss": "loss only, given logits"}
    for name in fns:
        kind, which = name.split()
        print(f"  {which:6s} {labels[kind]:30s}: {times[name] * 1e3:9.1f} ms fwd+bwd, peak {mems[name]:9.1f} MiB"
              f"  (median of {fns[name][1]})")
    if device.type == "cpu":
        print(f"  (load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    results = {tuple(name.split()): (times[name], mems[name]) for name in fns}

    def ratio(a: Tuple[str, str], b: Tuple[str, str], i: int) -> str:
        if a not in results or b not in results or not results[b][i] > 0:
            return "n/a"
        return f"{results[a][i] / results[b][i]:.2f}x"

    print("ratios (time, memory):")
    print(f"  full / pruned, training step       : {ratio(('step', 'full'), ('step', 'pruned'), 0)}, "
          f"{ratio(('step', 'full'), ('step', 'pruned'), 1)}")
    print(f"  warprnnt_numba / ours, full step   : {ratio(('step', 'numba'), ('step', 'full'), 0)}, "
          f"{ratio(('step', 'numba'), ('step', 'full'), 1)}")
    print(f"  warprnnt_numba / ours, loss only   : {ratio(('loss', 'numba'), ('loss', 'full'), 0)}, "
          f"{ratio(('loss', 'numba'), ('loss', 'full'), 1)}")
    print(f"  full / pruned, loss only           : {ratio(('loss', 'full'), ('loss', 'pruned'), 0)}, "
          f"{ratio(('loss', 'full'), ('loss', 'pruned'), 1)}")


if __name__ == "__main__":
    main(sys.argv[1:])
