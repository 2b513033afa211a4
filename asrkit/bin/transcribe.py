"""Print the transcript of each audio file with a trained model.

    asrkit transcribe --exp-dir exp/ctc audio1.wav audio2.flac

Any sample rate or channel count is accepted (resampled to 16 kHz, channels averaged).
"""

from pathlib import Path

import torch
from lhotse import Recording

from asrkit.data.features import SAMPLE_RATE, fbank_extractor
from asrkit.decoding.ctc import ctc_greedy_search, ctc_prefix_beam_search
from asrkit.models import load_model
from asrkit.text.tokenizer import load_tokenizer


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--beam", type=int, default=0, help="prefix beam search with this beam (0: greedy)")
    p.add_argument("audio", nargs="+")


@torch.no_grad()
def transcribe_file(model, tokenizer, path: str, beam: int = 0) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        rec = Recording.from_file(path).resample(SAMPLE_RATE)
        audio = rec.load_audio().mean(axis=0)  # (S,)
    except Exception as e:
        raise RuntimeError(f"cannot read audio {path} ({type(e).__name__}: {e})") from e
    feats = torch.from_numpy(fbank_extractor().extract(audio, SAMPLE_RATE)).unsqueeze(0)  # (1, T, 80)
    log_probs, lens = model.ctc_log_probs(feats, torch.tensor([feats.shape[1]]))
    if beam > 0:
        ids = ctc_prefix_beam_search(log_probs, lens, beam=beam, blank_id=tokenizer.blank_id)[0]
    else:
        ids = ctc_greedy_search(log_probs, lens, blank_id=tokenizer.blank_id)[0]
    return tokenizer.decode(ids)


def run(args):
    model = load_model(args.exp_dir)
    tokenizer = load_tokenizer(Path(args.exp_dir) / "lang")
    for path in args.audio:
        print(f"{path}\t{transcribe_file(model, tokenizer, path, args.beam)}")
