"""Training FLOPs as executed: count the matmul, convolution and attention ops a step really runs.

Scaling laws of error rate against training compute (``asrkit scaling fit``) need the compute each
experiment spent. Formulas such as ``6 x parameters x tokens`` assume every weight gets a weight
gradient and every activation an input gradient; with frozen parts (a frozen encoder or LLM, LoRA)
that is wrong in both directions. So we count what runs instead::

    counter = FlopCounter()
    with counter:
        loss = model(x).sum()
        loss.backward()
    counter.total  # FLOPs of forward + backward, as executed

:class:`FlopCounter` is a ``TorchDispatchMode``: it sees every aten op that reaches the kernels,
including those inside custom autograd Functions (the Zipformer's ``scaling.py``, our RNN-T losses)
and the ones autograd runs in backward. A frozen module below all trainable ones gets no backward at
all; a frozen module above trainable ones gets input gradients but no weight gradients (autograd
runs ``mm``/``convolution_backward`` with only the needed outputs), and both show up as counted.

Counted: ``mm``, ``addmm``, ``bmm``, ``baddbmm``, convolutions and their backward, fused attention
(torch's own per-op formulas in ``torch.utils.flop_counter``, 2 FLOPs per multiply-add; we add
the CPU flash-attention kernel, which torch's table lacks). Not
counted: elementwise ops, reductions, softmax, normalisation, indexing, the RNN-T lattice recursion,
the optimizer update and communication; set ``track_uncounted=True`` to see which arithmetic ops ran
and how many output elements they produced (about one FLOP each: a rough size of what is missing; on
the synthetic recipe's Zipformer transducer it is ~1.5% of the counted FLOPs). We replace torch's formula for
``convolution_backward``: in torch <= 2.13 it ignores ``groups`` for the weight gradient and so
overcounts depthwise convolutions by the channel count (fixed upstream in pytorch#183405).
"""

import json
import os
import tempfile
from collections import Counter
from math import prod
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple, Union

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["FlopCounter", "count_flops", "conv_backward_flops", "dense_train_flops", "linear_train_flops",
           "read_flops_file", "update_flops_file"]

aten = torch.ops.aten

# Metadata queries: never compute, and some tensor subclasses answer them through dispatch.
_IGNORED = {aten.is_contiguous, aten.size, aten.sym_size, aten.stride, aten.sym_stride, aten.storage_offset,
            aten.sym_storage_offset, aten.numel, aten.sym_numel, aten.dim, torch.ops.prim.layout,
            torch.ops.prim.device}
# Views, copies and allocations: memory traffic, no arithmetic; left out of ``uncounted``.
_NO_ARITHMETIC = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "t", "expand", "as_strided",
    "permute", "slice", "select", "split", "split_with_sizes", "unbind", "squeeze", "unsqueeze",
    "detach", "alias", "clone", "contiguous", "copy_", "_to_copy", "cat", "stack", "new_zeros",
    "new_empty", "new_empty_strided", "empty_like", "zeros_like", "ones_like", "full_like", "zeros",
    "empty", "empty_strided", "ones", "full", "arange", "scalar_tensor", "fill_", "zero_", "lift_fresh",
    "_local_scalar_dense", "index", "index_select", "gather", "narrow", "unfold", "pad",
    "constant_pad_nd", "masked_fill", "scatter", "scatter_add", "index_put_", "embedding",
    "embedding_dense_backward", "repeat", "flip", "slice_backward", "select_backward", "set_", "resize_"
}


def _shape(x: Any) -> Sequence[int]:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)


def conv_backward_flops(grad_out: Any, x: Any, w: Any, transposed: bool, output_mask: Sequence[bool]) -> int:
    """FLOPs of ``aten.convolution_backward``: each of grad_input and grad_weight costs one forward.

    A forward convolution does ``N x (output positions) x prod(weight shape)`` multiply-adds; the weight
    shape already holds ``in_channels / groups`` (or ``out_channels / groups`` when transposed), so this
    is right for grouped and depthwise convolutions. For a transposed convolution the positions are
    those of its input. The bias gradient is a reduction and not counted, as in the forward.
    """
    g, xs, ws = _shape(grad_out), _shape(x), _shape(w)
    positions = prod(xs[2:]) if transposed else prod(g[2:])
    one_pass = 2 * g[0] * positions * prod(ws)
    return one_pass * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _conv_backward_formula(grad_out, x, w, _bias, _stride, _padding, _dilation, transposed, _output_padding,
                           _groups, output_mask, out_val=None, **kwargs) -> int:
    return conv_backward_flops(grad_out, x, w, transposed, output_mask)


def _cpu_sdpa_formula(q, k, v, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(_shape(q), _shape(k), _shape(v))


def _cpu_sdpa_backward_formula(grad_out, q, k, v, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(_shape(grad_out), _shape(q), _shape(k), _shape(v))


# Our additions to torch's table: the groups-aware conv backward and the CPU flash attention that
# ``F.scaled_dot_product_attention`` runs on CPU (torch counts only the CUDA kernels).
_EXTRA_FORMULAS = {aten.convolution_backward: _conv_backward_formula}
if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_formula
    _EXTRA_FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_formula


class FlopCounter(TorchDispatchMode):
    """Count FLOPs of the ops run inside ``with counter:`` (forward and backward); reusable, additive.

    ``total`` and ``by_op`` (op name -> FLOPs) accumulate over every ``with`` block until :meth:`reset`.
    """

    def __init__(self, track_uncounted: bool = False):
        super().__init__()
        self.formulas: Dict[Any, Callable] = {**flop_registry, **_EXTRA_FORMULAS}
        self.track_uncounted = track_uncounted
        self.total = 0
        self.by_op: Counter = Counter()
        self.uncounted: Counter = Counter()  # arithmetic op name -> output elements, if track_uncounted

    def reset(self) -> None:
        self.total = 0
        self.by_op.clear()
        self.uncounted.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = self.formulas.get(packet)
        if formula is not None:
            flops = int(formula(*args, **kwargs, out_val=out))
            self.total += flops
            self.by_op[str(packet)] += flops
        elif self.track_uncounted and packet not in _IGNORED and packet.__name__ not in _NO_ARITHMETIC:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.uncounted[str(packet)] += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
        return out


def count_flops(fn: Callable[[], Any], track_uncounted: bool = False) -> Tuple[Any, FlopCounter]:
    """Run ``fn()`` (e.g. a forward and ``backward()``) under a fresh :class:`FlopCounter`."""
    counter = FlopCounter(track_uncounted)
    with counter:
        result = fn()
    return result, counter


def linear_train_flops(rows: int, in_features: int, out_features: int, weight_grad: bool = True,
                       input_grad: bool = True) -> int:
    """Analytic FLOPs of a bias-free ``nn.Linear`` over ``rows`` vectors: forward, plus one forward's worth
    for each of the weight gradient and the input gradient that backward computes."""
    one = 2 * rows * in_features * out_features
    return one * (1 + int(weight_grad) + int(input_grad))


def dense_train_flops(num_params: int, num_tokens: float, trainable_fraction: float = 1.0,
                      backprop_through: bool = True) -> float:
    """Kaplan et al.'s estimate ``6 N D`` for a dense network, split as the backward really runs.

    Forward costs ``2 N D``; backward costs ``2 N D`` for input gradients (only where something
    trainable lies below, ``backprop_through``) plus ``2 N D`` times the trainable fraction for weight
    gradients. A frozen network over a trainable one: ``4 N D``; frozen with nothing below: ``2 N D``.
    """
    if not 0.0 <= trainable_fraction <= 1.0:
        raise ValueError(f"trainable_fraction must be in [0, 1], got {trainable_fraction}")
    fwd = 2.0 * num_params * num_tokens
    return fwd * (1.0 + float(backprop_through) + trainable_fraction)


FLOPS_FILE = "flops.json"


def update_flops_file(exp_dir: Union[str, Path], step: int, epoch: int, flops: float, epoch_finished: bool,
                      count_every: int) -> Path:
    """Record the training compute so far in ``exp_dir/flops.json`` (atomically; earlier epochs are kept).

    ``{"step", "epoch", "flops", "epoch_finished", "count_every", "epochs": {"1": {"step", "flops"}, ...}}``:
    the top level is the newest state, ``epochs`` the totals at the end of each finished epoch, so a
    decode of ``epoch-E.pt`` can be matched with the compute that produced it.
    """
    path = Path(exp_dir) / FLOPS_FILE
    info = read_flops_file(path) if path.exists() else {}
    epochs = info.get("epochs", {}) if isinstance(info.get("epochs"), dict) else {}
    if epoch_finished:
        epochs[str(epoch)] = {"step": int(step), "flops": float(flops)}
    # epochs after this one belong to an earlier run that went further (restarted from an older checkpoint)
    epochs = {k: v for k, v in epochs.items() if int(k) <= epoch}
    info = {"step": int(step), "epoch": int(epoch), "flops": float(flops), "epoch_finished": bool(epoch_finished),
            "count_every": int(count_every), "epochs": dict(sorted(epochs.items(), key=lambda kv: int(kv[0])))}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_flops_file(path: Union[str, Path]) -> Dict[str, Any]:
    """Parse ``flops.json``; errors name the file."""
    path = Path(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read training FLOPs from {path}: {e}") from e
    if not isinstance(info, dict) or not isinstance(info.get("flops"), (int, float)):
        raise ValueError(f"{path} has no numeric 'flops' entry; it was not written by asrkit's Trainer")
    return info
