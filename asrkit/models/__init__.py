"""asrkit.models: encoders, heads and the models that combine them.

``load_model(exp_dir)`` rebuilds a trained model from its experiment dir alone: the architecture
comes from ``config.yaml`` saved there at training time, the weights from ``model.pt``
(written by ``asrkit export``) or else the newest ``epoch-N.pt``.
"""

from pathlib import Path
from typing import Optional, Union

import yaml

from asrkit.training.checkpoint import find_checkpoints


def experiment_weights(exp_dir: Union[str, Path]) -> Path:
    """The file holding an experiment's model weights: ``model.pt``, else the newest ``epoch-N.pt``."""
    exp_dir = Path(exp_dir)
    if (exp_dir / "model.pt").is_file():
        return exp_dir / "model.pt"
    epochs = find_checkpoints(exp_dir, "epoch")
    if not epochs:
        raise FileNotFoundError(f"no model.pt or epoch-N.pt in {exp_dir}; train or export first")
    return epochs[-1]


def load_model(exp_dir: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None, device: str = "cpu"):
    """Return the experiment's model in eval mode on ``device``."""
    from asrkit.config import config_from_dict
    from asrkit.models.asr import AsrModel, AsrModelConfig
    from asrkit.training.checkpoint import load_checkpoint

    exp_dir = Path(exp_dir)
    cfg_path = exp_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {exp_dir} an asrkit experiment dir?")
    with open(cfg_path, encoding="utf-8") as f:
        full = yaml.safe_load(f)
    raw = full["model"]
    if full.get("task") == "ssl":  # masked-prediction pretraining (asrkit.models.ssl)
        from asrkit.models.ssl import MaskedPredictionModel, SslConfig

        model = MaskedPredictionModel(config_from_dict(SslConfig, raw))
    elif "llm_dir" in raw:  # a speech-LLM experiment: the frozen LLM weights come from llm_dir, not the checkpoint
        from asrkit.models.speech_llm import SpeechLLM, SpeechLLMConfig

        model = SpeechLLM(config_from_dict(SpeechLLMConfig, raw), init_encoder=False)
    else:
        model = AsrModel(config_from_dict(AsrModelConfig, raw))
    state = load_checkpoint(experiment_weights(exp_dir) if checkpoint is None else checkpoint)
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.to(device).eval()
