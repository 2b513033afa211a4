"""Tests for ``asrkit import-icefall`` (asrkit/bin/import_icefall.py, asrkit/models/icefall.py).

    .venv/bin/pytest tests/test_import_icefall.py -q

The parity test against icefall's own code runs only when ICEFALL_SRC names an icefall source tree
(we never commit icefall code); export one from the mirror with::

    mkdir -p /tmp/icefall_src && git -C /work/.mirror/k2-fsa+icefall/repo archive 36e0420c7e3e \\
        egs/librispeech/ASR/zipformer egs/librispeech/ASR/transducer_stateless/encoder_interface.py icefall \\
        | tar -x -C /tmp/icefall_src
    ICEFALL_SRC=/tmp/icefall_src .venv/bin/pytest tests/test_import_icefall.py -q -k parity -s
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import random
import sys
import types
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from asrkit.cli import main
from asrkit.models import load_model
from asrkit.models.asr import AsrModel, AsrModelConfig, TransducerConfig
from asrkit.models.attention import AttentionDecoderConfig
from asrkit.models.icefall import IcefallImportError, flags_to_config, load_icefall_state_dict, parse_flags
from asrkit.text.tokenizer import BpeTokenizer, CharTokenizer, load_tokenizer

# Tiny two-stack Zipformer with all three heads, as icefall's train.py flags (strings, as argparse gives them).
TINY_FLAGS = {
    "num_encoder_layers": "1,1", "downsampling_factor": "1,2", "encoder_dim": "32,48", "feedforward_dim": "64,96",
    "num_heads": "2", "encoder_unmasked_dim": "32", "cnn_module_kernel": "7", "query_head_dim": "8",
    "value_head_dim": "8", "pos_head_dim": "4", "pos_dim": 8,
    "decoder_dim": 16, "joiner_dim": 24, "context_size": 2,
    "attention_decoder_dim": 16, "attention_decoder_num_layers": 1, "attention_decoder_attention_dim": 16,
    "attention_decoder_num_heads": 2, "attention_decoder_feedforward_dim": 32,
    "use_transducer": "True", "use_ctc": "1", "use_attention_decoder": True,
    "base_lr": 0.045, "exp_dir": "zipformer/exp",  # training-only flags: ignored
}
CHARS = list("abcdefghij") + ["\u2581"]
CHAR_TOKENS = ["<blk>", "<sos/eos>", "<unk>"] + CHARS  # 14 tokens


def tiny_config(vocab_size: int, ctc: float = 0.2, transducer: float = 1.0, attention: float = 0.8) -> AsrModelConfig:
    """TINY_FLAGS written out as our config by hand (independently of flags_to_config)."""
    enc = dict(input_dim=80, num_encoder_layers=[1, 1], downsampling_factor=[1, 2], encoder_dim=[32, 48],
               feedforward_dim=[64, 96], num_heads=[2, 2], encoder_unmasked_dim=[32, 32], cnn_module_kernel=[7, 7],
               query_head_dim=[8, 8], value_head_dim=[8, 8], pos_head_dim=[4, 4], pos_dim=8,
               padding_invariant=False)
    return AsrModelConfig(encoder="zipformer", encoder_conf=enc, vocab_size=vocab_size, ctc_weight=ctc,
                          transducer_weight=transducer, attention_weight=attention,
                          transducer=TransducerConfig(decoder_dim=16, joiner_dim=24, context_size=2),
                          attention=AttentionDecoderConfig(decoder_dim=16, num_layers=1, attention_dim=16,
                                                           num_heads=2, feedforward_dim=32))


def to_icefall_name(key: str) -> str:
    """Our parameter name -> icefall's AsrModel name (written out here, independently of the importer)."""
    for ours, theirs in (("encoder.encoder_embed.", "encoder_embed."), ("encoder.encoder.", "encoder."),
                         ("transducer.", ""), ("ctc.proj.", "ctc_output.1."), ("attention.", "attention_decoder.")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise AssertionError(f"no icefall name for {key}")


def perturbed_model(cfg: AsrModelConfig, seed: int = 0) -> AsrModel:
    """A model whose zero- or constant-initialised parameters are made to matter."""
    torch.manual_seed(seed)
    random.seed(seed)
    model = AsrModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            std = p.std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn_like(p) * (0.2 * std if std > 1e-3 else 0.1))
    return model.eval()


def icefall_state_dict(model: AsrModel, ddp: bool = False) -> Dict[str, torch.Tensor]:
    prefix = "module." if ddp else ""
    return {prefix + to_icefall_name(k): v.clone() for k, v in model.state_dict().items()}


def write_tokens(path: Path, tokens, disambig: int = 2) -> Path:
    lines = [f"{t} {i}" for i, t in enumerate(tokens)] + [f"#{j} {len(tokens) + j}" for j in range(disambig)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def import_dir(tmp_path: Path, sd, flags, tokens=CHAR_TOKENS, wrap: bool = True, extra=()) -> Path:
    ckpt, flags_path = tmp_path / "pretrained.pt", tmp_path / "flags.json"
    torch.save({"model": sd} if wrap else sd, ckpt)
    flags_path.write_text(json.dumps(flags))
    out = tmp_path / "exp"
    rc = main(["import-icefall", "--checkpoint", str(ckpt), "--flags", str(flags_path),
               "--tokens", str(write_tokens(tmp_path / "tokens.txt", tokens)), "--out-dir", str(out), *extra])
    assert rc == 0
    return out


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([97, 80, 61])
    return torch.randn(3, 97, 80, generator=g), lens


@torch.no_grad()
def head_outputs(model: AsrModel, feats, lens) -> Dict[str, torch.Tensor]:
    """Encoder, decoder, joiner, CTC and attention-decoder outputs on fixed inputs."""
    enc, enc_lens = model.encoder(feats, lens)
    out = {"enc": enc, "enc_lens": enc_lens}
    V = model.cfg.vocab_size
    if model.ctc is not None:
        out["ctc"] = model.ctc(enc)
    if model.transducer is not None:
        y = torch.tensor([[0, 3, 4, 5], [0, 6, 6, 7], [0, 8, 9, 10]]) % V
        dec = model.transducer.decoder(y)
        out["dec"] = dec
        out["joiner"] = model.transducer.joiner(enc.unsqueeze(2), dec.unsqueeze(1))
    if model.attention is not None:
        ys = torch.tensor([[1, 3, 4, 5], [1, 6, 7, 1], [1, 8, 1, 1]]) % V
        out["att"] = model.attention(enc, enc_lens, ys, torch.tensor([4, 3, 2]))
    return out


# ---------------------------------------------------------------------------------------------- flags


def test_defaults_are_icefall_train_py():
    cfg = flags_to_config({}, vocab_size=500)
    enc = cfg.encoder_conf
    assert enc["num_encoder_layers"] == [2, 2, 3, 4, 3, 2] and enc["downsampling_factor"] == [1, 2, 4, 8, 4, 2]
    assert enc["encoder_dim"] == [192, 256, 384, 512, 384, 256] and enc["num_heads"] == [4, 4, 4, 8, 4, 4]
    assert enc["query_head_dim"] == [32] * 6 and enc["value_head_dim"] == [12] * 6 and enc["pos_dim"] == 48
    assert enc["cnn_module_kernel"] == [31, 31, 15, 15, 15, 31] and enc["input_dim"] == 80
    assert enc["embed_channels"] == [8, 32, 128] and enc["padding_invariant"] is False and enc["causal"] is False
    # use_transducer defaults to True, use_ctc and use_attention_decoder to False
    assert (cfg.transducer_weight, cfg.ctc_weight, cfg.attention_weight) == (1.0, 0.0, 0.0)
    t = cfg.transducer
    assert (t.decoder_dim, t.joiner_dim, t.context_size, t.prune_range, t.lm_scale, t.simple_loss_scale,
            t.warm_step) == (512, 512, 2, 5, 0.25, 0.5, 2000)
    assert cfg.vocab_size == 500 and cfg.blank_id == 0 and cfg.sos_id == 1


def test_flag_spellings_and_value_formats():
    cfg = flags_to_config({
        "--num-encoder-layers": [2, 2, 2, 2, 2, 2], "encoder-dim": "192,256,256,256,256,256", "num_heads": 4,
        "feedforward_dim": "512,768,768,768,768,768", "encoder_unmasked_dim": "192",
        "use_ctc": "yes", "use_transducer": "0", "use_attention_decoder": "True", "ctc_loss_scale": "0.3",
        "attention_decoder_loss_scale": 0.7, "attention_decoder_num_layers": "2", "context_size": "1",
        "vocab_size": "500",
    })
    enc = cfg.encoder_conf
    assert enc["num_encoder_layers"] == [2] * 6 and enc["num_heads"] == [4] * 6
    assert enc["encoder_unmasked_dim"] == [192] * 6
    assert (cfg.transducer_weight, cfg.ctc_weight, cfg.attention_weight) == (0.0, 0.3, 0.7)
    assert cfg.attention.num_layers == 2 and cfg.transducer.context_size == 1 and cfg.vocab_size == 500
    # the small preset has icefall's published parameter count (transducer, vocab 500)
    small = flags_to_config({"num_encoder_layers": "2,2,2,2,2,2", "encoder_dim": "192,256,256,256,256,256",
                             "feedforward_dim": "512,768,768,768,768,768", "encoder_unmasked_dim": "192"}, 500)
    with torch.device("meta"):
        n = sum(p.numel() for p in AsrModel(small).parameters())
    assert n == 23_285_615


def test_unknown_flags_are_ignored_with_a_debug_log(caplog):
    with caplog.at_level(logging.DEBUG, logger="asrkit.models.icefall"):
        p = parse_flags({"base_lr": 0.045, "world_size": 4, "exp_dir": "x"})
    assert "base_lr" in caplog.text and "world_size" in caplog.text
    assert p["encoder_dim"] == (192, 256, 384, 512, 384, 256)


@pytest.mark.parametrize("flags, match", [
    ({"use_ctc": "maybe"}, "use_ctc"),
    ({"num_encoder_layers": "2,x,2"}, "num_encoder_layers"),
    ({"num_encoder_layers": "2,,2"}, "num_encoder_layers"),
    ({"decoder_dim": 3.5}, "decoder_dim"),
    ({"encoder_dim": "192,256"}, "encoder_dim"),
    ({"encoder_unmasked_dim": "200", "encoder_dim": "192"}, "encoder_unmasked_dim"),
    ({"causal": "True", "chunk_size": "16,32"}, "streaming"),
    ({"use_transducer": False, "use_ctc": False}, "use_transducer and use_ctc"),
    ({"encoder_dims": "384,384"}, "first Zipformer"),
    ({"vocab_size": 499}, "vocab_size=499"),
    ({"blank_id": 3}, "blank_id"),
    ({"use_ctc": True, "ctc_loss_scale": 0}, "ctc_loss_scale > 0"),
])
def test_bad_flags_are_explained(flags, match):
    with pytest.raises(IcefallImportError, match=match):
        flags_to_config(flags, vocab_size=500)


# ------------------------------------------------------------------------------------------ weights


@pytest.mark.parametrize("wrap, ddp", [(True, False), (False, True)])
def test_round_trip_gives_identical_outputs(tmp_path, wrap, ddp):
    ref = perturbed_model(tiny_config(len(CHAR_TOKENS)))
    out = import_dir(tmp_path, icefall_state_dict(ref, ddp=ddp), TINY_FLAGS, wrap=wrap)
    model = load_model(out)
    assert not model.training
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(model) == shapes(ref) and model.cfg.encoder_conf["padding_invariant"] is False
    feats, lens = batch()
    want, got = head_outputs(ref, feats, lens), head_outputs(model, feats, lens)
    assert set(got) == {"enc", "enc_lens", "ctc", "dec", "joiner", "att"}
    for name in want:
        assert torch.equal(want[name], got[name]), name
    # the flags' loss weights and head sizes made it into config.yaml
    assert (model.cfg.transducer_weight, model.cfg.ctc_weight, model.cfg.attention_weight) == (1.0, 0.2, 0.8)
    assert model.transducer.decoder.context_size == 2 and model.transducer.joiner.output_linear.in_features == 24


def test_missing_and_unexpected_keys_are_named(tmp_path):
    cfg = flags_to_config(TINY_FLAGS, vocab_size=len(CHAR_TOKENS))
    sd = icefall_state_dict(perturbed_model(tiny_config(len(CHAR_TOKENS))))
    del sd["ctc_output.1.bias"]
    sd["encoder.encoders.9.bogus"] = torch.zeros(3)
    sd["lm_head.weight"] = torch.zeros(3)
    with pytest.raises(IcefallImportError) as e:
        load_icefall_state_dict(AsrModel(cfg), sd)
    msg = str(e.value)
    assert "ctc.proj.bias" in msg and "encoder.encoders.9.bogus" in msg and "lm_head.weight" in msg

    # a head the flags leave out: its keys are named and the flag suggested
    no_ctc = flags_to_config({**TINY_FLAGS, "use_ctc": "False"}, vocab_size=len(CHAR_TOKENS))
    sd = icefall_state_dict(perturbed_model(tiny_config(len(CHAR_TOKENS))))
    with pytest.raises(IcefallImportError, match=r"ctc_output\.1\.weight.*use_ctc=true"):
        load_icefall_state_dict(AsrModel(no_ctc), sd)
    # an architecture flag that differs from training: shapes are listed
    wide = flags_to_config({**TINY_FLAGS, "joiner_dim": 32}, vocab_size=len(CHAR_TOKENS))
    with pytest.raises(IcefallImportError, match=r"shapes differ.*joiner\.encoder_proj\.weight \(24, 48\)"):
        load_icefall_state_dict(AsrModel(wide), sd)


def test_cli_error_on_vocab_mismatch_and_existing_dir(tmp_path):
    sd = icefall_state_dict(perturbed_model(tiny_config(len(CHAR_TOKENS))))
    with pytest.raises(IcefallImportError, match="13 tokens but the model outputs 14"):
        import_dir(tmp_path, sd, TINY_FLAGS, tokens=CHAR_TOKENS[:-1])
    out = import_dir(tmp_path, sd, TINY_FLAGS)
    with pytest.raises(FileExistsError, match="--force"):
        import_dir(tmp_path, sd, TINY_FLAGS)
    import_dir(tmp_path, sd, TINY_FLAGS, extra=["--force"])
    assert (out / "model.pt").is_file()


def test_epoch_checkpoint_with_stored_flags_needs_no_flags_file(tmp_path):
    # icefall's epoch-N.pt: {"model", "model_avg", "optimizer", ...} plus every params entry, paths included
    ref = perturbed_model(tiny_config(len(CHAR_TOKENS)))
    sd = icefall_state_dict(ref)
    ckpt = {**TINY_FLAGS, "model": sd, "model_avg": sd, "optimizer": {"state": {}},
            "exp_dir": pathlib.Path("zipformer/exp"), "env_info": {"torch-version": "2.x"},
            "vocab_size": len(CHAR_TOKENS), "feature_dim": 80, "subsampling_factor": 4, "blank_id": 0,
            "sos_id": 1, "eos_id": 1}
    torch.save(ckpt, tmp_path / "epoch-3.pt")
    tokens = write_tokens(tmp_path / "tokens.txt", CHAR_TOKENS)
    assert main(["import-icefall", "--checkpoint", str(tmp_path / "epoch-3.pt"), "--tokens", str(tokens),
                 "--out-dir", str(tmp_path / "exp")]) == 0
    feats, lens = batch(1)
    got = head_outputs(load_model(tmp_path / "exp"), feats, lens)
    assert torch.equal(head_outputs(ref, feats, lens)["joiner"], got["joiner"])
    # pretrained.pt stores no flags: then --flags is required
    torch.save({"model": sd}, tmp_path / "pretrained.pt")
    with pytest.raises(IcefallImportError, match="--flags"):
        main(["import-icefall", "--checkpoint", str(tmp_path / "pretrained.pt"), "--tokens", str(tokens),
              "--out-dir", str(tmp_path / "exp2")])


# ----------------------------------------------------------------------------------------- tokens


def test_tokens_txt_keeps_ids_exactly(tmp_path):
    # icefall's AISHELL layout: specials, then characters in order of appearance (not sorted), then #N
    zh = ["<blk>", "<sos/eos>", "<unk>", "\u7684", "\u4e00", "\u662f", "<sc>", "\u4e86"]
    ref = perturbed_model(tiny_config(len(zh), transducer=0.0, attention=0.0, ctc=0.2))
    flags = {**TINY_FLAGS, "use_transducer": "false", "use_attention_decoder": "false"}
    out = import_dir(tmp_path, icefall_state_dict(ref), flags, tokens=zh)
    tok = load_tokenizer(out / "lang")
    assert isinstance(tok, CharTokenizer) and tok.tokens == zh
    assert tok.encode("\u4e00\u662f<sc>\u7684") == [4, 5, 6, 3]
    assert (out / "lang" / "tokens.txt").read_text(encoding="utf-8").splitlines()[3] == "\u7684 3"


def test_bpe_tables_are_refused_as_tokens(tmp_path):
    bpe = ["<blk>", "<sos/eos>", "<unk>", "\u2581THE", "S"] + [chr(ord("A") + i) for i in range(9)]
    sd = icefall_state_dict(perturbed_model(tiny_config(len(bpe))))
    with pytest.raises(IcefallImportError, match="--bpe-model"):
        import_dir(tmp_path, sd, TINY_FLAGS, tokens=bpe)
    (tmp_path / "gap.txt").write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\na 4\n")
    with pytest.raises(IcefallImportError, match=r"missing \[3\]"):
        main(["import-icefall", "--checkpoint", str(tmp_path / "pretrained.pt"), "--flags",
              str(tmp_path / "flags.json"), "--tokens", str(tmp_path / "gap.txt"), "--out-dir", str(tmp_path / "exp2")])


def test_bpe_model(tmp_path):
    from asrkit.data.synth import load_vocab

    words = load_vocab("en")
    sp = BpeTokenizer.train([" ".join(words[i:i + 6]).upper() for i in range(0, len(words), 3)],
                            tmp_path / "icefall_lang", vocab_size=40)
    ref = perturbed_model(tiny_config(40))
    ckpt, flags = tmp_path / "pretrained.pt", tmp_path / "flags.json"
    torch.save({"model": icefall_state_dict(ref)}, ckpt)
    flags.write_text(json.dumps(TINY_FLAGS))
    out = tmp_path / "exp"
    assert main(["import-icefall", "--checkpoint", str(ckpt), "--flags", str(flags),
                 "--bpe-model", str(tmp_path / "icefall_lang" / "bpe.model"), "--out-dir", str(out)]) == 0
    tok = load_tokenizer(out / "lang")
    assert isinstance(tok, BpeTokenizer) and tok == sp and tok.encode("MOTHER") == sp.encode("MOTHER")
    feats, lens = batch(2)
    assert torch.equal(head_outputs(ref, feats, lens)["ctc"], head_outputs(load_model(out), feats, lens)["ctc"])


# ------------------------------------------------------------------------------------- transcribe


@pytest.mark.parametrize("head", ["ctc", "transducer"])
def test_transcribe_an_imported_model(tmp_path, capsys, head):
    import soundfile as sf

    # an output layer that always prefers token "c" (id 5): CTC greedy search must print exactly "c",
    # transducer greedy search "c" on every frame; both hold only if the ids survive tokens.txt -> lang/
    c = CHAR_TOKENS.index("c")
    if head == "ctc":
        ref = perturbed_model(tiny_config(len(CHAR_TOKENS), transducer=0.0, attention=0.0, ctc=1.0))
        flags = {**TINY_FLAGS, "use_transducer": 0, "use_attention_decoder": 0, "ctc_loss_scale": 1.0}
        layer = "ctc_output.1."
    else:
        ref = perturbed_model(tiny_config(len(CHAR_TOKENS)))
        flags, layer = TINY_FLAGS, "joiner.output_linear."
    sd = icefall_state_dict(ref)
    sd[layer + "weight"].zero_()
    sd[layer + "bias"].zero_()
    sd[layer + "bias"][c] = 5.0
    out = import_dir(tmp_path, sd, flags)
    wav = tmp_path / "noise.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    capsys.readouterr()
    assert main(["transcribe", "--exp-dir", str(out), str(wav)]) == 0
    path, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert path == str(wav)
    if head == "ctc":
        assert text == "c"
    else:
        assert len(text) >= 5 and set(text) == {"c"}, text


# ------------------------------------------------------------------------ parity with icefall's code


@pytest.fixture(scope="module")
def icefall_train():
    """icefall's zipformer/train.py imported from ICEFALL_SRC, with k2 (absent here) stubbed; the stubs
    and icefall's modules are removed from sys.modules afterwards."""
    src = os.environ.get("ICEFALL_SRC")
    if not src:
        pytest.skip("set ICEFALL_SRC to an icefall source tree to compare with icefall's own code")
    src = Path(src).resolve()
    recipe = src / "egs" / "librispeech" / "ASR" / "zipformer"
    if not (recipe / "train.py").is_file():
        pytest.fail(f"ICEFALL_SRC={src} has no egs/librispeech/ASR/zipformer/train.py")

    def swoosh(offset: float, shift: float):
        # k2's fused kernels compute these formulas (icefall's SwooshLOnnx / SwooshROnnx)
        return lambda x: torch.logaddexp(torch.zeros_like(x), x - offset) - 0.08 * x - shift

    class NoK2:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("k2 is stubbed in this test")

    k2 = types.ModuleType("k2")
    k2.swoosh_l_forward = k2.swoosh_l = swoosh(4.0, 0.035)
    k2.swoosh_r_forward = k2.swoosh_r = swoosh(1.0, 0.313261687)
    k2.RaggedTensor = k2.Fsa = k2.SymbolTable = NoK2
    k2.version = types.ModuleType("k2.version")
    icefall_pkg = types.ModuleType("icefall")  # its __init__ pulls in k2 decoding: load submodules only
    icefall_pkg.__path__ = [str(src / "icefall")]
    datamodule = types.ModuleType("asr_datamodule")
    datamodule.LibriSpeechAsrDataModule = object
    stubs = {"k2": k2, "k2.version": k2.version, "icefall": icefall_pkg, "asr_datamodule": datamodule}
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    sys.path.insert(0, str(recipe))
    set_interop = torch.set_num_interop_threads
    torch.set_num_interop_threads = lambda n: None  # train.py calls it at import; too late in a test session
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import train
        train.get_env_info = lambda: {}  # would query k2's version
        yield train
    finally:
        torch.set_num_interop_threads = set_interop
        sys.path.remove(str(recipe))
        for name in [n for n, m in sys.modules.items()
                     if str(getattr(m, "__file__", "") or "").startswith(str(src))]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


PARITY = {
    "small": {"num_encoder_layers": "2,2,2,2,2,2", "feedforward_dim": "512,768,768,768,768,768",
              "encoder_dim": "192,256,256,256,256,256", "encoder_unmasked_dim": "192,192,192,192,192,192"},
    "medium": {},  # train.py's defaults
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["small", "medium"])
def test_parity_with_icefall(icefall_train, preset, tmp_path):
    """icefall's AsrModel built by its own train.py from flags, saved as icefall does, imported by us:
    encoder (batched, unequal lengths), decoder, joiner, CTC and attention-decoder outputs agree."""
    vocab = 500
    flags = {**PARITY[preset], "use_transducer": "true", "use_ctc": "true", "use_attention_decoder": "true"}
    argv = [a for k, v in flags.items() for a in ("--" + k.replace("_", "-"), v)]
    args = icefall_train.get_parser().parse_args(argv)
    params = icefall_train.get_params()
    params.update(vars(args))
    params.update(vocab_size=vocab, blank_id=0, sos_id=1, eos_id=1)
    torch.manual_seed(0)
    ice = icefall_train.get_model(params)
    with torch.no_grad():  # make zero-initialised parameters (bypass, downsampling weights) matter
        for p in ice.parameters():
            std = p.std().item() if p.numel() > 1 else 0.0
            p.add_(torch.randn_like(p) * (0.2 * std if std > 1e-3 else 0.1))
    ice.eval()
    torch.save({"model": ice.state_dict()}, tmp_path / "pretrained.pt")  # what icefall's export.py writes
    # FLAGS.json as icefall's parsed args (every train.py flag, strings as argparse leaves them)
    (tmp_path / "flags.json").write_text(json.dumps({k: v for k, v in vars(args).items()
                                                     if isinstance(v, (str, int, float, bool))}))
    tokens = ["<blk>", "<sos/eos>", "<unk>"] + [chr(0x4E00 + i) for i in range(vocab - 3)]
    assert main(["import-icefall", "--checkpoint", str(tmp_path / "pretrained.pt"), "--flags",
                 str(tmp_path / "flags.json"), "--tokens", str(write_tokens(tmp_path / "tokens.txt", tokens)),
                 "--out-dir", str(tmp_path / "exp")]) == 0
    ours = load_model(tmp_path / "exp")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ice.parameters())

    g = torch.Generator().manual_seed(1)
    lens = torch.tensor([347, 300, 211, 158])
    feats = torch.randn(4, 347, 80, generator=g)
    y = torch.nn.functional.pad(torch.randint(3, vocab, (4, 6), generator=g), (1, 0), value=0)  # blank first
    ys = torch.randint(3, vocab, (4, 7), generator=g)
    ys[:, 0] = 1  # sos
    ys_lens = torch.tensor([7, 5, 3, 1])
    with torch.no_grad():
        e_i, l_i = ice.forward_encoder(feats, lens)
        e_o, l_o = ours.encoder(feats, lens)
        d_i, d_o = ice.decoder(y), ours.transducer.decoder(y)
        diffs = {
            "encoder": (e_i - e_o).abs().max().item(),
            "decoder": (d_i - d_o).abs().max().item(),
            "joiner": (ice.joiner(e_i.unsqueeze(2), d_i.unsqueeze(1))
                       - ours.transducer.joiner(e_o.unsqueeze(2), d_o.unsqueeze(1))).abs().max().item(),
            "simple_am_lm": max((ice.simple_am_proj(e_i) - ours.transducer.simple_am_proj(e_o)).abs().max().item(),
                                (ice.simple_lm_proj(d_i) - ours.transducer.simple_lm_proj(d_o)).abs().max().item()),
            "ctc_log_probs": (ice.ctc_output(e_i) - ours.ctc_log_probs(feats, lens)[0]).abs().max().item(),
        }
        valid = torch.arange(7)[None, :] < ys_lens[:, None]
        a_i = ice.attention_decoder.decoder(x=ys, x_lens=ys_lens, memory=e_i, memory_lens=l_i)
        a_o = ours.attention(e_o, l_o, ys, ys_lens)
        diffs["attention_logits"] = (a_i - a_o)[valid].abs().max().item()
    print(f"\n{preset}: max abs diff vs icefall " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
          + f" (|encoder| max {e_i.abs().max().item():.1f}, "
          f"|attention logits| max {a_i[valid].abs().max().item():.1f})")
    assert torch.equal(l_i, l_o)
    for name, d in diffs.items():
        assert d < 1e-4, (name, d)
