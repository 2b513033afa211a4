"""The CTC head: a linear projection of encoder frames to token log-probabilities, and its loss.

CTC is the cheapest of our three heads (CTC, transducer, attention) and the one the decoders in
``asrkit.decoding.ctc`` read. The loss is ``torch.nn.functional.ctc_loss`` in float32, summed over
utterances; the caller normalises by the frame count it returns.

An utterance whose transcript cannot fit in its frames (CTC needs one frame per token plus one
blank between equal neighbours) has no alignment and an infinite loss. We never hide that with
``zero_infinity``: such utterances are found with :func:`ctc_feasible` (which the data layer uses
to filter cuts before training), logged by utterance index, and left out of the batch.
"""

from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


def ctc_min_frames(target: Sequence[int]) -> int:
    """Frames CTC needs for ``target``: one per token plus one blank between each pair of equal neighbours."""
    repeats = sum(1 for a, b in zip(target, target[1:]) if a == b)
    return len(target) + repeats


def ctc_feasible(target: Sequence[int], num_frames: int) -> bool:
    """True when ``target`` has at least one CTC alignment over ``num_frames`` frames.

    Use it on the encoder's frame count (after subsampling), e.g. in the data layer::

        ctc_feasible(tokenizer.encode(text), encoder_frames(num_input_frames))
    """
    return num_frames >= ctc_min_frames(target)


class CtcHead(nn.Module):
    """Dropout + Linear to ``vocab_size``, then log-softmax (always float32, also under AMP).

    ``on_infeasible`` decides what :meth:`loss` does with utterances that have no CTC alignment:
    ``"skip"`` drops them from the batch and logs a warning naming them; ``"raise"`` raises.
    """

    def __init__(
        self,
        encoder_dim: int,
        vocab_size: int,
        blank_id: int = 0,
        dropout: float = 0.1,
        on_infeasible: str = "skip",
    ):
        super().__init__()
        if not 0 <= blank_id < vocab_size:
            raise ValueError(f"blank_id {blank_id} is outside the vocabulary [0, {vocab_size})")
        if on_infeasible not in ("skip", "raise"):
            raise ValueError(f"on_infeasible must be 'skip' or 'raise', got {on_infeasible!r}")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.on_infeasible = on_infeasible
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(encoder_dim, vocab_size)

    def forward(self, enc_out: torch.Tensor) -> torch.Tensor:
        """``enc_out (N, T, D)`` -> float32 ``log_probs (N, T, V)``."""
        logits = self.proj(self.dropout(enc_out))  # (N, T, V), maybe half precision under autocast
        return logits.float().log_softmax(dim=-1)

    def loss(
        self,
        enc_out: torch.Tensor,
        enc_lens: torch.Tensor,
        targets: List[List[int]],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed CTC loss over the batch and the number of frames it covers.

        enc_out: (N, T, D); enc_lens: (N,) valid frames per utterance; targets: N token-id lists
        (no blanks). Returns ``(loss_sum, num_frames)``, both scalar float tensors on ``enc_out``'s
        device; ``num_frames`` counts only the utterances that entered the loss, so
        ``loss_sum / num_frames`` is the per-frame loss (and 0 / 0 when every utterance was skipped:
        the trainer's NaN guard, or a check of ``num_frames``, must handle that batch).
        """
        N, T, _ = enc_out.shape
        if len(targets) != N or enc_lens.shape != (N,):
            raise ValueError(
                f"batch mismatch: enc_out has {N} utterances, enc_lens shape {tuple(enc_lens.shape)}, "
                f"{len(targets)} targets"
            )
        lens = enc_lens.detach().to("cpu", torch.long)
        if N and int(lens.max()) > T:
            raise ValueError(f"enc_lens max {int(lens.max())} exceeds the {T} frames of enc_out")
        flat = torch.tensor([t for tgt in targets for t in tgt], dtype=torch.long)
        self._check_ids(flat, targets)
        keep = self._feasible_rows(targets, lens.tolist())
        device = enc_out.device
        if not keep:
            # nothing to learn from; a zero that still touches every parameter keeps DDP in step
            zero = self.forward(enc_out).sum() * 0.0
            return zero, torch.zeros((), device=device)
        if len(keep) < N:
            idx = torch.tensor(keep, device=device)
            enc_out, lens = enc_out.index_select(0, idx), lens[keep]
            targets = [targets[i] for i in keep]
            flat = torch.tensor([t for tgt in targets for t in tgt], dtype=torch.long)

        log_probs = self.forward(enc_out)  # (N', T, V) float32
        tgt_lens = torch.tensor([len(t) for t in targets], dtype=torch.long)
        with torch.autocast(device_type=device.type, enabled=False):
            loss = F.ctc_loss(
                log_probs.transpose(0, 1),  # (T, N', V)
                flat.to(device),
                lens.to(device),
                tgt_lens.to(device),
                blank=self.blank_id,
                reduction="sum",
                zero_infinity=False,  # infeasible targets were removed above; an inf now is a real bug
            )
        return loss, lens.sum().to(device=device, dtype=torch.float32)

    def _check_ids(self, flat: torch.Tensor, targets: List[List[int]]) -> None:
        if flat.numel() == 0 or not ((flat == self.blank_id).any() or flat.min() < 0 or flat.max() >= self.vocab_size):
            return
        for i, tgt in enumerate(targets):
            for t in tgt:
                if t == self.blank_id or not 0 <= t < self.vocab_size:
                    raise ValueError(
                        f"target {i} contains token id {t}, which is the blank ({self.blank_id}) or outside "
                        f"[0, {self.vocab_size}); check the tokenizer's blank_id and vocab_size against the model"
                    )

    def _feasible_rows(self, targets: List[List[int]], lens: List[int]) -> List[int]:
        bad = [
            (i, len(tgt), ctc_min_frames(tgt), n)
            for i, (tgt, n) in enumerate(zip(targets, lens))
            if not ctc_feasible(tgt, n)
        ]
        if not bad:
            return list(range(len(targets)))
        details = "; ".join(f"utt #{i}: {L} tokens need {m} frames, has {n}" for i, L, m, n in bad[:5])
        msg = (
            f"{len(bad)} of {len(targets)} utterances in this batch are too short for their CTC targets ({details}). "
            "Filter them in the data layer with asrkit.models.ctc.ctc_feasible, or use a smaller vocabulary"
        )
        if self.on_infeasible == "raise":
            raise ValueError(msg)
        log.warning("%s; leaving them out of the loss", msg)
        bad_ids = {b[0] for b in bad}
        return [i for i in range(len(targets)) if i not in bad_ids]
