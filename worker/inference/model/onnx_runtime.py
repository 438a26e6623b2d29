"""Run a loaded classifier with ONNX Runtime on CPU instead of torch (``DFSCAN_RUNTIME=onnx``).

The fp32 model that :func:`worker.inference.model.classifier.load_classifier` loaded is exported to ONNX once per
model version (torch's TorchScript exporter, a dynamic batch axis) into a cache directory, then run by
an ``onnxruntime.InferenceSession`` with its graph optimisations on. Exports are written to a temporary
file and renamed into place, so worker processes that start together never read a half-written file.

:class:`OnnxClassifier` is a drop-in for the torch model inside a ``Classifier``: called with
``pixel_values=`` it returns an object with ``.logits``, so ``Classifier.predict`` (its input checks,
the softmax over the fake and real columns, the output invariants) is the same code for both runtimes.
fp32 ONNX computes the same logits as torch (within 1e-5), which is why the model version does not
change. ``int8`` quantises the exported graph with ONNX Runtime's dynamic quantisation (int8 weights,
one activation scale per batch, like torch's dynamic int8) and the version gains ``+int8-onnx``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from dfscan.exceptions import ModelLoadError

logger = logging.getLogger(__name__)

# Opset 17 is the newest the TorchScript exporter writes without warnings for ViT's ops (LayerNorm
# became a single op in 17); ONNX Runtime 1.16+ runs it.
OPSET = 17
INPUT, OUTPUT = "pixel_values", "logits"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dfscan/onnx`` (``~/.cache/dfscan/onnx`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dfscan" / "onnx"


def export_paths(version: str, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """Where the fp32 and int8 exports of ``version`` live: named by a sha256 over the version, the torch
    version and the opset, so a new model version or a torch upgrade exports again."""
    directory = (cache_dir or default_cache_dir()).expanduser()
    key = hashlib.sha256(f"{version}|torch {torch.__version__}|opset {OPSET}".encode()).hexdigest()[:32]
    return directory / f"{key}.onnx", directory / f"{key}.int8.onnx"


def cached_export(version: str, *, int8: bool, cache_dir: Path | None = None) -> Path | None:
    """The export :func:`onnx_classifier` would run for ``version``, if it is already in the cache."""
    fp32_path, int8_path = export_paths(version, cache_dir)
    path = int8_path if int8 else fp32_path
    return path if path.is_file() else None


@dataclass(frozen=True)
class _Output:
    logits: torch.Tensor


class OnnxClassifier(torch.nn.Module):
    """An ONNX Runtime session that answers like a transformers classifier: ``(pixel_values=x).logits``."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1  # one graph branch at a time: ViT is a chain of ops
        # Idle intra-op threads sleep instead of spinning. The model shares the cores with decode
        # threads (and, on a shared host, other processes): spinning burnt ~10% more CPU seconds on
        # `dfscan scan` of 96 photos with ViT-B on 2 cores (median of 3: 23.9 s vs 21.7 s) and bought no
        # wall time; a wake-up costs microseconds against a batch forward of ~1 s.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise ModelLoadError(
                f"ONNX Runtime cannot load {path} ({type(exc).__name__}: {exc}); delete the file so it is "
                "exported again, or unset DFSCAN_RUNTIME to run with torch"
            ) from exc
        self.path = path
        self.threads = max(1, threads)

    def forward(self, pixel_values: torch.Tensor) -> _Output:
        array = pixel_values.detach().cpu().contiguous().numpy()
        (logits,) = self.session.run([OUTPUT], {INPUT: array})
        return _Output(torch.from_numpy(logits))


def onnx_classifier(
    model: torch.nn.Module,
    *,
    version: str,
    image_size: tuple[int, int],
    int8: bool,
    threads: int,
    cache_dir: Path | None = None,
) -> OnnxClassifier:
    """Export ``model`` (fp32, CPU, eval) once per ``version`` into ``cache_dir``; return a session on it.

    The cache file is named by a sha256 over the version, the torch version and the opset, so a new
    model version or a torch upgrade exports again. With ``int8`` the fp32 export is quantised (also
    cached). Raises ModelLoadError when the model cannot be exported or the cache is not writable.
    """
    fp32_path, int8_path = export_paths(version, cache_dir)
    directory = fp32_path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not fp32_path.exists():
            _export(model, fp32_path, image_size, version)
        path = fp32_path
        if int8:
            path = int8_path
            if not path.exists():
                _quantise(fp32_path, path, version)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the ONNX export of {version} to {directory}: {exc}; set DFSCAN_ONNX_CACHE to a "
            "writable directory"
        ) from exc
    return OnnxClassifier(path, threads)


class _Logits(torch.nn.Module):
    """The transformers model as a function of one tensor, so the exporter sees ``logits = f(pixels)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


def _export(model: torch.nn.Module, path: Path, image_size: tuple[int, int], version: str) -> None:
    started = time.monotonic()
    # Batch 2, not 1: a size-1 dimension invites the tracer to specialise on it.
    example = torch.zeros(2, 3, *image_size, dtype=torch.float32)
    with _temporary(path) as tmp:
        try:
            with warnings.catch_warnings():
                # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
                # onnxscript (not a dependency). Its tracer warns about shape checks that only involve
                # the fixed image size, never the batch axis.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Logits(model).eval(),
                    (example,),
                    str(tmp),
                    dynamo=False,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                    opset_version=OPSET,
                    do_constant_folding=True,
                )
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"cannot export model {version} to ONNX ({type(exc).__name__}: {exc}); unset "
                "DFSCAN_RUNTIME to run it with torch"
            ) from exc
    logger.info(
        "exported %s to ONNX at %s in %.1fs",
        version,
        path,
        time.monotonic() - started,
        extra={"model_version": version},
    )


def _quantise(source: Path, path: Path, version: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.monotonic()
    with _temporary(path) as tmp, _quiet_root_warning("Please consider to run pre-processing"):
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    logger.info(
        "quantised the ONNX export of %s to int8 at %s in %.1fs",
        version,
        path,
        time.monotonic() - started,
        extra={"model_version": version},
    )


@contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path``, renamed onto it when the block succeeds, removed otherwise."""
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it 0600; other users' workers may share the cache
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _quiet_root_warning(prefix: str) -> Iterator[None]:
    """Drop one known root-logger message (quantize_dynamic logs it through ``logging.warning``)."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
