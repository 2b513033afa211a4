"""Tests for asrkit.config: YAML + key=value overrides into nested dataclasses, and back.

    .venv/bin/pytest tests/test_config.py -q
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytest
import yaml

from asrkit.config import ConfigError, apply_overrides, config_from_dict, load_config, save_config
from asrkit.training.trainer import TrainConfig


@dataclass
class ModelCfg:
    encoder: str = "zipformer"
    encoder_conf: Dict[str, Any] = field(default_factory=lambda: {"num_heads": [4, 8], "downsampling": "1,2"})
    dims: Tuple[int, ...] = (192, 256)
    heads: List[str] = field(default_factory=lambda: ["ctc"])


@dataclass
class DecodeCfg:
    beam: int = 4


@dataclass
class ExpCfg:
    exp_dir: str = "exp"
    model: ModelCfg = field(default_factory=ModelCfg)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: Optional[DecodeCfg] = None


@pytest.fixture
def yaml_file(tmp_path):
    path = tmp_path / "conf.yaml"
    path.write_text(
        "exp_dir: exp/ctc\n"
        "model:\n"
        "  dims: [64, 96]\n"
        "  heads: [ctc, transducer]\n"
        "  encoder_conf: {num_heads: [2, 2], downsampling: '1,2', causal: false}\n"
        "train:\n"
        "  lr: 3.0e-3\n"
        "  num_epochs: 2\n"
    )
    return path


def test_yaml_then_overrides(yaml_file):
    cfg = load_config(ExpCfg, yaml_file, [
        "train.lr=1e-3",  # PyYAML reads "1e-3" as a string: the float field converts it
        "train.max_steps=100",
        "train.amp=false",
        "train.betas=0.9,0.99",
        "model.encoder_conf.num_heads=4,4",
        "model.encoder_conf.downsampling=2,4",  # replaces a string: stays a string
        "model.encoder_conf.new_key=7",
        "model.heads=[ctc]",
        "decode.beam=8",  # null sub-config: built from its defaults
    ])
    assert cfg.exp_dir == "exp/ctc"
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.num_epochs == 2 and cfg.train.max_steps == 100 and cfg.train.amp is False
    assert cfg.train.betas == (0.9, 0.99)
    assert cfg.model.dims == (64, 96)  # YAML list -> tuple field
    assert cfg.model.heads == ["ctc"]
    assert cfg.model.encoder_conf == {"num_heads": [4, 4], "downsampling": "2,4", "causal": False, "new_key": 7}
    assert cfg.decode == DecodeCfg(beam=8)
    assert apply_overrides(cfg, ["train.max_steps=null"]).train.max_steps is None


def test_save_and_load_round_trip(tmp_path, yaml_file):
    cfg = load_config(ExpCfg, yaml_file, ["decode.beam=3", "model.dims=8,16"])
    save_config(cfg, tmp_path / "exp" / "config.yaml")
    text = (tmp_path / "exp" / "config.yaml").read_text()
    assert yaml.safe_load(text)["model"]["dims"] == [8, 16]
    back = load_config(ExpCfg, tmp_path / "exp" / "config.yaml")
    assert back == cfg
    assert isinstance(back.model.dims, tuple) and isinstance(back.model.heads, list)


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr' \(did you mean 'lr'\?\); valid keys under"):
        load_config(ExpCfg, None, ["train.lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  encodr: x\n")
    with pytest.raises(ConfigError, match=r"'model.encodr'.*encoder, encoder_conf.*bad.yaml"):
        load_config(ExpCfg, bad)
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'.*exp_dir, model, train, decode"):
        config_from_dict(ExpCfg, {"nope": 1})


def test_bad_values_and_syntax_are_reported():
    with pytest.raises(ConfigError, match=r"'train.num_epochs' expects an integer, got 'many'"):
        load_config(ExpCfg, None, ["train.num_epochs=many"])
    with pytest.raises(ConfigError, match=r"'model.dims\[1\]' expects an integer"):
        load_config(ExpCfg, None, ["model.dims=1,x"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(ExpCfg, None, ["train.lr"])
    with pytest.raises(ConfigError, match="is a mapping"):
        load_config(ExpCfg, None, ["model.encoder_conf=3"])
    with pytest.raises(ConfigError, match="amp_dtype"):  # the dataclass's own __post_init__ check
        load_config(ExpCfg, None, ["train.amp_dtype=fp8"])


def test_train_config_alone():
    cfg = load_config(TrainConfig, None, ["lr=5e-4", "save_every_n=200", "scheduler=cosine"])
    assert (cfg.lr, cfg.save_every_n, cfg.scheduler) == (5e-4, 200, "cosine")
    assert cfg.num_epochs == TrainConfig().num_epochs
