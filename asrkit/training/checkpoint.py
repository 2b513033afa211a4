"""Checkpoints that survive crashes and load safely.

A training job can be killed at any moment (pre-emption, OOM, Ctrl-C), so a checkpoint is written to
a temporary file in the same directory, flushed and fsynced, and only then renamed over its final
name: ``path`` holds either the old checkpoint or the new one, never half of one. Loading always uses
``torch.load(..., weights_only=True)``, so every state we save is made of tensors, numbers, strings,
lists, tuples and dicts; :func:`get_rng_state` converts the python/numpy/torch RNG states to that form.

Files in an experiment dir::

    checkpoint-<step>.pt   every ``save_every_n`` steps (the last k are kept)
    epoch-<n>.pt           at the end of each epoch (all kept; averaged for decoding)
    best-valid-loss.pt     the checkpoint with the lowest validation loss so far
"""

import logging
import math
import os
import pickle
import random
import re
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

__all__ = [
    "average_checkpoints",
    "check_weights_only",
    "find_checkpoints",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_old_checkpoints",
    "save_checkpoint",
    "set_rng_state",
]

_STEP_RE = re.compile(r"checkpoint-(\d+)\.pt")
_EPOCH_RE = re.compile(r"epoch-(\d+)\.pt")
_SAFE_LEAVES = (torch.Tensor, str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device,
                torch.Size)


def check_weights_only(obj: Any, where: str = "state") -> None:
    """Raise TypeError naming the first entry of ``obj`` that ``weights_only=True`` could not load."""
    if isinstance(obj, _SAFE_LEAVES):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise TypeError(f"{where} has a key of type {type(k).__name__} ({k!r}); use str or int keys")
            check_weights_only(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_weights_only(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}, which torch.load(weights_only=True) "
        "cannot read; convert it to tensors/lists/numbers/strings before saving"
    )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (temp file + fsync + rename + dir fsync)."""
    path = Path(path)
    check_weights_only(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    log.info("saved checkpoint %s", path)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a damaged file gives an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if unsafe:
            raise RuntimeError(
                f"checkpoint {path} holds objects that torch.load(weights_only=True) refuses to load "
                f"({unsafe[0]}); it was not written by asrkit: re-save it with plain tensors, lists and numbers"
            ) from e
        raise _corrupt(path, e) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as e:
        raise _corrupt(path, e) from e


def _corrupt(path: Path, e: BaseException) -> RuntimeError:
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut-off file loses its central directory
        detail = f"not a complete zip archive, {path.stat().st_size} bytes"
    else:
        detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return RuntimeError(f"truncated or corrupt checkpoint {path} ({detail}); delete it or resume from an earlier one")


# ---------------------------------------------------------------------------------------------- RNG


def get_rng_state() -> Dict[str, Any]:
    """Python, numpy, torch CPU and CUDA RNG states as weights_only-loadable data."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("checkpoint has %d CUDA RNG states but %d GPUs are visible; CUDA RNG not restored",
                        len(cuda_states), torch.cuda.device_count())


# ------------------------------------------------------------------------------ finding and pruning


def find_checkpoints(exp_dir: PathLike, kind: str = "step") -> List[Path]:
    """Checkpoints in ``exp_dir`` oldest first: ``kind`` "step" (checkpoint-N.pt) or "epoch" (epoch-N.pt)."""
    pattern = {"step": _STEP_RE, "epoch": _EPOCH_RE}.get(kind)
    if pattern is None:
        raise ValueError(f"kind must be 'step' or 'epoch', got {kind!r}")
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in exp_dir.iterdir() if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _progress(path: Path) -> Tuple[float, ...]:
    """(step, epoch finished) stored in a trainer checkpoint, read lazily (tensors are mmapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return (float(state["step"]), float(bool(state.get("epoch_finished"))))
    except Exception:  # not a trainer checkpoint, or damaged: fall back to the file's age
        return (-math.inf, 0.0)


def latest_checkpoint(exp_dir: PathLike) -> Optional[Path]:
    """The checkpoint a killed run should resume from (None if there is none).

    The newest step checkpoint and the newest epoch checkpoint are compared by the training step
    they hold (an epoch checkpoint wins a tie: its epoch is complete), then by modification time.
    """
    candidates = [c[-1] for c in (find_checkpoints(exp_dir, "step"), find_checkpoints(exp_dir, "epoch")) if c]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    return max(candidates, key=lambda p: (*_progress(p), p.stat().st_mtime_ns))


def remove_old_checkpoints(exp_dir: PathLike, keep_last_k: int) -> List[Path]:
    """Delete all but the newest ``keep_last_k`` step checkpoints (0 keeps all); returns the deleted."""
    if keep_last_k <= 0:
        return []
    old = find_checkpoints(exp_dir, "step")[:-keep_last_k]
    for p in old:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    return old


# ------------------------------------------------------------------------------------------- averaging


def _model_state(ckpt: Dict[str, Any], path: Path) -> Dict[str, torch.Tensor]:
    if "model" in ckpt and isinstance(ckpt["model"], dict):
        return ckpt["model"]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt  # a bare state_dict
    raise KeyError(f"{path} has no 'model' entry (keys: {sorted(ckpt)[:10]})")


def average_checkpoints(paths: Sequence[PathLike], map_location: str = "cpu") -> Dict[str, torch.Tensor]:
    """Plain average of the model parameters in ``paths``; integer buffers are taken from the last.

    Floating-point tensors are summed in float64 and cast back to their dtype. Each entry of ``paths``
    is a trainer checkpoint (with a "model" entry) or a bare state_dict.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint path")
    sums: Dict[str, torch.Tensor] = {}
    last: Dict[str, torch.Tensor] = {}
    for i, path in enumerate(paths):
        state = _model_state(load_checkpoint(path, map_location), path)
        if i > 0 and set(state) != set(last):
            diff = sorted(set(state) ^ set(last))[:5]
            raise KeyError(f"{path} has different parameters from {paths[0]} (e.g. {diff}); same model?")
        for k, v in state.items():
            if v.is_floating_point() or v.is_complex():
                acc = v.to(torch.complex128 if v.is_complex() else torch.float64)
                sums[k] = acc if i == 0 else sums[k] + acc
        last = state
    n = len(paths)
    return {k: (sums[k] / n).to(v.dtype) if k in sums else v for k, v in last.items()}


def epoch_checkpoints(exp_dir: PathLike, epoch: int, avg: int = 1) -> List[Path]:
    """``epoch-{epoch-avg+1..epoch}.pt`` in ``exp_dir`` (icefall's ``--epoch E --avg N``); all must exist."""
    exp_dir = Path(exp_dir)
    paths = [exp_dir / f"epoch-{e}.pt" for e in range(max(1, epoch - avg + 1), epoch + 1)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing checkpoints {missing}; train more epochs or lower --epoch/--avg")
    return paths


def averaged_state_dict(exp_dir: PathLike, epoch: int, avg: int = 1, use_averaged_model: bool = False
                        ) -> Dict[str, torch.Tensor]:
    """The weights ``asrkit decode/export --epoch E --avg N [--use-averaged-model]`` stand for.

    Plain: the mean of ``epoch-{E-N+1..E}.pt``. With ``use_averaged_model`` (icefall's default): the
    mean of the weights at every ``average_period`` steps taken during epochs E-N+1..E, recovered from
    the running averages stored in ``epoch-{E-N}.pt`` and ``epoch-E.pt`` as
    ``(avg_E * n_E - avg_start * n_start) / (n_E - n_start)`` (``n`` = steps); when E == N the start
    is the beginning of training and ``avg_E`` itself is the answer. Finer-grained than averaging N
    epoch checkpoints, and as cheap.
    """
    if not use_averaged_model:
        return average_checkpoints(epoch_checkpoints(exp_dir, epoch, avg))
    exp_dir = Path(exp_dir)
    if avg < 1 or epoch - avg < 0:
        raise ValueError(f"--use-averaged-model needs 1 <= --avg <= --epoch, got epoch {epoch}, avg {avg}")
    end_path = exp_dir / f"epoch-{epoch}.pt"
    end = _averaged_entry(end_path)
    if epoch == avg:
        avg_end = end["model_avg"]
        return {k: v.to(end["model"][k].dtype) for k, v in avg_end.items()}
    start_path = exp_dir / f"epoch-{epoch - avg}.pt"
    start = _averaged_entry(start_path)
    n_end, n_start = int(end["step"]), int(start["step"])
    if n_end <= n_start:
        raise ValueError(f"{end_path} (step {n_end}) is not later than {start_path} (step {n_start})")
    out = {}
    for k, v in end["model_avg"].items():
        if v.is_floating_point():
            mean = (v.double() * n_end - start["model_avg"][k].double() * n_start) / (n_end - n_start)
            out[k] = mean.to(end["model"][k].dtype)
        else:
            out[k] = end["model"][k]
    return out


def _averaged_entry(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint {path}; train more epochs or lower --epoch/--avg")
    ckpt = load_checkpoint(path, map_location="cpu")
    if "model_avg" not in ckpt or "step" not in ckpt:
        raise KeyError(f"{path} has no running model average (trained with train.average_period=0?); "
                       f"decode without --use-averaged-model")
    return ckpt
