"""Shared test set-up: deterministic, quiet, and sized for 2 CPU cores."""

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # Test tensors are tiny: a second intra-op thread only contends (up to 100x slower on a busy 2-core box).
    torch.set_num_threads(1)
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


# A tiny real corpus for tests that train through the CLI: espeak-ng speech, fbank, char tokens.
TINY_ENCODER = dict(num_encoder_layers=[1, 1], downsampling_factor=[1, 2], encoder_dim=[32, 48],
                    feedforward_dim=[64, 96], encoder_unmasked_dim=[32, 32], num_heads=2, cnn_module_kernel=7,
                    query_head_dim=8, value_head_dim=8, pos_head_dim=4, pos_dim=8, embed_channels=[4, 8, 16])


@pytest.fixture(scope="session")
def tiny_asr_data(tmp_path_factory):
    """(train cuts path, dev cuts path, lang dir) of a 24 + 6 utterance English corpus with fbank."""
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from asrkit.data.features import compute_fbank
    from asrkit.data.synth import synthesize_corpus
    from asrkit.text.tokenizer import CharTokenizer

    root = tmp_path_factory.mktemp("tiny_asr")
    splits = synthesize_corpus(root / "corpus", lang="en", num_utts={"train": 24, "dev": 6, "test": 2},
                               num_speakers={"train": 3, "dev": 1, "test": 1}, seed=0, vocab_size=10,
                               min_words=2, max_words=4, num_jobs=2)
    paths = {}
    for split in ("train", "dev"):
        compute_fbank(splits[split], root / "fbank", f"tiny_cuts_{split}", num_jobs=1)
        paths[split] = root / "fbank" / f"tiny_cuts_{split}.jsonl.gz"
    CharTokenizer.build([c.supervisions[0].text for c in splits["train"]], root / "lang")
    return paths["train"], paths["dev"], root / "lang"


@pytest.fixture
def tiny_asr_experiment(tiny_asr_data):
    """A function ``(tmp_dir, **model_keys) -> (config path, overrides)`` for ``asrkit train``."""
    import yaml

    train, dev, lang = tiny_asr_data

    def make(tmp_dir, **model):
        cfg = {
            "exp_dir": str(tmp_dir / "exp"), "lang_dir": str(lang),
            "data": {"train_cuts": str(train), "valid_cuts": str(dev), "max_duration": 8, "num_workers": 0,
                     "spec_augment": False, "num_buckets": 2},
            "model": {"encoder": "zipformer", "encoder_conf": TINY_ENCODER, "ctc_weight": 1.0, **model},
            "train": {"optimizer": "scaled_adam", "scheduler": "eden", "lr": 0.045, "warmup_steps": 5,
                      "grad_clip": 0, "ref_duration": 1, "log_interval": 1, "progress_bar": False,
                      "tensorboard": False, "num_epochs": 1, "average_period": 2},
        }
        path = tmp_dir / "tiny.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path, []

    return make
