"""Decode cut manifests with a trained model and score them (WER, or CER with --unit char).

    asrkit decode --exp-dir exp/ctc --cuts data/fbank/synth-en_cuts_test.jsonl.gz \\
        --method greedy prefix-beam --beam 4 --epoch 10 --avg 3

Writes ``recogs-*``, ``errs-*`` and ``wer-summary-*`` under ``exp_dir/<method>/`` and prints one
summary line per (manifest, method).
"""

import logging
from pathlib import Path
from typing import Dict, List

import torch

from asrkit.data.datamodule import DataConfig, eval_dataloader
from asrkit.data.features import load_cuts
from asrkit.decoding.ctc import ctc_greedy_search, ctc_prefix_beam_search
from asrkit.models import load_model
from asrkit.scoring import summary_line, write_results
from asrkit.text.tokenizer import load_tokenizer
from asrkit.training.checkpoint import average_checkpoints, epoch_checkpoints

log = logging.getLogger(__name__)

METHODS = ("greedy", "prefix-beam")


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--cuts", nargs="+", required=True)
    p.add_argument("--method", nargs="+", default=["greedy"], choices=METHODS)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--epoch", type=int, default=None, help="last epoch to use (default: model.pt or newest)")
    p.add_argument("--avg", type=int, default=1, help="average this many epochs ending at --epoch")
    p.add_argument("--unit", choices=["word", "char"], default="word")
    p.add_argument("--max-duration", type=float, default=300.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def averaged_model(exp_dir: Path, epoch: int, avg: int, device: str):
    model = load_model(exp_dir, device="cpu")
    if epoch is not None:
        paths = epoch_checkpoints(exp_dir, epoch, avg)
        model.load_state_dict(average_checkpoints(paths))
        log.info("averaged %s", [p.name for p in paths])
    return model.to(device).eval()


@torch.no_grad()
def recognise(model, tokenizer, dl, methods: List[str], beam: int, device: str) -> Dict[str, List]:
    """Return method -> [(cut_id, ref, hyp)]."""
    out = {m: [] for m in methods}
    for batch in dl:
        log_probs, lens = model.ctc_log_probs(batch["feats"].to(device), batch["feat_lens"].to(device))
        log_probs, lens = log_probs.cpu(), lens.cpu()
        for m in methods:
            if m == "greedy":
                hyps = ctc_greedy_search(log_probs, lens, blank_id=tokenizer.blank_id)
            else:
                hyps = ctc_prefix_beam_search(log_probs, lens, beam=beam, blank_id=tokenizer.blank_id)
            out[m] += [(cid, ref, tokenizer.decode(h)) for cid, ref, h in zip(batch["cut_ids"], batch["texts"], hyps)]
    return out


def run(args):
    exp_dir = Path(args.exp_dir)
    tokenizer = load_tokenizer(exp_dir / "lang")
    model = averaged_model(exp_dir, args.epoch, args.avg, args.device)
    tag = f"epoch-{args.epoch}-avg-{args.avg}" if args.epoch is not None else "final"
    data_cfg = DataConfig(num_workers=0)
    lines = []
    for path in args.cuts:
        test_set = Path(path).name.removesuffix(".jsonl.gz")
        dl = eval_dataloader(data_cfg, load_cuts(path), max_duration=args.max_duration)
        for method, results in recognise(model, tokenizer, dl, args.method, args.beam, args.device).items():
            name = f"{test_set}-{tag}" + (f"-beam{args.beam}" if method != "greedy" else "")
            stats = write_results(exp_dir / method, name, results, unit=args.unit)
            lines.append(f"{test_set:<32} {method:<12} {summary_line(stats, args.unit)}")
    print("\n".join(lines))
