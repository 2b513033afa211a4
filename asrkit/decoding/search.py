"""One entry point for every decoding method of an :class:`~asrkit.models.asr.AsrModel`.

``asrkit decode`` and ``asrkit transcribe`` both call :func:`decode_batch`, which runs the encoder
once per batch and then each requested method on its output::

    hyps = decode_batch(model, feats, feat_lens, ["greedy-search", "modified-beam-search"], SearchOptions(beam=4))
    hyps["greedy-search"]   # token ids per utterance

Methods and the head they need:

=========================  ==========================================================================
ctc-greedy                 CTC: best token per frame, repeats and blanks removed
ctc-prefix-beam            CTC: prefix beam search
greedy-search              transducer: batched greedy search (``max_sym_per_frame`` symbols a frame)
modified-beam-search       transducer: batched beam search, at most one symbol per frame
beam-search                transducer: standard beam search (Graves 2012), one utterance at a time
ctc-rescoring              transducer n-best (modified beam search) rescored with + w * CTC log-lik.
attention-beam-search      attention decoder: autoregressive beam search
joint-ctc-attention        attention beam search with CTC prefix scores, (1 - w) att + w ctc
attention-rescoring        transducer n-best rescored with + w * attention-decoder log-likelihood
llm-greedy                 speech-LLM: greedy generation through the LLM's ``generate``
llm-beam-search            speech-LLM: beam search through ``generate``
=========================  ==========================================================================

:func:`decode_texts` turns any of them into text: token ids through the experiment's tokenizer, or
the speech-LLM's own strings.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from asrkit.decoding.attention import attention_beam_search, attention_rescore
from asrkit.decoding.ctc import ctc_greedy_search, ctc_prefix_beam_search
from asrkit.decoding.transducer import beam_search, ctc_rescore, greedy_search, modified_beam_search

METHODS = {
    "ctc-greedy": "ctc",
    "ctc-prefix-beam": "ctc",
    "greedy-search": "transducer",
    "modified-beam-search": "transducer",
    "beam-search": "transducer",
    "ctc-rescoring": "transducer+ctc",
    "attention-beam-search": "attention",
    "joint-ctc-attention": "attention+ctc",
    "attention-rescoring": "transducer+attention",
    "llm-greedy": "llm",
    "llm-beam-search": "llm",
}


@dataclass
class SearchOptions:
    beam: int = 4
    max_sym_per_frame: int = 1  # greedy-search
    ctc_weight: float = 0.3  # ctc-rescoring and joint-ctc-attention: weight of the CTC score
    attention_weight: float = 1.0  # attention-rescoring: weight of the attention log-likelihood
    length_penalty: float = 0.0  # attention-beam-search
    max_new_tokens: int = 200  # llm-*


def default_method(model) -> str:
    """What ``asrkit transcribe`` uses without ``--method``: transducer greedy, else CTC, else AED."""
    if hasattr(model, "llm"):
        return "llm-greedy"
    if model.transducer is not None:
        return "greedy-search"
    return "ctc-greedy" if model.ctc is not None else "attention-beam-search"


def check_methods(model, methods: Sequence[str]) -> None:
    """Raise a clear error for an unknown method or one whose head the model lacks."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown decoding method {m!r}; choose from {', '.join(METHODS)}")
        missing = [h for h in METHODS[m].split("+") if getattr(model, h, None) is None]
        if missing == ["llm"]:
            raise ValueError(f"method {m!r} is for speech-LLM models; this is an AsrModel")
        if hasattr(model, "llm") and METHODS[m] != "llm":
            raise ValueError(f"method {m!r} needs an AsrModel head; a speech-LLM decodes with llm-greedy or "
                             f"llm-beam-search")
        if missing:
            raise ValueError(f"method {m!r} needs the {' and '.join(missing)} head(s), which this model does not "
                             f"have (its config sets model.{missing[0]}_weight to 0)")


@torch.no_grad()
def decode_texts(model, tokenizer, feats: torch.Tensor, feat_lens: torch.Tensor, methods: Sequence[str],
                 opts: SearchOptions = SearchOptions()) -> Dict[str, List[str]]:
    """Text per utterance for each method (``tokenizer`` unused for a speech-LLM: it has its own)."""
    check_methods(model, methods)
    if hasattr(model, "llm"):
        return {m: model.generate(feats, feat_lens, max_new_tokens=opts.max_new_tokens,
                                  num_beams=1 if m == "llm-greedy" else opts.beam) for m in methods}
    hyps = decode_batch(model, feats, feat_lens, methods, opts)
    return {m: [tokenizer.decode(h) for h in hyps[m]] for m in methods}


@torch.no_grad()
def decode_batch(model, feats: torch.Tensor, feat_lens: torch.Tensor, methods: Sequence[str],
                 opts: SearchOptions = SearchOptions()) -> Dict[str, List[List[int]]]:
    """Token ids per utterance for each method; the encoder runs once."""
    check_methods(model, methods)
    enc, enc_lens = model.forward_encoder(feats, feat_lens)  # (N, T, D), (N,)
    needs_ctc = any("ctc" in METHODS[m].split("+") for m in methods)
    ctc_lp = model.ctc(enc) if needs_ctc else None  # (N, T, V)
    blank = model.cfg.blank_id
    nbest = None
    if any(m in ("ctc-rescoring", "attention-rescoring") for m in methods):
        nbest = modified_beam_search(model.transducer, enc, enc_lens, beam=opts.beam, return_nbest=True)
    out = {}
    for m in methods:
        if m == "ctc-greedy":
            out[m] = ctc_greedy_search(ctc_lp, enc_lens, blank_id=blank)
        elif m == "ctc-prefix-beam":
            out[m] = ctc_prefix_beam_search(ctc_lp, enc_lens, beam=opts.beam, blank_id=blank)
        elif m == "greedy-search":
            out[m] = greedy_search(model.transducer, enc, enc_lens, max_sym_per_frame=opts.max_sym_per_frame)
        elif m == "modified-beam-search":
            out[m] = modified_beam_search(model.transducer, enc, enc_lens, beam=opts.beam)
        elif m == "beam-search":
            out[m] = beam_search(model.transducer, enc, enc_lens, beam=opts.beam)
        elif m == "ctc-rescoring":
            out[m] = ctc_rescore(nbest, ctc_lp, enc_lens, blank_id=blank, weight=opts.ctc_weight)
        elif m == "attention-beam-search":
            out[m] = attention_beam_search(model.attention, enc, enc_lens, beam=opts.beam,
                                           length_penalty=opts.length_penalty, blank_id=blank)
        elif m == "joint-ctc-attention":
            out[m] = attention_beam_search(model.attention, enc, enc_lens, beam=opts.beam,
                                           length_penalty=opts.length_penalty, ctc_log_probs=ctc_lp,
                                           ctc_weight=opts.ctc_weight, blank_id=blank)
        elif m == "attention-rescoring":
            out[m] = attention_rescore(model.attention, enc, enc_lens, nbest, weight=opts.attention_weight)
    return out
