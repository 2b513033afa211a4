"""Decode cut manifests with a trained model and score them (WER, or CER with --unit char).

    asrkit decode --exp-dir exp/transducer --cuts data/fbank/synth-en_cuts_test.jsonl.gz \\
        --method greedy-search modified-beam-search --beam 4 --epoch 10 --avg 3 --use-averaged-model

Methods (``asrkit.decoding.search``): ctc-greedy, ctc-prefix-beam, greedy-search,
modified-beam-search, beam-search, ctc-rescoring, attention-beam-search, joint-ctc-attention,
attention-rescoring.
Writes ``recogs-*``, ``errs-*`` and ``wer-summary-*`` under ``exp_dir/<method>/`` and prints one
summary line per (manifest, method).

Multi-talker test sets (serialized output training): when a manifest's references contain ``<sc>``
(mixtures: ``asrkit.data.datamodule.cut_text`` serializes their speakers), or with ``--sot``, the
same three files are also written under ``exp_dir/<method>/sot/`` with the SOT figures
(``asrkit.scoring.write_sot_results``: cpWER, concatenated WER, speaker-count accuracy; CER with
``--unit char``), which are printed too. A subfolder, not a suffix, so that globs over
``<method>/wer-summary-*`` (``asrkit scaling``, results tables) keep finding one plain summary each.
The plain files score the SOT string as it is: ``<sc>`` counts as a word (with ``--unit char``, as
its four characters).

    asrkit decode --exp-dir exp/aed_sot --method attention-beam-search --beam 4 --unit word \\
        --cuts data/fbank/synth-en-2spk_cuts_test.jsonl.gz
"""

import logging
import re
from pathlib import Path
from typing import Dict, List

import torch

from asrkit.data.datamodule import DataConfig, eval_dataloader
from asrkit.data.features import load_cuts
from asrkit.decoding.search import METHODS, SearchOptions, check_methods, decode_texts
from asrkit.models import load_model
from asrkit.scoring import sot_summary_lines, summary_line, write_results, write_sot_results
from asrkit.text.sot import SC
from asrkit.text.tokenizer import load_tokenizer
from asrkit.training.checkpoint import averaged_state_dict

log = logging.getLogger(__name__)


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--cuts", nargs="+", required=True)
    p.add_argument("--method", nargs="+", default=["greedy-search"], choices=list(METHODS))
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--max-sym-per-frame", type=int, default=1, help="greedy-search")
    p.add_argument("--ctc-weight", type=float, default=0.3, help="ctc-rescoring, joint-ctc-attention")
    p.add_argument("--attention-weight", type=float, default=1.0, help="attention-rescoring")
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="attention-beam-search, joint-ctc-attention: score added per output token (a bonus if > 0)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="llm-*")
    add_checkpoint_args(p)
    p.add_argument("--unit", choices=["word", "char"], default="word")
    p.add_argument("--sot", action="store_true",
                   help=f"SOT scoring (cpWER, concatenated WER, speaker count) for every manifest, not only for "
                        f"those whose references contain {SC}")
    p.add_argument("--max-duration", type=float, default=300.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_checkpoint_args(p):
    """--epoch/--avg/--use-averaged-model, shared with ``asrkit export``."""
    p.add_argument("--epoch", type=int, default=None, help="last epoch to use (default: model.pt or newest)")
    p.add_argument("--avg", type=int, default=1, help="average over this many epochs ending at --epoch")
    p.add_argument("--use-averaged-model", action="store_true",
                   help="average the running model averages of epochs epoch-avg and epoch (icefall's default)")


def averaged_model(exp_dir: Path, epoch, avg: int, device: str, use_averaged_model: bool = False):
    model = load_model(exp_dir, device="cpu")
    if epoch is not None:
        model.load_state_dict(averaged_state_dict(exp_dir, epoch, avg, use_averaged_model))
        log.info("weights: epoch %d, avg %d%s", epoch, avg, ", running average" if use_averaged_model else "")
    return model.to(device).eval()


@torch.no_grad()
def recognise(model, tokenizer, dl, methods: List[str], opts: SearchOptions, device: str) -> Dict[str, List]:
    """Return method -> [(cut_id, ref, hyp)]."""
    check_methods(model, methods)
    out = {m: [] for m in methods}
    for batch in dl:
        hyps = decode_texts(model, tokenizer, batch["feats"].to(device), batch["feat_lens"].to(device), methods, opts)
        for m in methods:
            out[m] += list(zip(batch["cut_ids"], batch["texts"], hyps[m]))
    return out


def spaced_sc(text: str) -> str:
    """``text`` with every ``<sc>`` a word of its own: a character model may emit it glued (``ab<sc>cd``)."""
    return " ".join(re.sub(rf"\s*{re.escape(SC)}\s*", f" {SC} ", text).split())


def write_scores(out_dir: Path, name: str, results: List, unit: str, sot: bool = False) -> List[str]:
    """Write the plain scores of ``(cut_id, ref, hyp)`` results (and the SOT ones when ``sot`` or a
    reference has ``<sc>``) under ``out_dir``; return the summary lines to print."""
    results = [(cut_id, ref, spaced_sc(hyp)) for cut_id, ref, hyp in results]
    lines = [summary_line(write_results(out_dir, name, results, unit=unit), unit)]
    if sot or any(SC in ref for _, ref, _ in results):
        lines += sot_summary_lines(write_sot_results(out_dir / "sot", name, results, unit=unit), unit)
    return lines


def run(args):
    exp_dir = Path(args.exp_dir)
    tokenizer = load_tokenizer(exp_dir / "lang") if (exp_dir / "lang").is_dir() else None  # none: speech-LLM
    model = averaged_model(exp_dir, args.epoch, args.avg, args.device, args.use_averaged_model)
    check_methods(model, args.method)
    opts = SearchOptions(beam=args.beam, max_sym_per_frame=args.max_sym_per_frame, ctc_weight=args.ctc_weight,
                         attention_weight=args.attention_weight, length_penalty=args.length_penalty,
                         max_new_tokens=args.max_new_tokens)
    tag = "final" if args.epoch is None else f"epoch-{args.epoch}-avg-{args.avg}" + (
        "-use-averaged-model" if args.use_averaged_model else "")
    data_cfg = DataConfig(num_workers=0)
    lines = []
    for path in args.cuts:
        test_set = Path(path).name.removesuffix(".jsonl.gz")
        dl = eval_dataloader(data_cfg, load_cuts(path), max_duration=args.max_duration)
        for method, results in recognise(model, tokenizer, dl, args.method, opts, args.device).items():
            beam = "" if method in ("ctc-greedy", "greedy-search", "llm-greedy") else f"-beam{args.beam}"
            if args.length_penalty and method in ("attention-beam-search", "joint-ctc-attention"):
                beam += f"-lp{args.length_penalty:g}"  # results of other penalties are kept beside
            scores = write_scores(exp_dir / method, f"{test_set}-{tag}{beam}", results, args.unit, args.sot)
            lines += [f"{test_set:<32} {method:<22} {score}" for score in scores]
    print("\n".join(lines))
