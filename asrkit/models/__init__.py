"""asrkit.models: encoders, heads and the models that combine them.

``load_model(exp_dir)`` rebuilds a trained model from its experiment dir alone: the architecture
comes from ``config.yaml`` saved there at training time, the weights from ``model.pt``
(written by ``asrkit export``) or else the newest ``epoch-N.pt``.
"""

import re
from pathlib import Path
from typing import Optional, Union

import torch
import yaml


def newest_epoch_checkpoint(exp_dir: Path) -> Optional[Path]:
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("epoch-*.pt") if (m := re.fullmatch(r"epoch-(\d+)\.pt", p.name))]
    return max(found)[1] if found else None


def load_model(exp_dir: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None, device: str = "cpu"):
    """Return the experiment's model in eval mode on ``device``."""
    from asrkit.config import config_from_dict
    from asrkit.models.asr import AsrModel, AsrModelConfig

    exp_dir = Path(exp_dir)
    cfg_path = exp_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {exp_dir} an asrkit experiment dir?")
    with open(cfg_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)["model"]
    if "llm_dir" in raw:  # a speech-LLM experiment: the frozen LLM weights come from llm_dir, not the checkpoint
        from asrkit.models.speech_llm import SpeechLLM, SpeechLLMConfig

        model = SpeechLLM(config_from_dict(SpeechLLMConfig, raw), init_encoder=False)
    else:
        model = AsrModel(config_from_dict(AsrModelConfig, raw))
    if checkpoint is None:
        checkpoint = exp_dir / "model.pt"
        if not checkpoint.is_file():
            checkpoint = newest_epoch_checkpoint(exp_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"no model.pt or epoch-N.pt in {exp_dir}; train or export first")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot load {checkpoint} ({type(e).__name__}: {e}); truncated or corrupt?") from e
    model.load_state_dict(state["model"] if "model" in state else state)
    return model.to(device).eval()
