"""Fake corpus trees with each real corpus's exact file layout, for testing ``asrkit prepare`` and recipes.

    cuts = synthesize_corpus(tmp / "synth", lang="zh", num_utts=..., num_speakers=...)
    fake = make_fake_aishell(tmp / "aishell", utts_from_cuts(cuts))
    fake.root                    # tmp/aishell, holding data_aishell/{wav,transcript}
    fake.texts["dev"]            # utt id -> the transcript prepare must produce

Audio comes from anywhere: :func:`utts_from_cuts` takes espeak-ng speech (``asrkit.data.synth``)
for recipes that train; :func:`tone_utts` writes short tones for tests that only check layout and
errors, without espeak. Each ``make_fake_<corpus>`` also plants the faults that real copies have
(transcript lines without audio, audio without a transcript line, text that normalises to nothing),
so a test can check they are reported and skipped. Later corpora (AMI, LibriMix, the Vietnamese
sets) add their own ``make_fake_<corpus>`` here on top of :class:`FakeUtt`.
"""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
import soundfile as sf
from lhotse import CutSet

from asrkit.data.synth import load_vocab

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class FakeUtt:
    """One utterance to place in a fake tree: who says what, and the wav file that holds it."""

    speaker: str
    text: str  # normalised transcript (characters for zh)
    wav: Path


def utts_from_cuts(cuts: Mapping[str, CutSet]) -> Dict[str, List[FakeUtt]]:
    """Synthetic corpus cuts (one wav file each) -> ``{split: [FakeUtt]}``."""
    out = {}
    for split, cs in cuts.items():
        out[split] = [FakeUtt(c.supervisions[0].speaker, c.supervisions[0].text,
                              Path(c.recording.sources[0].source)) for c in cs]
    return out


def tone_utts(out_dir: Path, texts: Mapping[str, Sequence[str]],
              speakers_per_split: int = 2) -> Dict[str, List[FakeUtt]]:
    """0.5 s tones (no espeak needed) carrying the given transcripts, speakers dealt round robin."""
    out_dir.mkdir(parents=True, exist_ok=True)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    out = {}
    for split, lines in texts.items():
        utts = []
        for i, text in enumerate(lines):
            wav = out_dir / f"{split}-{i:04d}.wav"
            sf.write(wav, 0.1 * np.sin(2 * np.pi * (200 + 20 * i) * t), SAMPLE_RATE)
            utts.append(FakeUtt(f"{split}-spk{i % speakers_per_split}", text, wav))
        out[split] = utts
    return out


def segment_zh(text: str) -> str:
    """Split a character string into space-separated words (longest match against the synth vocabulary),
    imitating AISHELL's word-segmented transcripts ("而 对 楼市 成交 抑制 作用")."""
    words = set(load_vocab("zh"))
    longest = max(len(w) for w in words)
    out, i = [], 0
    while i < len(text):
        n = next((n for n in range(min(longest, len(text) - i), 0, -1) if text[i:i + n] in words), 1)
        out.append(text[i:i + n])
        i += n
    return " ".join(out)


# ------------------------------------------------------------------------------------------ AISHELL-1

# AISHELL-1's speaker ranges: train S0002-S0723, dev S0724-S0763, test S0764-S0916.
AISHELL_FIRST_SPEAKER = {"train": 2, "dev": 724, "test": 764}


@dataclass
class FakeAishell:
    root: Path  # the folder holding data_aishell/ (what --corpus-dir points at)
    texts: Dict[str, Dict[str, str]] = field(default_factory=dict)  # split -> utt id -> expected cut text
    speakers: Dict[str, set] = field(default_factory=dict)  # split -> AISHELL speaker ids
    empty_text: List[str] = field(default_factory=list)  # wav present, transcript normalises to ""
    no_audio: List[str] = field(default_factory=list)  # transcript line, no wav file
    no_transcript: List[str] = field(default_factory=list)  # wav file, no transcript line

    @property
    def wav_dir(self) -> Path:
        return self.root / "data_aishell" / "wav"

    @property
    def transcript(self) -> Path:
        return self.root / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"


def make_fake_aishell(root: Path, utts: Mapping[str, Sequence[FakeUtt]], faults: bool = True,
                      tarballs: bool = False) -> FakeAishell:
    """Lay ``utts`` out as AISHELL-1 does after extraction::

        root/data_aishell/wav/<split>/S0002/BAC009S0002W0121.wav
        root/data_aishell/transcript/aishell_transcript_v0.8.txt    "BAC009S0002W0121 而 对 楼市 ..."
        root/resource_aishell/speaker.info

    Transcripts are word-segmented with spaces; the first dev line also gets full-width punctuation,
    which normalisation must remove. ``faults`` adds to train one wav whose transcript is only
    punctuation, one transcript line without a wav and one wav without a transcript line.
    ``tarballs`` packs each speaker as the corpus ships it, ``wav/S0002.tar.gz``, and removes the folders.
    """
    fake = FakeAishell(Path(root))
    lines = []
    for split, split_utts in utts.items():
        spk_ids = {}
        counts: Dict[str, int] = {}
        fake.texts[split] = {}
        for u in split_utts:
            spk = spk_ids.setdefault(u.speaker, f"S{AISHELL_FIRST_SPEAKER[split] + len(spk_ids):04d}")
            counts[spk] = counts.get(spk, 0) + 1
            utt_id = f"BAC009{spk}W{120 + counts[spk]:04d}"
            dest = fake.wav_dir / split / spk / f"{utt_id}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(u.wav, dest)
            words = segment_zh(u.text)
            if split == "dev" and not fake.texts[split]:
                words = words.replace(" ", " ， ", 1) + " 。"
            lines.append(f"{utt_id} {words}")
            fake.texts[split][utt_id] = u.text
        fake.speakers[split] = set(spk_ids.values())
    if faults:
        first = utts["train"][0].wav
        spk = "S0002"
        fake.empty_text = ["BAC009S0002W0901"]
        fake.no_audio = ["BAC009S0002W0902"]
        fake.no_transcript = ["BAC009S0002W0903"]
        shutil.copyfile(first, fake.wav_dir / "train" / spk / "BAC009S0002W0901.wav")
        shutil.copyfile(first, fake.wav_dir / "train" / spk / "BAC009S0002W0903.wav")
        lines += ["BAC009S0002W0901 ， 。", "BAC009S0002W0902 这 条 没有 录音"]
    fake.transcript.parent.mkdir(parents=True, exist_ok=True)
    fake.transcript.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    info = fake.root / "resource_aishell" / "speaker.info"
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text("".join(f"{s[1:]} M\n" for split in fake.speakers for s in sorted(fake.speakers[split])),
                    encoding="utf-8")
    if tarballs:
        pack_aishell_tarballs(fake.wav_dir)
    return fake


def pack_aishell_tarballs(wav_dir: Path) -> List[Path]:
    """Replace ``wav/<split>/<SPK>/`` by ``wav/<SPK>.tar.gz`` (members ``<split>/<SPK>/*.wav``), as shipped."""
    out = []
    for split_dir in sorted(p for p in wav_dir.iterdir() if p.is_dir()):
        for spk_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            tarball = wav_dir / f"{spk_dir.name}.tar.gz"
            with tarfile.open(tarball, "w:gz") as tar:
                tar.add(spk_dir, arcname=f"{split_dir.name}/{spk_dir.name}")
            out.append(tarball)
        shutil.rmtree(split_dir)
    return out
