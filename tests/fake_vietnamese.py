"""Fake VIVOS, GigaSpeech 2 (vi) and Common Voice (vi) trees with each corpus's real layout and espeak-ng audio.

    wavs = speak_vi(tmp / "audio", [raw for raw, _ in SENTENCES])
    fake = make_fake_vivos(tmp / "vivos", wavs)
    fake.root            # what --corpus-dir points at
    fake.texts["test"]   # utt id -> the normalised transcript prepare must produce
    fake.speakers        # utt id -> speaker

Each tree also holds the faults real copies have (transcript lines without audio, audio without a
transcript line, a transcript that normalises to nothing); the ids are in ``fake.no_audio`` etc.
"""

from __future__ import annotations

import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile as sf

from asrkit.data.synth import SAMPLING_RATE, Speaker, resample, run_espeak

# (what the corpus file says, what prepare must make of it): NFC, lower case, punctuation gone, diacritics kept
SENTENCES: Tuple[Tuple[str, str], ...] = (
    ("KHÁCH SẠN NÀY RẤT ĐẸP", "khách sạn này rất đẹp"),
    ("Hôm nay, trời mưa to quá!", "hôm nay trời mưa to quá"),
    ("Tôi đi học lúc bảy giờ sáng.", "tôi đi học lúc bảy giờ sáng"),
    ("“Xin chào” – ông ĐỨC nói", "xin chào ông đức nói"),
    ("CHÚNG TA CÙNG ĐI ĂN PHỞ NHÉ", "chúng ta cùng đi ăn phở nhé"),
    ("Việt Nam có nhiều núi và sông", "việt nam có nhiều núi và sông"),
    ("MẸ TÔI NẤU CƠM RẤT NGON", "mẹ tôi nấu cơm rất ngon"),
    ("Bạn có khỏe không?", "bạn có khỏe không"),
    ("ĐÀ NẴNG LÀ MỘT THÀNH PHỐ ĐẸP", "đà nẵng là một thành phố đẹp"),
)
PUNCT_ONLY = "… ? !"  # a transcript with nothing to say: dropped after normalisation


def speak_vi(out_dir: Path, texts: Sequence[str], sample_rate: int = SAMPLING_RATE) -> List[Path]:
    """``espeak-ng -v vi`` reads each text (lower-cased, as espeak wants words) into ``out_dir/<n>.wav``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        speaker = Speaker(f"vi{i}", "vi", ("m1", "f2", "m3")[i % 3], 50, 170, 70)
        samples, sr = run_espeak(text.lower(), speaker)
        path = out_dir / f"{i:03d}.wav"
        sf.write(path, resample(samples, sr, sample_rate), sample_rate)
        paths.append(path)
    return paths


@dataclass
class FakeCorpus:
    root: Path  # what --corpus-dir points at
    texts: Dict[str, Dict[str, str]] = field(default_factory=dict)  # split -> utt id -> expected cut text
    speakers: Dict[str, str] = field(default_factory=dict)  # utt id -> speaker
    empty_text: List[str] = field(default_factory=list)  # audio present, transcript normalises to ""
    no_audio: List[str] = field(default_factory=list)  # transcript line, no audio file
    no_transcript: List[str] = field(default_factory=list)  # audio file, no transcript line


# ---------------------------------------------------------------------------------------------- VIVOS

def make_fake_vivos(root: Path, wavs: Sequence[Path]) -> FakeCorpus:
    """``root/{train,test}/{prompts.txt,genders.txt,waves/<SPK>/<SPK>_R<nnn>.wav}``, as vivos.tar.gz extracts.

    train: VIVOSSPK01 (m) and VIVOSSPK02 (f), two utterances each; test: VIVOSDEV01 (f), two. One train
    prompt is written decomposed (NFD) and the file has CRLF line ends. Faults in train: a wav whose
    prompt is only punctuation, a prompt without wav, a wav without prompt.
    """
    fake = FakeCorpus(Path(root))
    plan = {"train": [("VIVOSSPK01", "m", [0, 1]), ("VIVOSSPK02", "f", [2, 3])],
            "test": [("VIVOSDEV01", "f", [4, 5])]}
    for split, speakers in plan.items():
        d = fake.root / split
        lines, fake.texts[split] = [], {}
        for spk, _, idx in speakers:
            (d / "waves" / spk).mkdir(parents=True, exist_ok=True)
            for n, i in enumerate(idx, 1):
                utt = f"{spk}_R{n:03d}"
                shutil.copyfile(wavs[i], d / "waves" / spk / f"{utt}.wav")
                raw = SENTENCES[i][0].upper()
                if split == "train" and n == 2:
                    raw = unicodedata.normalize("NFD", raw)
                lines.append(f"{utt} {raw}")
                fake.texts[split][utt] = SENTENCES[i][1]
                fake.speakers[utt] = spk
        if split == "train":
            shutil.copyfile(wavs[6], d / "waves" / "VIVOSSPK01" / "VIVOSSPK01_R003.wav")
            shutil.copyfile(wavs[7], d / "waves" / "VIVOSSPK02" / "VIVOSSPK02_R009.wav")
            lines += [f"VIVOSSPK01_R003 {PUNCT_ONLY}", "VIVOSSPK01_R004 CÂU NÀY KHÔNG CÓ TIẾNG"]
            fake.empty_text, fake.no_audio, fake.no_transcript = (
                ["VIVOSSPK01_R003"], ["VIVOSSPK01_R004"], ["VIVOSSPK02_R009"])
        (d / "prompts.txt").write_bytes("".join(f"{x}\r\n" for x in sorted(lines)).encode("utf-8"))
        (d / "genders.txt").write_text("".join(f"{spk} {g}\n" for spk, g, _ in speakers), encoding="utf-8")
    (fake.root / "README").write_text("VIVOS corpus (fake)\n", encoding="utf-8")
    return fake


# ---------------------------------------------------------------------------------------- GigaSpeech 2

def make_fake_gigaspeech2(root: Path, wavs: Sequence[Path]) -> FakeCorpus:
    """``root/data/vi/{train_raw,train_refined,dev,test}.tsv`` and ``root/data/vi/{train,dev,test}/<a>/<b>/<a>-<b>-<c>.wav``.

    train_raw has 3 segments of two videos (plus one line whose audio is missing), train_refined
    2 of them with corrected text; dev 2 segments, test 1. Texts carry punctuation and upper case.
    """
    fake = FakeCorpus(Path(root))
    lang = fake.root / "data" / "vi"
    plan = {"train": [("0-1001-0", 0), ("0-1001-1", 1), ("3-2002-0", 2)],
            "dev": [("0-5001-0", 3), ("0-5001-1", 4)], "test": [("1-7001-0", 5)]}
    for part, segs in plan.items():
        for seg, i in segs:
            a, b, _ = seg.split("-")
            dest = lang / part / a / b / f"{seg}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wavs[i], dest)
    rows = {
        "train_raw": [(seg, SENTENCES[i][0].lower() + " ừm") for seg, i in plan["train"]] + [("0-1001-9", "mất tiếng")],
        "train_refined": [(seg, SENTENCES[i][0]) for seg, i in plan["train"][:2]],
        "dev": [(seg, SENTENCES[i][0]) for seg, i in plan["dev"]],
        "test": [(seg, SENTENCES[i][0]) for seg, i in plan["test"]],
    }
    for split, lines in rows.items():
        (lang / f"{split}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in lines), encoding="utf-8")
    expected = {seg: SENTENCES[i][1] for segs in plan.values() for seg, i in segs}
    fake.texts = {"train_raw": {s: expected[s] + " ừm" for s, _ in plan["train"]},
                  "train_refined": {s: expected[s] for s, _ in plan["train"][:2]},
                  "dev": {s: expected[s] for s, _ in plan["dev"]},
                  "test": {s: expected[s] for s, _ in plan["test"]}}
    fake.no_audio = ["0-1001-9"]
    return fake


# ---------------------------------------------------------------------------------------- Common Voice

CV17_HEADER = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
               "age", "gender", "accents", "variant", "locale", "segment")
CV_OLD_HEADER = ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent")


def make_fake_commonvoice(root: Path, wavs: Sequence[Path], release: str = "cv-corpus-17.0-2024-03-15",
                          header: Sequence[str] = CV17_HEADER, sample_rate: int = 32000) -> FakeCorpus:
    """``root/<release>/vi/{train,dev,test,validated,invalidated,other}.tsv`` and ``vi/clips/common_voice_vi_<n>.mp3``.

    train: 3 clips of 2 speakers (client ids are 128 hex digits in the real corpus), dev 1, test 1;
    one train row whose clip is missing. ``fake.root`` is the release folder. Sentences keep an
    unbalanced quote, as real ones do (lhotse reads with QUOTE_NONE).
    """
    fake = FakeCorpus(Path(root) / release)
    lang = fake.root / "vi"
    (lang / "clips").mkdir(parents=True, exist_ok=True)
    clients = ["a" * 64 + "1" * 64, "b" * 64 + "2" * 64]
    plan = {"train": [(0, 0), (1, 1), (2, 0)], "dev": [(3, 1)], "test": [(5, 0)]}
    n = 39000000
    for split, items in plan.items():
        rows, fake.texts[split] = [], {}
        for i, c in items:
            n += 1
            clip = f"common_voice_vi_{n}.mp3"
            samples, sr = sf.read(wavs[i], dtype="float32")
            sf.write(lang / "clips" / clip, resample(samples, sr, sample_rate), sample_rate, format="MP3")
            sentence = SENTENCES[i][0] + (' "' if i == 1 else "")
            values = {"client_id": clients[c], "path": clip, "sentence": sentence, "sentence_id": f"{n:x}",
                      "age": "twenties", "gender": ("male_masculine", "female_feminine")[c], "locale": "vi",
                      "up_votes": "2", "down_votes": "0"}
            rows.append([values.get(col, "") for col in header])
            fake.texts[split][clip[:-4]] = SENTENCES[i][1]
            fake.speakers[clip[:-4]] = clients[c]
        if split == "train":
            missing = "common_voice_vi_39999999.mp3"
            rows.append([{"client_id": clients[0], "path": missing, "sentence": "mất"}.get(col, "") for col in header])
            fake.no_audio = [missing[:-4]]
        (lang / f"{split}.tsv").write_text("".join("\t".join(r) + "\n" for r in [list(header)] + rows),
                                           encoding="utf-8")
    for other in ("validated", "invalidated", "other"):
        (lang / f"{other}.tsv").write_text("\t".join(header) + "\n", encoding="utf-8")
    return fake


def tone_wav(path: Path, seconds: float = 0.5, sample_rate: int = SAMPLING_RATE) -> Path:
    """A short tone, for layout-only tests that need a readable file but no speech."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), sample_rate)
    return path
