"""The Encoder protocol and the registry that lets configs pick an encoder by name.

Every encoder maps ``feats (N, T, C), feat_lens (N,)`` to ``out (N, T', D), out_lens (N,)``
and exposes ``output_dim`` and ``subsampling_factor`` (T / T', roughly).
"""

from typing import Callable, Dict, Protocol, Tuple

import torch


class Encoder(Protocol):
    output_dim: int
    subsampling_factor: int

    def __call__(
        self, feats: torch.Tensor, feat_lens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]: ...


ENCODERS: Dict[str, Callable[..., torch.nn.Module]] = {}


def register_encoder(name: str):
    """Class decorator: ``@register_encoder("zipformer")`` makes ``build_encoder("zipformer", ...)`` work."""

    def wrap(cls):
        ENCODERS[name] = cls
        return cls

    return wrap


def build_encoder(name: str, **conf) -> torch.nn.Module:
    """Build a registered encoder from its config keys; importing the module registers it.

    A ``preset`` key calls the encoder's ``from_preset(preset, **other_keys)``.
    """
    if name not in ENCODERS:
        import importlib

        try:
            importlib.import_module(f"asrkit.models.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"asrkit.models.{name}":
                raise  # the encoder's module exists but one of its dependencies is missing
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    cls = ENCODERS[name]
    if "preset" in conf:
        conf = dict(conf)
        return cls.from_preset(conf.pop("preset"), **conf)
    return cls(**conf)
