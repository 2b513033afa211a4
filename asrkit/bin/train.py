"""Train an ASR model from one YAML config (plus ``key=value`` overrides); resumable.

    asrkit train --config egs/synth/ASR/conf/zipformer_ctc.yaml exp_dir=exp/ctc train.num_epochs=5
    asrkit train --config ... exp_dir=exp/ctc --resume      # continue a killed run
    torchrun --nproc_per_node 4 -m asrkit.bin.train --config ... exp_dir=exp/ctc   # DDP
    asrkit train --config egs/synth/ASR_LLM/conf/stage3.yaml init_from=exp/stage2   # a speech-LLM
    asrkit train --config conf/ssl.yaml exp_dir=exp/ssl                   # ``task: ssl``: pretraining
    asrkit train --config conf/zipformer_transducer.yaml init_from=exp/ssl     # fine-tune its encoder

A config whose ``model`` section names an ``llm_dir`` trains a speech-LLM (``SpeechLLMConfig``: encoder
+ projector + causal LM); one with ``task: ssl`` pretrains an encoder by HuBERT-style masked prediction
of the cuts' ``ssl_targets`` (``SslConfig``; no transcripts or tokenizer); any other an ``AsrModel``
(``AsrModelConfig``: encoder + CTC/transducer/attention heads). ``init_from`` (an experiment dir or
checkpoint) starts from earlier weights: the stages of a staged recipe (EFIN) and SSL fine-tuning
(the ``encoder.*`` tensors) hand over this way.

Under ``torchrun`` each rank joins the process group (NCCL on GPU, gloo on CPU), takes the GPU of
its ``LOCAL_RANK``, and reads its own shard of the data; the effective batch is ``world_size x
data.max_duration`` seconds. The resolved config and the tokenizer are saved in ``exp_dir``, so
decoding, export and ``asrkit transcribe`` need nothing else.
"""

import argparse
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from asrkit.config import load_config, save_config
from asrkit.data.datamodule import (AsrDataset, DataConfig, check_encoder_inputs, eval_dataloader, filter_cuts,
                                    shar_train_dataloader, train_dataloader)
from asrkit.data.features import load_cuts
from asrkit.models.asr import AsrModel, AsrModelConfig
from asrkit.models.ctc import ctc_min_frames
from asrkit.models.speech_llm import SpeechLLMConfig
from asrkit.models.ssl import SslConfig
from asrkit.models.zipformer.scaling import set_batch_count
from asrkit.text.tokenizer import load_tokenizer
from asrkit.training.trainer import Trainer, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class ExperimentConfig:
    exp_dir: str = "exp"
    lang_dir: str = "data/lang"
    init_from: str = ""  # experiment dir or checkpoint whose matching weights initialise the model
    data: DataConfig = field(default_factory=DataConfig)
    model: AsrModelConfig = field(default_factory=AsrModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LlmExperimentConfig:
    """A speech-LLM experiment: the LLM's own tokenizer is the text tokenizer (no lang_dir)."""

    exp_dir: str = "exp"
    init_from: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: SpeechLLMConfig = field(default_factory=SpeechLLMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class SslExperimentConfig:
    """Masked-prediction pretraining: frame targets come with the cuts (``ssl_targets``), no lang_dir."""

    task: str = "ssl"
    exp_dir: str = "exp"
    init_from: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: SslConfig = field(default_factory=SslConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.task != "ssl":
            raise ValueError(f"task={self.task!r}: only 'ssl' is a task (leave it out for ASR and speech-LLM configs)")


def is_ssl_config(path: str, overrides) -> bool:
    """True when the config (or an override) says ``task: ssl``."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    return raw.get("task") == "ssl" or "task=ssl" in overrides


def is_llm_config(path: str, overrides) -> bool:
    """True when the config (or an override) gives ``model.llm_dir``: a speech-LLM experiment."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    return bool((raw.get("model") or {}).get("llm_dir")) or any(o.startswith("model.llm_dir=") for o in overrides)


def add_args(p):
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in exp_dir")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-3")


def init_distributed(device: str) -> tuple:
    """Join the torchrun process group if launched by torchrun; returns (rank, world_size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def run(args):
    if is_ssl_config(args.config, args.overrides):
        cfg_cls, train = SslExperimentConfig, _train_ssl
    elif is_llm_config(args.config, args.overrides):
        cfg_cls, train = LlmExperimentConfig, _train_llm
    else:
        cfg_cls, train = ExperimentConfig, _train
    cfg = load_config(cfg_cls, args.config, args.overrides)
    rank, world_size, cfg.train.device = init_distributed(cfg.train.device)
    try:
        train(cfg, args.resume, rank, world_size)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: ExperimentConfig, resume: bool, rank: int, world_size: int) -> None:
    exp_dir = Path(cfg.exp_dir)
    tokenizer = load_tokenizer(cfg.lang_dir)
    cfg.model.vocab_size = tokenizer.vocab_size
    cfg.model.blank_id = tokenizer.blank_id
    cfg.model.sos_id = tokenizer.sos_id
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        if Path(cfg.lang_dir).resolve() != (exp_dir / "lang").resolve():
            shutil.copytree(cfg.lang_dir, exp_dir / "lang", dirs_exist_ok=True)
        save_config(cfg, exp_dir / "config.yaml")

    torch.manual_seed(cfg.train.seed)
    model = AsrModel(cfg.model)
    log.info("model has %s parameters", f"{sum(p.numel() for p in model.parameters()):,}")

    def frames_needed(text: str) -> int:
        """Encoder frames ``text`` needs: CTC's tokens plus blanks between repeats; the pruned
        transducer loss (as icefall) at least one frame per token."""
        ids = tokenizer.encode(text)
        return ctc_min_frames(ids) if model.ctc is not None else len(ids)

    def compute_loss(model, batch, is_training):
        device = next(model.parameters()).device
        targets = [tokenizer.encode(t) for t in batch["texts"]]
        loss, head_losses, frames = model(batch["feats"].to(device), batch["feat_lens"].to(device), targets)
        frames = float(frames)
        stats = {"loss": float(loss.detach())}
        stats.update({k: float(v) for k, v in head_losses.items()})
        # frames is 0 when the CTC head dropped every utterance as infeasible; the loss is then 0 too
        return loss / max(frames, 1.0), stats, frames

    _fit(cfg, model, compute_loss, frames_needed, resume, rank, world_size)


def _train_llm(cfg: LlmExperimentConfig, resume: bool, rank: int, world_size: int) -> None:
    from asrkit.models.speech_llm import SpeechLLM

    exp_dir = Path(cfg.exp_dir)
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    model = SpeechLLM(cfg.model)
    log.info("speech-LLM: %s parameters, %s trainable", f"{sum(p.numel() for p in model.parameters()):,}",
             f"{model.num_trainable_parameters():,}")

    def compute_loss(model, batch, is_training):
        device = batch["feats"].device
        loss, parts, tokens = model(batch["feats"].to(device), batch["feat_lens"].to(device), batch["texts"])
        tokens = float(tokens)
        stats = {"loss": float(loss.detach())}
        stats.update({k: float(v) for k, v in parts.items()})
        return loss / max(tokens, 1.0), stats, tokens

    _fit(cfg, model, compute_loss, None, resume, rank, world_size)


def _train_ssl(cfg: SslExperimentConfig, resume: bool, rank: int, world_size: int) -> None:
    from asrkit.data.ssl_dataset import SslDataset
    from asrkit.models.ssl import MaskedPredictionModel

    if cfg.data.spec_augment or cfg.data.speed_perturb:
        raise ValueError("task: ssl needs data.spec_augment=false and no data.speed_perturb: time warping and "
                         "speed change move the features away from their frame targets (masking is the augmentation)")
    exp_dir = Path(cfg.exp_dir)
    if rank == 0:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp_dir / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    model = MaskedPredictionModel(cfg.model)
    log.info("masked prediction: %s parameters, %s in the encoder", f"{sum(p.numel() for p in model.parameters()):,}",
             f"{sum(p.numel() for p in model.encoder.parameters()):,}")

    def compute_loss(model, batch, is_training):
        device = batch["feats"].device
        loss, parts, frames = model(batch["feats"].to(device), batch["feat_lens"].to(device),
                                    batch["ssl_targets"].to(device))
        frames = float(frames)
        stats = {"loss": float(loss.detach())}
        stats.update({k: float(v) for k, v in parts.items()})
        return loss / max(frames, 1.0), stats, frames

    _fit(cfg, model, compute_loss, None, resume, rank, world_size, dataset_cls=SslDataset, require_text=False)


def init_weights(model: torch.nn.Module, source: str) -> None:
    """Load the weights of ``source`` (an experiment dir's model.pt, else its newest checkpoint; or a
    file) that ``model`` has; new ones (e.g. LoRA adapters of a later stage) keep their initialisation."""
    from asrkit.training.checkpoint import latest_checkpoint, load_checkpoint

    path = Path(source)
    if path.is_dir():
        path = path / "model.pt" if (path / "model.pt").is_file() else latest_checkpoint(path)
        if path is None:
            raise FileNotFoundError(f"init_from={source}: no model.pt or checkpoint there")
    state = load_checkpoint(path, map_location="cpu")
    state = state.get("model", state)
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_mismatch:
        raise ValueError(f"init_from={path}: shapes differ for {shape_mismatch[:5]}; same architecture?")
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(unexpected)
    if loaded == 0:
        raise ValueError(f"init_from={path}: none of its {len(state)} tensors belong to this model")
    log.info("init_from %s: loaded %d tensors, %d of the model's kept their initialisation (e.g. %s), "
             "%d of the checkpoint's unused (e.g. %s)", path, loaded, len(missing), list(missing)[:3],
             len(unexpected), list(unexpected)[:3])


def _fit(cfg, model, compute_loss, frames_needed, resume: bool, rank: int, world_size: int,
         dataset_cls: type = AsrDataset, require_text: bool = True) -> None:
    """Data loaders, ``init_from``, and the Trainer: what every experiment kind shares."""
    enc = model.encoder
    check_encoder_inputs(cfg.data, enc, cfg.model.encoder)
    if cfg.init_from and not resume:
        init_weights(model, cfg.init_from)
    sub = enc.subsampling_factor
    if cfg.data.train_shar:  # lhotse Shar: shards split over ranks and workers, read sequentially
        if cfg.data.train_cuts:
            raise ValueError("give data.train_cuts or data.train_shar, not both")
        train_dl = shar_train_dataloader(cfg.data, frames_needed, sub, require_text=require_text, rank=rank,
                                         world_size=world_size, dataset_cls=dataset_cls)
    else:
        train_cuts = filter_cuts(load_cuts(cfg.data.train_cuts), cfg.data.min_utt_duration,
                                 cfg.data.max_utt_duration, frames_needed, sub, require_text=require_text,
                                 feature_type=cfg.data.feature_type)
        train_dl = train_dataloader(cfg.data, train_cuts, rank=rank, world_size=world_size,
                                    dataset_cls=dataset_cls)
    valid_dl = None
    if cfg.data.valid_cuts:
        valid_cuts = filter_cuts(load_cuts(cfg.data.valid_cuts), cfg.data.min_utt_duration,
                                 cfg.data.max_utt_duration, frames_needed, sub, require_text=require_text,
                                 feature_type=cfg.data.feature_type)
        valid_dl = eval_dataloader(cfg.data, valid_cuts, dataset_cls=dataset_cls)

    def on_step(model, step):
        # Zipformer schedules (dropout, layer skipping, bypass floors) count batches of ref_duration
        # seconds of audio, as icefall does, so they behave the same whatever the batch size.
        set_batch_count(model, step * cfg.data.max_duration * world_size / cfg.train.ref_duration)
        bare = getattr(model, "module", model)
        if hasattr(bare, "set_step"):
            bare.set_step(step)

    trainer = Trainer(cfg.train, model, train_dl, Path(cfg.exp_dir), compute_loss, valid_dl=valid_dl,
                      on_step=on_step, experiment_config=cfg)
    if resume:
        trainer.resume(Path(cfg.exp_dir))
    trainer.fit()


if __name__ == "__main__":  # torchrun --nproc_per_node N -m asrkit.bin.train --config ...
    parser = argparse.ArgumentParser(prog="python -m asrkit.bin.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(parser.parse_args())
