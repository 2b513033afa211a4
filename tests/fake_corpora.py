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


def _speech(wav: Path) -> np.ndarray:
    samples, sr = sf.read(wav, dtype="float32")
    if sr != SAMPLE_RATE:
        raise ValueError(f"{wav}: fake trees are built from {SAMPLE_RATE} Hz audio, got {sr}")
    return samples if samples.ndim == 1 else samples[:, 0]


# ---------------------------------------------------------------------------------------- LibriSpeech

# A real speaker and chapter of each part, to start counting from (train-clean-100/103/1240, ...).
LIBRISPEECH_FIRST = {"train-clean-100": (103, 1240), "train-clean-360": (100, 121669), "dev-clean": (1272, 128104),
                     "test-clean": (1089, 134686), "dev-other": (116, 288045), "test-other": (1688, 142285)}


@dataclass
class FakeLibriSpeech:
    root: Path  # the folder holding LibriSpeech/ (what --corpus-dir points at)
    texts: Dict[str, Dict[str, str]] = field(default_factory=dict)  # part -> utt id -> expected cut text
    speakers: Dict[str, Dict[str, str]] = field(default_factory=dict)  # part -> utt id -> LibriSpeech speaker
    no_audio: List[str] = field(default_factory=list)  # transcript line, no flac
    no_transcript: List[str] = field(default_factory=list)  # flac, no transcript line

    def flac(self, utt_id: str, part: str) -> Path:
        spk, chapter, _ = utt_id.split("-")
        return self.root / "LibriSpeech" / part / spk / chapter / f"{utt_id}.flac"


def make_fake_librispeech(root: Path, utts: Mapping[str, Sequence[FakeUtt]], faults: bool = True) -> FakeLibriSpeech:
    """Lay ``{part: utts}`` out as LibriSpeech does (one chapter per speaker)::

        root/LibriSpeech/train-clean-100/103/1240/103-1240-0000.flac
        root/LibriSpeech/train-clean-100/103/1240/103-1240.trans.txt    "103-1240-0000 CHAPTER ONE ..."

    The first transcript of each part gets a comma and mixed case, which normalisation must undo.
    ``faults`` adds to the first part one transcript line without a flac and one flac without a line.
    """
    fake = FakeLibriSpeech(Path(root))
    for part, part_utts in utts.items():
        first_spk, first_chapter = LIBRISPEECH_FIRST[part]
        spk_ids: Dict[str, int] = {}
        lines: Dict[Path, List[str]] = {}
        fake.texts[part], fake.speakers[part] = {}, {}
        for u in part_utts:
            n = spk_ids.setdefault(u.speaker, len(spk_ids))
            spk, chapter = first_spk + 7 * n, first_chapter + n
            trans = fake.root / "LibriSpeech" / part / str(spk) / str(chapter) / f"{spk}-{chapter}.trans.txt"
            utt_id = f"{spk}-{chapter}-{len(lines.get(trans, [])):04d}"
            dest = fake.flac(utt_id, part)
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(dest, _speech(u.wav), SAMPLE_RATE, format="FLAC")
            text = u.text if fake.texts[part] else u.text.capitalize().replace(" ", ", ", 1)
            lines.setdefault(trans, []).append(f"{utt_id} {text}")
            fake.texts[part][utt_id] = u.text
            fake.speakers[part][utt_id] = str(spk)
        if faults and part == next(iter(utts)):
            trans = next(iter(lines))
            spk, chapter = trans.parent.parent.name, trans.parent.name
            fake.no_audio, fake.no_transcript = [f"{spk}-{chapter}-0901"], [f"{spk}-{chapter}-0902"]
            lines[trans].append(f"{fake.no_audio[0]} NO AUDIO FOR THIS LINE")
            shutil.copyfile(fake.flac(next(iter(fake.texts[part])), part), fake.flac(fake.no_transcript[0], part))
        for trans, text in lines.items():
            trans.write_text("".join(line + "\n" for line in text), encoding="utf-8")
    return fake


# ------------------------------------------------------------------------------------------- WHAM! noise

@dataclass
class FakeWham:
    root: Path  # the wham_noise folder (tr/, cv/, tt/)
    ids: Dict[str, List[str]] = field(default_factory=dict)  # split -> noise file stems


def make_fake_wham(root: Path, per_split: Mapping[str, int] = None, seconds: Sequence[float] = (1.5, 6.0),
                   seed: int = 0) -> FakeWham:
    """``root/{tr,cv,tt}/<name>.wav``: stereo (binaural, as WHAM!) pink-ish noise named like WHAM!'s files
    (``01ga010e_0.67686_016c020s_-0.67686.wav``). Lengths alternate between ``seconds``, so some are
    shorter than the mixtures and must be extended."""
    per_split = dict(per_split or {"tr": 2, "cv": 2, "tt": 2})
    rng = np.random.default_rng(seed)
    fake = FakeWham(Path(root))
    for split, n in per_split.items():
        (fake.root / split).mkdir(parents=True, exist_ok=True)
        fake.ids[split] = []
        for i in range(n):
            snr = round(float(rng.uniform(0, 2.5)), 5)
            name = f"{i:02d}{split[0]}a010{chr(97 + i)}_{snr}_{i:02d}{split[1]}c020{chr(98 + i)}_-{snr}"
            length = int(seconds[i % len(seconds)] * SAMPLE_RATE)
            noise = np.cumsum(rng.standard_normal((length, 2)), axis=0)
            noise = 0.02 * (noise - noise.mean(axis=0)) / (np.abs(noise).max() + 1e-9)
            sf.write(fake.root / split / f"{name}.wav", noise.astype(np.float32), SAMPLE_RATE)
            fake.ids[split].append(name)
    return fake


# -------------------------------------------------------------------------------- LibriMix metadata

LIBRIMIX_WHAM_SPLIT = {"train": "tr", "dev": "cv", "test": "tt"}


@dataclass
class FakeLibriMix:
    root: Path  # the metadata folder (holding Libri2Mix/)
    rows: Dict[str, List[dict]] = field(default_factory=dict)  # part -> the rows that can be mixed
    broken: List[str] = field(default_factory=list)  # mixture ids whose source is not in the LibriSpeech copy


def make_fake_librimix_metadata(root: Path, speech: FakeLibriSpeech, wham: FakeWham, n_src: int = 2,
                                per_part: Mapping[str, int] = None, seed: int = 0) -> FakeLibriMix:
    """LibriMix's source lists as in its repository, ``root/Libri<n>Mix/libri<n>mix_<part>.csv``
    (columns mixture_ID, source_<k>_path, source_<k>_gain, noise_path, noise_gain) and a
    ``libri<n>mix_<part>_info.csv`` lhotse must skip. Sources of distinct speakers; the first train
    row takes a 0.8x speed-perturbed noise (``...sp08.wav``), as LibriMix's augmented train noise.
    One extra row per part names a source missing from the copy."""
    rng = np.random.default_rng(seed)
    fake = FakeLibriMix(Path(root))
    sub = fake.root / f"Libri{n_src}Mix"
    sub.mkdir(parents=True, exist_ok=True)
    header = ["mixture_ID"] + [f"source_{k}_{c}" for k in range(1, n_src + 1) for c in ("path", "gain")] + \
        ["noise_path", "noise_gain"]
    for part, n in (per_part or {p: 2 for p in speech.texts}).items():
        wham_split = LIBRIMIX_WHAM_SPLIT[part.split("-")[0]]
        by_spk: Dict[str, List[str]] = {}
        for utt, spk in sorted(speech.speakers[part].items()):
            by_spk.setdefault(spk, []).append(utt)
        rows = []
        for i in range(n + 1):
            spks = [sorted(by_spk)[(i + k) % len(by_spk)] for k in range(n_src)]
            srcs = [by_spk[s][i % len(by_spk[s])] for s in spks]
            if i == n:
                srcs[-1] = f"{spks[-1]}-999-0001"  # not in the copy
            noise = wham.ids[wham_split][i % len(wham.ids[wham_split])]
            if part.startswith("train") and i == 0:
                noise += "sp08"
            row = {"mixture_ID": "_".join(srcs), "noise_path": f"{wham_split}/{noise}.wav",
                   "noise_gain": float(rng.uniform(0.3, 2.0))}
            for k, src in enumerate(srcs, 1):
                spk, chapter, _ = src.split("-")
                row[f"source_{k}_path"] = f"{part}/{spk}/{chapter}/{src}.flac"
                row[f"source_{k}_gain"] = float(rng.uniform(0.3, 1.5))
            rows.append(row)
        fake.rows[part], fake.broken = rows[:-1], fake.broken + [rows[-1]["mixture_ID"]]
        lines = [",".join(header)] + [",".join(str(r[c]) for c in header) for r in rows]
        (sub / f"libri{n_src}mix_{part}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (sub / f"libri{n_src}mix_{part}_info.csv").write_text("speaker_ID,sex,subset,length,num_chapter\n",
                                                               encoding="utf-8")
    return fake


# ------------------------------------------------------------------------------------------------ AMI

# One meeting per split of lhotse's full-corpus-asr partition.
AMI_MEETINGS = {"train": "ES2002a", "dev": "ES2011a", "test": "ES2004a"}
AMI_GROUP_GAP = 1.0  # s of silence between utterance groups
AMI_OVERLAP = 0.4  # a later speaker of a group starts when the previous one is this far from its end


@dataclass
class AmiGroup:
    start: float
    end: float
    segments: List[tuple]  # (start, speaker global name, normalised text), in start order


@dataclass
class FakeAmi:
    root: Path  # holds amicorpus/ and ami_public_manual_1.6.2/
    groups: Dict[str, List[AmiGroup]] = field(default_factory=dict)  # split -> the meeting's utterance groups
    meetings: Dict[str, str] = field(default_factory=dict)  # split -> meeting id


def _nxt(root_id: str, body: str) -> str:
    return (f'<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>\n'
            f'<nite:root nite:id="{root_id}" xmlns:nite="http://nite.sourceforge.net/">\n{body}</nite:root>\n')


def make_fake_ami(root: Path, utts: Mapping[str, Sequence[FakeUtt]], group_sizes: Sequence[int] = (2, 1, 3),
                  seed: int = 0) -> FakeAmi:
    """One AMI meeting per split, in the NXT layout lhotse's ``prepare_ami`` reads::

        root/amicorpus/ES2002a/audio/ES2002a.Mix-Headset.wav     (ihm-mix: the sum of the headsets)
        root/amicorpus/ES2002a/audio/ES2002a.Array1-01.wav       (sdm: quieter, with room noise)
        root/ami_public_manual_1.6.2/corpusResources/meetings.xml   speakers: agent A -> MEE006, channel
        root/ami_public_manual_1.6.2/segments/ES2002a.A.segments.xml
        root/ami_public_manual_1.6.2/words/ES2002a.A.words.xml      <w starttime endtime>word</w>, punctuation

    The utterances of a split are dealt into utterance groups of ``group_sizes`` speakers (cycled):
    in a group each next speaker starts :data:`AMI_OVERLAP` s before the previous one ends, groups are
    :data:`AMI_GROUP_GAP` s apart. Words are lower case with a full stop, as AMI's; each word spans an
    equal share of its utterance.
    """
    rng = np.random.default_rng(seed)
    fake = FakeAmi(Path(root))
    notes = fake.root / "ami_public_manual_1.6.2"
    for sub in ("corpusResources", "segments", "words"):
        (notes / sub).mkdir(parents=True, exist_ok=True)
    meetings_xml = []
    for split, split_utts in utts.items():
        meet = AMI_MEETINGS[split]
        fake.meetings[split] = meet
        speakers = sorted({u.speaker for u in split_utts})
        if len(speakers) < max(group_sizes):
            raise ValueError(f"{split}: {max(group_sizes)}-speaker groups need as many speakers, got {len(speakers)}")
        agent = {s: "ABCD"[i] for i, s in enumerate(speakers)}
        global_name = {s: f"{'MF'[i % 2]}EE{int(AMI_FIRST_SPEAKER[split]) + i:03d}" for i, s in enumerate(speakers)}
        # deal utterances into groups of distinct speakers
        pool = {s: [u for u in split_utts if u.speaker == s] for s in speakers}
        t, placed, groups, g = 0.5, [], [], 0
        while any(pool.values()):
            size = group_sizes[g % len(group_sizes)]
            g += 1
            spks = sorted((s for s in speakers if pool[s]), key=lambda s: -len(pool[s]))[:size]
            segs, start, end = [], t, t
            for spk in spks:
                u = pool[spk].pop(0)
                audio = _speech(u.wav)
                begin = round(start if not segs else max(start, end - AMI_OVERLAP), 2)
                dur = round(len(audio) / SAMPLE_RATE, 2)
                placed.append((begin, spk, u, audio[: int(dur * SAMPLE_RATE)]))
                segs.append((begin, global_name[spk], u.text))
                end = max(end, begin + dur)
            groups.append(AmiGroup(round(t, 2), round(end, 2), segs))
            t = end + AMI_GROUP_GAP
        fake.groups[split] = groups
        total = int((t + 0.5) * SAMPLE_RATE)
        mix = np.zeros(total, dtype=np.float32)
        words: Dict[str, List[str]] = {s: [] for s in speakers}
        segments: Dict[str, List[str]] = {s: [] for s in speakers}
        for begin, spk, u, audio in placed:
            i = int(round(begin * SAMPLE_RATE))
            mix[i:i + len(audio)] += audio
            tokens = u.text.lower().split()
            step = (len(audio) / SAMPLE_RATE) / len(tokens)
            a = agent[spk]
            n0 = len(words[spk])
            for k, w in enumerate(tokens):
                s0, s1 = round(begin + k * step, 2), round(begin + (k + 1) * step, 2)
                words[spk].append(f'<w nite:id="{meet}.{a}.words{n0 + k}" starttime="{s0}" endtime="{s1}">{w}</w>')
            end = round(begin + len(tokens) * step, 2)
            words[spk].append(f'<w nite:id="{meet}.{a}.words{n0 + len(tokens)}" starttime="{end}" endtime="{end}" '
                              f'punc="true">.</w>')
            words[spk].append(f'<vocalsound nite:id="{meet}.{a}.vs{n0}" starttime="{end}" endtime="{end}" type="laugh"/>')
            segments[spk].append(f'<segment nite:id="{meet}.sync.{len(segments[spk])}" transcriber_start="{begin}" '
                                 f'transcriber_end="{end}" channel="{speakers.index(spk)}"/>')
        audio_dir = fake.root / "amicorpus" / meet / "audio"
        audio_dir.mkdir(parents=True, exist_ok=True)
        sf.write(audio_dir / f"{meet}.Mix-Headset.wav", mix / max(1.0, float(np.abs(mix).max()) / 0.9), SAMPLE_RATE)
        far = 0.5 * mix + 0.003 * rng.standard_normal(total).astype(np.float32)
        sf.write(audio_dir / f"{meet}.Array1-01.wav", far / max(1.0, float(np.abs(far).max()) / 0.9), SAMPLE_RATE)
        for spk in speakers:
            a = agent[spk]
            (notes / "words" / f"{meet}.{a}.words.xml").write_text(
                _nxt(f"{meet}.{a}.words", "".join(f"  {w}\n" for w in words[spk])), encoding="ISO-8859-1")
            (notes / "segments" / f"{meet}.{a}.segments.xml").write_text(
                _nxt(f"{meet}.{a}.segs", "".join(f"  {s}\n" for s in segments[spk])), encoding="ISO-8859-1")
        body = "".join(f'    <speaker nite:id="{meet}.speaker.{agent[s]}" global_name="{global_name[s]}" '
                       f'nxt_agent="{agent[s]}" channel="{i}" role="PM"/>\n' for i, s in enumerate(speakers))
        meetings_xml.append(f'  <meeting nite:id="{meet}.meeting" observation="{meet}" type="scenario">\n{body}'
                            f'  </meeting>\n')
    (notes / "corpusResources" / "meetings.xml").write_text(_nxt("meetings", "".join(meetings_xml)),
                                                            encoding="ISO-8859-1")
    return fake


AMI_FIRST_SPEAKER = {"train": "006", "dev": "030", "test": "070"}
