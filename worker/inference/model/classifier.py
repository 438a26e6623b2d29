"""Load a deepfake classifier checkpoint and score batches of preprocessed images with it.

A checkpoint is a Hugging Face image classifier (ViTForImageClassification) with its saved image
processor, either a hub id (optionally pinned to a revision) or a local ``save_pretrained``
directory. Its classes are mapped to fake/real by *name* (``labels.fake_real_indices``), never by
index, because public checkpoints disagree on the order.

Every detector carries a ``version`` that identifies the exact weights it runs and the numerics it
runs them in, so stored verdicts (and the exact-duplicate cache keyed on image bytes) never mix two
models, nor a GPU's bf16 scores with a CPU's fp32 ones (see :data:`PRECISION_TOLERANCE`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfscan.exceptions import InferenceError, LabelMappingError, ModelLoadError
from worker.inference.model.labels import fake_real_indices
from worker.inference.model.onnx_runtime import default_cache_dir
from worker.inference.model.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)

# Files whose bytes decide what a local checkpoint computes: weights (single or sharded), the model
# config (labels, architecture) and the preprocessing config (size, normalisation).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_DECISIVE_JSON = ("config.json", "preprocessor_config.json", "model.safetensors.index.json")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# The numerics a model runs in: fp32 (CPU, always; CUDA on request) or a CUDA autocast dtype. The version
# of a bf16 or fp16 classifier ends in ``+bf16`` / ``+fp16`` (fp32 adds nothing), so the duplicate cache
# keeps their verdicts apart. They can share it only where the operator has measured (``bench/gpu.py``:
# max |p(bf16) - p(fp32)| on the same images) a difference within PRECISION_TOLERANCE and says so with
# DFSCAN_SHARE_CACHE_ACROSS_PRECISION: then the suffix is left out and both answer for each other.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_TOLERANCE = 0.01
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
# After an out-of-memory split, this many successful forwards at the smaller chunk let it double again
# (the memory that ran out is usually another process's or a transient peak, not this model's for good).
GROW_AFTER = 16

_HUB_HINT = (
    "If this machine cannot reach huggingface.co, download the checkpoint elsewhere "
    "(e.g. `hf download {ref} --local-dir ./model`, the huggingface_hub CLI), copy the directory here and set "
    "DFSCAN_MODEL to that local directory."
)


@dataclass
class Classifier:
    """A loaded classifier, ready to score batches. Build it with :func:`load_classifier`."""

    version: str
    source: str
    device: torch.device
    preprocess: PreprocessConfig
    fake_index: int
    real_index: int
    id2label: dict[int, str]
    int8: bool
    model: torch.nn.Module = field(repr=False)
    # Largest chunk the device managed after an out-of-memory error; later batches start there, and
    # after GROW_AFTER successful forwards at it the chunk doubles again (None: no limit).
    max_chunk: int | None = field(default=None, repr=False)
    # "fp32" or the CUDA autocast dtype's name ("bf16", "fp16"): what the version's suffix says.
    precision: str = "fp32"
    _fits: int = field(default=0, repr=False)

    def predict(self, pixels: torch.Tensor) -> list[float]:
        """Score a batch: ``(N, 3, H, W)`` float32 pixels -> N p(fake) values in [0, 1].

        p(fake) is the softmax over the two classes, read at the fake column. Runs under
        ``torch.inference_mode()``. On CUDA the input moves from pinned memory with
        ``non_blocking=True`` and the forward autocasts to bf16 (fp16 where bf16 is unsupported); on
        CPU it is always fp32 (no bf16 units on common server CPUs: emulated bf16 is ~6x slower).

        On ``torch.cuda.OutOfMemoryError`` the batch is split in halves and retried, down to one
        image; the smaller size is remembered for later calls, and doubles again after
        :data:`GROW_AFTER` forwards that fit. Raises InferenceError when even one image does not fit, or
        when the output breaks an invariant (not N finite values).
        """
        self._check_input(pixels)
        n = int(pixels.shape[0])
        if n == 0:
            return []
        scores: list[float] = []
        chunk = min(n, self.max_chunk or n)
        start = 0
        while start < n:
            piece = pixels[start : start + chunk]
            try:
                scores.extend(self._forward(piece))
            except torch.cuda.OutOfMemoryError as exc:
                if chunk == 1:
                    raise InferenceError(
                        f"out of device memory on a single image with model {self.version} on "
                        f"{self.device}: free GPU memory (fewer worker processes per GPU) or run on CPU"
                    ) from exc
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                chunk = max(1, chunk // 2)
                self.max_chunk = chunk
                logger.warning(
                    "out of memory on %s; retrying in chunks of %d",
                    self.device,
                    chunk,
                    extra={"model_version": self.version},
                )
                continue
            start += len(piece)
            self._grow_back(n)
        if len(scores) != n or not all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores):
            raise InferenceError(
                f"model {self.version} returned {len(scores)} scores for {n} images, or a non-finite "
                f"score: {scores[:8]}; the checkpoint is broken (NaN weights?) or the input is not "
                "normalised pixels; check the model with `dfscan scan` on a known image"
            )
        return scores

    def _grow_back(self, batch: int) -> None:
        """Count a forward that fit; after GROW_AFTER of them at a split size, double the size again (no
        limit once it reaches ``batch``, the size of the batches now asked for)."""
        if self.max_chunk is None:
            return
        self._fits += 1
        if self._fits >= GROW_AFTER:
            self._fits = 0
            grown = self.max_chunk * 2
            self.max_chunk = None if grown >= batch else grown
            logger.info(
                "no out-of-memory error in %d forwards on %s; chunks of up to %s images again",
                GROW_AFTER,
                self.device,
                self.max_chunk or "any number of",
                extra={"model_version": self.version},
            )

    def warm_up(self, batch: int = 1) -> None:
        """One forward on ``batch`` blank images, so the first real batch does not pay for lazy CUDA module
        loading, cuBLAS/cuDNN handles and kernel selection (hundreds of ms on a GPU)."""
        height, width = self.preprocess.size
        self.predict(torch.zeros(batch, 3, height, width))

    def _check_input(self, pixels: torch.Tensor) -> None:
        height, width = self.preprocess.size
        expected = f"(N, 3, {height}, {width}) float32"
        if not isinstance(pixels, torch.Tensor):
            raise InferenceError(f"predict() takes a tensor {expected}, got {type(pixels).__name__}")
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, height, width):
            raise InferenceError(
                f"predict() expected pixels of shape {expected}, got {tuple(pixels.shape)}; build "
                "batches with preprocess.load_pixels(data, detector.preprocess, ...) so that the "
                "image size matches this checkpoint's saved preprocessor"
            )
        if pixels.dtype != torch.float32:
            raise InferenceError(
                f"predict() expected float32 pixels, got {pixels.dtype}; autocast is applied inside "
                "predict(), do not cast the input"
            )

    def _forward(self, piece: torch.Tensor) -> list[float]:
        with torch.inference_mode():
            if self.device.type == "cuda":
                if not piece.is_pinned():
                    piece = piece.pin_memory()
                piece = piece.to(self.device, non_blocking=True)
                amp = _AUTOCAST.get(self.precision)
                if amp is None:
                    logits = self.model(pixel_values=piece).logits
                else:
                    with torch.autocast("cuda", dtype=amp):
                        logits = self.model(pixel_values=piece).logits
            else:
                logits = self.model(pixel_values=piece).logits
            pair = logits.float()[:, [self.fake_index, self.real_index]]
            p_fake = torch.softmax(pair, dim=-1)[:, 0]
            result: list[float] = p_fake.cpu().tolist()
        return result


RUNTIMES = ("auto", "torch", "onnx")
DIGESTS_FILE = "digests.json"


def load_classifier(
    ref: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    int8: bool = False,
    threads: int | None = None,
    runtime: str = "torch",
    onnx_cache: Path | None = None,
    precision: str = "auto",
    share_cache_across_precision: bool = False,
    warm_up: bool | None = None,
) -> Classifier:
    """Load the checkpoint ``ref`` (hub id or local directory) onto ``device``.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``. ``threads`` sets
    torch's intra-op threads (a worker passes cores // processes so processes do not oversubscribe).

    ``int8`` (CPU only) applies dynamic int8 quantisation to the Linear layers
    (``torch.ao.quantization.quantize_dynamic``). Dynamic quantisation computes one activation scale
    per batch, so an image's int8 score depends slightly on the other images in its batch; fp32
    scores do not.

    ``runtime="onnx"`` (CPU only) runs the model with ONNX Runtime instead of torch, from an export
    cached per model version under ``onnx_cache`` (see :mod:`worker.inference.model.onnx_runtime`); fp32
    scores match torch's within 1e-5, so the version is the same. With ``int8`` the export is
    quantised by ONNX Runtime and the version gains ``+int8-onnx`` (other int8 weights than torch's).
    When the export is already cached, the torch weights are not loaded at all (nor ``transformers``'
    modelling code imported): the start-up of a warm ``dfscan scan`` is mostly importing torch.

    ``runtime="auto"`` (the settings' default) is ``onnx`` on CPU in fp32, where its scores and version
    are torch's, and ``torch`` otherwise (CUDA, ``int8``, ``onnxruntime`` not installed). If the ONNX
    path fails under ``auto`` (an architecture the exporter cannot trace, a cache that cannot be
    written), the model runs with torch and a warning says why.

    ``precision``: ``auto`` is fp32 on CPU and, on CUDA, bf16 autocast where the GPU computes bf16 natively
    (compute capability 8.0 and later: A100, H100, L4, RTX 30xx on) and fp16 autocast before that (V100,
    T4); ``fp32``, ``bf16`` and ``fp16`` ask for one (bf16 and fp16 on CUDA only). The version gains
    ``+bf16`` or ``+fp16`` (see :data:`PRECISION_TOLERANCE`) unless ``share_cache_across_precision``.
    ``warm_up`` (default: on CUDA) runs one forward before returning.

    A local directory's version hashes its weights; the hash is cached in ``onnx_cache``
    (``digests.json``) by path, size, mtime and inode, so a warm start does not read the weights.

    Raises ModelLoadError (unreachable hub, missing directory, not an image classifier, device not
    available) or LabelMappingError (classes that are not real/fake).
    """
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown runtime {runtime!r}; use auto, torch or onnx")
    if runtime == "onnx" and device == "cuda":
        raise ModelLoadError(
            "the onnx runtime is CPU only, but DFSCAN_DEVICE=cuda; set DFSCAN_DEVICE=cpu (or auto) to use "
            "it, or unset DFSCAN_RUNTIME to run torch on the GPU"
        )
    target = _pick_device("cpu" if runtime == "onnx" else device)
    if int8 and target.type != "cpu":
        raise ModelLoadError(f"int8 quantisation is CPU only, but the device is {target}; unset DFSCAN_INT8")
    numerics = resolve_precision(precision, target)
    chosen = _resolve_runtime(runtime, target, int8)
    cache_dir = (onnx_cache or default_cache_dir()).expanduser()

    location, version, revision = _locate(ref, revision, cache_dir)
    architectures, model_type, id2label = _load_config(ref, location, revision)
    if not any(name.endswith("ForImageClassification") for name in architectures):
        raise ModelLoadError(
            f"checkpoint {ref!r} is not an image classifier (architectures={architectures}, "
            f"model_type={model_type!r}); dfscan needs a *ForImageClassification checkpoint "
            "such as ViTForImageClassification"
        )
    fake_index, real_index = fake_real_indices({k: v for k, v in id2label.items()})
    try:
        preprocess = PreprocessConfig.from_pretrained(location, revision=revision)
    except (LabelMappingError, ModelLoadError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load checkpoint {ref!r}: {exc}") from exc

    model: torch.nn.Module | None = None
    if chosen == "onnx":
        model = _cached_onnx(version, int8, cache_dir, fallback=runtime == "auto")
    if model is None:
        model = _load_torch(ref, location, revision, target)
        if chosen == "onnx":
            onnx_model = _export_onnx(model, version, preprocess, int8, cache_dir, fallback=runtime == "auto")
            if onnx_model is None:
                chosen = "torch"
            else:
                model = onnx_model
    if chosen == "onnx":
        version += "+int8-onnx" if int8 else ""
    elif int8:
        model = _quantise_int8(model)
        version += "+int8"
    if numerics != "fp32" and not share_cache_across_precision:
        version += f"+{numerics}"
    logger.info(
        "loaded model %s on %s with %s in %s (fake=%d real=%d, int8=%s, threads=%d)",
        version,
        target,
        chosen,
        numerics,
        fake_index,
        real_index,
        int8,
        torch.get_num_threads(),
        extra={"model_version": version},
    )
    classifier = Classifier(
        version=version,
        source=ref,
        device=target,
        preprocess=preprocess,
        fake_index=fake_index,
        real_index=real_index,
        id2label=id2label,
        int8=int8,
        model=model,
        precision=numerics,
    )
    if warm_up if warm_up is not None else target.type == "cuda":
        classifier.warm_up()
    return classifier


def resolve_precision(precision: str, target: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what ``precision`` (see :func:`load_classifier`) means on ``target``.

    bf16 counts only where the GPU computes it natively (compute capability 8.0 on): torch's
    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is emulated (it runs, many times slower),
    so it would never choose the fp16 a V100 or T4 needs.
    """
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if target.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ModelLoadError(
                f"precision {precision} is CUDA only (autocast on the GPU), but the device is {target}; "
                "unset DFSCAN_PRECISION (CPU runs fp32)"
            )
        return "fp32"
    native_bf16 = native_bf16_cuda(target)
    if precision == "auto":
        return "bf16" if native_bf16 else "fp16"
    if precision == "bf16" and not native_bf16:
        raise ModelLoadError(
            f"DFSCAN_PRECISION=bf16 but {torch.cuda.get_device_name(target)} has no native bf16 (compute "
            "capability below 8.0); use fp16 or auto"
        )
    return precision


def native_bf16_cuda(target: torch.device) -> bool:
    """Whether the CUDA device computes bf16 natively (Ampere, compute capability 8.0, and later)."""
    major, _ = torch.cuda.get_device_capability(target)
    return major >= 8


def _resolve_runtime(runtime: str, target: torch.device, int8: bool) -> str:
    """``auto`` is onnx where it computes what torch computes (CPU, fp32) and is installed; else torch."""
    if runtime != "auto":
        return runtime
    if target.type != "cpu" or int8:
        return "torch"
    if importlib.util.find_spec("onnxruntime") is None:
        logger.info("onnxruntime is not installed; running the model with torch")
        return "torch"
    return "onnx"


def _cached_onnx(version: str, int8: bool, cache_dir: Path, *, fallback: bool) -> torch.nn.Module | None:
    """A session on this version's cached export, or None when there is none (or, under auto, a bad one)."""
    from worker.inference.model.onnx_runtime import OnnxClassifier, cached_export

    path = cached_export(version, int8=int8, cache_dir=cache_dir)
    if path is None:
        return None
    try:
        return OnnxClassifier(path, torch.get_num_threads())
    except ModelLoadError as exc:
        if not fallback:
            raise
        logger.warning("%s; running with torch instead", exc, extra={"model_version": version})
        return None


def _export_onnx(
    model: torch.nn.Module,
    version: str,
    preprocess: PreprocessConfig,
    int8: bool,
    cache_dir: Path,
    *,
    fallback: bool,
) -> torch.nn.Module | None:
    from worker.inference.model.onnx_runtime import onnx_classifier

    try:
        return onnx_classifier(
            model,
            version=version,
            image_size=preprocess.size,
            int8=int8,
            threads=torch.get_num_threads(),
            cache_dir=cache_dir,
        )
    except ModelLoadError as exc:
        if not fallback:
            raise
        logger.warning("%s; running with torch instead", exc, extra={"model_version": version})
        return None


def _load_torch(ref: str, location: str, revision: str | None, target: torch.device) -> torch.nn.Module:
    # Imported here: a warm ONNX start never needs transformers' modelling code (~1.5 s of imports).
    from transformers import AutoModelForImageClassification

    try:
        model: torch.nn.Module = AutoModelForImageClassification.from_pretrained(
            location, revision=revision, dtype=torch.float32, local_files_only=hub_offline()
        )
    except (LabelMappingError, ModelLoadError):
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load checkpoint {ref!r}: {exc}") from exc
    model.eval()
    model.to(target)
    return model


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("DFSCAN_DEVICE=cuda but no CUDA device is available; use auto or cpu")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def _locate(ref: str, revision: str | None, cache_dir: Path | None = None) -> tuple[str, str, str | None]:
    """Return ``(location, version, revision)``; for the hub, revision becomes the resolved commit."""
    path = Path(ref).expanduser()
    if path.is_dir():
        digest = cached_checkpoint_digest(path, cache_dir) if cache_dir else checkpoint_digest(path)
        return str(path), f"{path.resolve().name}@sha256:{digest[:12]}", None
    if path.exists() or not _HUB_ID.match(ref):
        raise ModelLoadError(
            f"model {ref!r} is neither a checkpoint directory nor a hub id; point DFSCAN_MODEL at a "
            "directory written by save_pretrained (config.json, weights, preprocessor_config.json)"
        )
    from transformers.utils.hub import cached_file, extract_commit_hash

    try:
        # HF_HUB_OFFLINE is read here, at load time (huggingface_hub reads it once, at import).
        config_file = cached_file(ref, "config.json", revision=revision, local_files_only=hub_offline())
    except Exception as exc:  # hub and network errors come in many classes (OSError, HTTP, offline)
        raise ModelLoadError(
            f"cannot fetch model {ref!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" from the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            + ("No local directory of that name exists either. " if "/" in ref else "")
            + _HUB_HINT.format(ref=ref)
        ) from exc
    commit = extract_commit_hash(config_file, revision if revision and _COMMIT.match(revision) else None)
    if commit is None:
        raise ModelLoadError(f"cannot tell which commit of {ref!r} was loaded; pin DFSCAN_MODEL_REVISION")
    return ref, f"hub:{ref}@{commit}", commit


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for cache-only hub access."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _load_config(ref: str, location: str, revision: str | None) -> tuple[list[str], str, dict[int, str]]:
    """``(architectures, model_type, id2label)`` of the checkpoint.

    A local directory's ``config.json`` is read as JSON (what ``AutoConfig`` reads, without importing
    transformers, ~0.7 s of a warm start); ``id2label`` defaults as ``PretrainedConfig`` does. A hub
    id goes through ``AutoConfig`` and the transformers file cache.
    """
    local = Path(location)
    if local.is_dir():
        config_path = local / "config.json"
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"{config_path} does not hold a JSON object")
            raw = data.get("id2label") or {i: f"LABEL_{i}" for i in range(int(data.get("num_labels", 2)))}
            id2label = {int(k): str(v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"cannot read the config of checkpoint {ref!r}: {exc}") from exc
        return list(data.get("architectures") or []), str(data.get("model_type")), id2label
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(location, revision=revision, local_files_only=hub_offline())
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot read the config of checkpoint {ref!r}: {exc}") from exc
    architectures = list(getattr(config, "architectures", None) or [])
    return architectures, config.model_type, {int(k): str(v) for k, v in (config.id2label or {}).items()}


def checkpoint_digest(path: Path) -> str:
    """sha256 over the names and bytes of the files that decide what a local checkpoint computes."""
    files = _decisive_files(path)
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode() + b"\0")
        with p.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def cached_checkpoint_digest(path: Path, cache_dir: Path) -> str:
    """:func:`checkpoint_digest`, remembered in ``cache_dir/digests.json`` by path and file stats.

    An entry is used only when every decisive file still has the same name, size, mtime, ctime, inode
    and device (``ctime`` cannot be set back by ``touch``, so rewriting a file always misses). Writers
    replace the file atomically (temporary file + rename): concurrent processes never read a torn file,
    and at worst one's entry is lost, which costs a re-hash, never a wrong version. A cache that cannot
    be read or written is ignored.
    """
    key = str(path.resolve())
    files = _decisive_files(path)
    stamp = [[p.name, *_stat_key(p)] for p in files]
    cache_file = cache_dir / DIGESTS_FILE
    entries = _read_digests(cache_file)
    entry = entries.get(key)
    if isinstance(entry, dict) and entry.get("files") == stamp and isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    digest = checkpoint_digest(path)
    # Read again (another process may have written meanwhile) and drop checkpoints that are gone.
    entries = {k: v for k, v in _read_digests(cache_file).items() if Path(k).is_dir()}
    entries[key] = {"files": stamp, "sha256": digest}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".digests-", suffix=".tmp", dir=cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entries, fh)
            os.chmod(tmp, 0o644)
            os.replace(tmp, cache_file)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        logger.debug("cannot write the digest cache %s: %s", cache_file, exc)
    return digest


def _stat_key(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_digests(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _decisive_files(path: Path) -> list[Path]:
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _DECISIVE_JSON)
    )
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise ModelLoadError(
            f"no weight file (*.safetensors, *.bin) in {path}; point DFSCAN_MODEL at a directory "
            "written by save_pretrained"
        )
    return files


def _quantise_int8(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, but still works in torch 2.x and
        # torchao is not a dependency; the warnings would repeat at every load.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        quantised: torch.nn.Module = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return quantised
