"""Batches for masked-prediction pretraining: fbank plus each cut's frame targets at 50 Hz.

Why this exists: :class:`asrkit.models.ssl.MaskedPredictionModel` predicts k-means labels that
``asrkit ssl label`` attaches to every cut as a custom ``TemporalArray`` field ``ssl_targets`` (int,
frame_shift 0.02 for labels from an encoder's 50 Hz output, 0.01 for labels of 100 Hz fbank frames).
This dataset reads them next to the features and brings them to 50 Hz: 100 Hz labels are taken at
every other frame (HuBERT's ``floor(i * label_rate / frame_rate)``); alignment with the encoder frames
is the model's (``asrkit.models.ssl.align_targets``). Used by ``asrkit train`` for ``task: ssl``::

    dl = train_dataloader(cfg.data, cuts, dataset_cls=SslDataset)
    batch["ssl_targets"]   # (N, S) int64, -100 past each cut's labels; rows in batch["cut_ids"] order
"""

from typing import Dict

import numpy as np
import torch
from lhotse import CutSet

from asrkit.data.datamodule import AsrDataset
from asrkit.models.ssl import IGNORE_INDEX

TARGET_FRAME_SHIFT = 0.02  # seconds: the Zipformer front end's 50 Hz


def load_ssl_targets(cut) -> torch.Tensor:
    """The cut's ``ssl_targets`` at 50 Hz as int64 (T50,); a clear error when they are missing or odd."""
    field = (getattr(cut, "custom", None) or {}).get("ssl_targets")
    if field is None:
        raise ValueError(f"cut {cut.id} has no 'ssl_targets' field: label the cuts with `asrkit ssl label` "
                         "and train on the manifest (or Shar) it writes")
    shift = getattr(field, "frame_shift", None)
    step = round(TARGET_FRAME_SHIFT / shift) if shift else 0
    if step < 1 or abs(step * shift - TARGET_FRAME_SHIFT) > 1e-6:
        raise ValueError(f"cut {cut.id}: ssl_targets have frame_shift {shift}; expected a TemporalArray at "
                         f"{TARGET_FRAME_SHIFT} s (encoder labels) or a divisor of it (0.01 s: fbank labels)")
    labels = np.asarray(cut.load_custom("ssl_targets"))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cut {cut.id}: ssl_targets must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    return torch.from_numpy(labels[::step].astype(np.int64))


class SslDataset(AsrDataset):
    """:class:`AsrDataset`'s batch plus ``"ssl_targets"`` (N, S) padded with ``IGNORE_INDEX`` (-100).

    Transcripts are not needed (``texts`` holds whatever the cuts have, often empty strings).
    """

    def __getitem__(self, cuts: CutSet) -> Dict:
        batch = super().__getitem__(cuts)
        by_id = {c.id: c for c in cuts}
        targets = [load_ssl_targets(by_id[i]) for i in batch["cut_ids"]]
        width = max(len(t) for t in targets)
        padded = torch.full((len(targets), width), IGNORE_INDEX, dtype=torch.int64)
        for row, t in enumerate(targets):
            padded[row, : len(t)] = t
        batch["ssl_targets"] = padded
        return batch
