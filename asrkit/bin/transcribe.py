"""Print the transcript of each audio file with a trained model.

    asrkit transcribe --exp-dir exp/transducer audio1.wav audio2.flac [--method modified-beam-search]

Any sample rate or channel count is accepted (resampled to 16 kHz, channels averaged).
"""

from pathlib import Path

import torch
from lhotse import Recording

import yaml

from asrkit.data.features import SAMPLE_RATE, feature_extractor
from asrkit.decoding.search import METHODS, SearchOptions, check_methods, decode_texts, default_method
from asrkit.models import load_model
from asrkit.text.tokenizer import load_tokenizer


def add_args(p):
    p.add_argument("--exp-dir", required=True)
    p.add_argument("--method", choices=list(METHODS), default=None,
                   help="default: greedy-search for transducers, ctc-greedy for CTC models")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("audio", nargs="+")


@torch.no_grad()
def transcribe_file(model, tokenizer, path: str, method: str, beam: int = 4, extractor=None) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        rec = Recording.from_file(path).resample(SAMPLE_RATE)
        audio = rec.load_audio().mean(axis=0)  # (S,)
    except Exception as e:
        raise RuntimeError(f"cannot read audio {path} ({type(e).__name__}: {e})") from e
    extractor = extractor or feature_extractor()
    feats = torch.from_numpy(extractor.extract(audio, SAMPLE_RATE)).unsqueeze(0)  # (1, T, C)
    return decode_texts(model, tokenizer, feats, torch.tensor([feats.shape[1]]), [method], SearchOptions(beam=beam))[method][0]


def run(args):
    model = load_model(args.exp_dir)
    lang = Path(args.exp_dir) / "lang"
    tokenizer = load_tokenizer(lang) if lang.is_dir() else None  # a speech-LLM has its own
    method = args.method or default_method(model)
    check_methods(model, [method])
    # the features the model was trained on (fbank, or Whisper log-mel), from the experiment's config
    data = yaml.safe_load((Path(args.exp_dir) / "config.yaml").read_text(encoding="utf-8")).get("data", {})
    extractor = feature_extractor(data.get("feature_type", "fbank"), data.get("num_mel_bins", 80))
    for path in args.audio:
        print(f"{path}\t{transcribe_file(model, tokenizer, path, method, args.beam, extractor)}")
