"""Any model file fireablate writes, loaded and evaluated: ``.pt``, compressed ``.fadc``, ``.onnx``.

A model file alone does not say which images it was trained on, and fireablate normalizes inputs
with the training split's mean and std, so each kind of file carries a hint: a run's ``best.pt``
sits beside its ``result.json``, a compressed file and an exported ONNX model record the data in
their metadata. ``evaluate_file`` uses that data unless the command line names other data, and asks for
``--data`` when a model records none.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import codec
from .augment import DIAGONAL_MOVES, eval_views
from . import spec as S
from .data import ImageData
from .errors import UsageError

ONNX_FORMAT = "fireablate-onnx/1"
EXPORT_EXTRA = "pip install -e '.[export]'"


def require_onnx() -> None:
    """The optional export dependencies, or one line saying how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UsageError(f"ONNX needs the optional export dependencies: {EXPORT_EXTRA}") from None


@dataclass
class LoadedModel:
    """A model ready to predict: ``predict(x)`` takes normalized float images, gives logits."""

    path: Path
    kind: str  # "pytorch", "compressed" or "onnx"
    spec: S.NetSpec
    predict: Callable[[np.ndarray], np.ndarray]
    data_hint: dict[str, Any] | None = None  # the data it was trained or compressed on, when known
    info: dict[str, Any] = field(default_factory=dict)


def _torch_predictor(model: torch.nn.Module, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    model = model.to(device).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return predict


def _run_hint(path: Path) -> dict[str, Any] | None:
    """The data of the run a ``best.pt`` / ``last.pt`` belongs to, from its ``result.json``, and
    how its recipe judged it: by the mean over mirror images (``flip``) and one-pixel moves (``moves``)."""
    from .config import TrainResult, run_id

    result = path.parent / "result.json"
    if not result.is_file():
        return None
    try:
        raw = json.loads(result.read_text())
        config = raw["config"]
        hint = {k: config.get(k) for k in ("data", "data_dir", "limit_train", "limit_test")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        # Only a run whose id today's recipe still gives ran that recipe: a `fast` run of an
        # earlier version, before flips were part of it, is judged without them.
        run = TrainResult.from_dict(raw)
        same_recipe = run_id(run.spec, run.config, run.data_identity) == run.run_id
        recipe = run.config.resolved_recipe
        hint["flip"], hint["moves"] = (recipe.tta_flip, recipe.tta_moves) if same_recipe else (False, 0)
    except Exception:  # a result of another version, or a recipe this one does not know: judged plainly
        hint["flip"], hint["moves"] = False, 0
    return hint


def onnx_metadata(model_proto) -> dict[str, str]:
    return {p.key: p.value for p in model_proto.metadata_props}


def load_onnx(path: Path, data: bytes | None = None):
    """(ModelProto, metadata) of an ONNX file that fireablate exported; one line for any other file."""
    require_onnx()
    import onnx

    try:
        proto = onnx.load_from_string(data if data is not None else path.read_bytes())
    except Exception:  # protobuf's DecodeError and friends: not an ONNX file at all
        raise UsageError(f"{path} is not an ONNX model (it does not parse)") from None
    meta = onnx_metadata(proto)
    if meta.get("fireablate_format") != ONNX_FORMAT:
        raise UsageError(f"{path} is an ONNX model that fireablate did not export: without its metadata the "
                         "network and its input normalization are unknown")
    try:
        spec = S.from_dict(json.loads(meta["spec"]))
    except (KeyError, ValueError, TypeError, S.SpecError):
        raise UsageError(f"{path}: its fireablate metadata is damaged") from None
    return proto, meta, spec


def ort_session(model: bytes, threads: int = 0):
    """An ONNX Runtime CPU session; ``threads`` 0 lets it use every core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are not the user's concern
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def load_any(path: Path, device: str = "cpu") -> LoadedModel:
    """Whatever fireablate wrote at ``path``, told apart by its first bytes, ready to predict."""
    from .devices import resolve_device

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    dev = resolve_device(device)
    if head.startswith(codec.MAGIC):
        from .compress import load_compressed

        model, decoded = load_compressed(path)
        info = {"layers": len(decoded.layers), "bytes": path.stat().st_size}
        return LoadedModel(path, "compressed", model.spec, _torch_predictor(model, dev), decoded.meta.get("data"), info)
    if head.startswith(b"PK"):  # torch.save's zip container
        from .model import load_model

        model, payload = load_model(path)
        if payload.get("format") is None:
            raise UsageError(f"{path} is not a fireablate model file")
        return LoadedModel(path, "pytorch", model.spec, _torch_predictor(model, dev), _run_hint(path))
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"{path} is not a model file fireablate wrote (.pt, {codec.MAGIC[:4].decode()} compressed, .onnx)")
    raw = path.read_bytes()
    proto, meta, spec = load_onnx(path, raw)
    try:
        session = ort_session(raw)
    except Exception as exc:  # ONNX Runtime's own errors (a graph edited after export): one line
        raise UsageError(f"{path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0][:200]})") from None
    name = session.get_inputs()[0].name
    hint = json.loads(meta["data"]) if meta.get("data") else None
    info = {"int8": meta.get("int8") == "true"}
    return LoadedModel(path, "onnx", spec, lambda x: session.run(None, {name: x})[0], hint, info)


def normalizer(data: ImageData) -> Callable[[torch.Tensor], np.ndarray]:
    """uint8 images to normalized float32, with the training split's per-channel mean and std."""
    mean, std = data.channel_stats()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return lambda x: ((x.float() / 255 - m) / s).numpy()


def accuracy(predict: Callable[[np.ndarray], np.ndarray], data: ImageData, batch: int = 500,
             flip: bool = False, moves: int = 0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``predict`` on the test split, of each image's logits
    averaged over its test-time views (``augment.eval_views``: with ``flip`` its mirror image,
    ``moves`` one-pixel moves), as a recipe with test-time views judges a run."""
    norm = normalizer(data)
    n, loss, correct = len(data.test_y), 0.0, 0
    for i in range(0, n, batch):
        views = eval_views(torch.from_numpy(norm(data.test_x[i:i + batch])), flip, moves)
        logits = sum(torch.from_numpy(np.asarray(predict(v.contiguous().numpy()), dtype=np.float32)) for v in views)
        logits = logits / len(views)
        y = data.test_y[i:i + batch]
        loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    return loss / n, correct / n


def data_options(hint: dict[str, Any] | None, data: str | None, data_dir: str | None, limit_train: int | None,
                 limit_test: int | None) -> dict[str, Any]:
    """The data to use: the command line's, else the model's own (its hint); one of them is needed.

    Naming other data drops the hint's folder and limits, which belong to the hint's data.
    """
    if hint is None and data is None:
        raise UsageError("this model file does not record the data it was trained on: give --data")
    base = dict(hint or {})
    if data is not None and data != base.get("data"):
        base = {"data": data}
    for key, value in (("data_dir", data_dir), ("limit_train", limit_train), ("limit_test", limit_test)):
        if value is not None:
            base[key] = value
    return {k: base.get(k) for k in ("data", "data_dir", "limit_train", "limit_test")}


def load_data_for(spec: S.NetSpec, options: dict[str, Any]) -> ImageData:
    from .data import load

    data = load(options["data"], Path(options["data_dir"]) if options.get("data_dir") else None,
                options.get("limit_train"), options.get("limit_test"))
    if data.image_shape != (spec.in_channels, spec.input_size, spec.input_size) or len(data.classes) != spec.num_classes:
        c, h, w = data.image_shape
        raise UsageError(f"the model takes {spec.in_channels}x{spec.input_size}x{spec.input_size} images and "
                         f"{spec.num_classes} classes, but {data.source} has {c}x{h}x{w} images and "
                         f"{len(data.classes)} classes; give its own --data")
    return data


@dataclass
class Evaluation:
    model: str
    kind: str
    data: str
    n_test: int
    loss: float
    accuracy: float
    seconds: float
    bytes: int
    flip: bool  # the mean over each image and its mirror
    moves: int  # ...and over one-pixel moves of each (augment.eval_views)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate_file(path: Path, data: str | None = None, data_dir: str | None = None, limit_train: int | None = None,
                  limit_test: int | None = None, device: str = "cpu", images: ImageData | None = None,
                  flip: bool | None = None) -> Evaluation:
    """``fireablate evaluate``: accuracy and loss of a model file on a dataset's test split; by
    default (``flip=None``) judged as the model's run judged it, over the test-time views its recipe
    names; ``flip=False``: on the images as they are; ``flip=True``: over each image and its mirror,
    and the one-pixel moves the run's recipe names."""
    loaded = load_any(path, device)
    if images is None:
        images = load_data_for(loaded.spec, data_options(loaded.data_hint, data, data_dir, limit_train, limit_test))
    hint = loaded.data_hint or {}
    if flip is None:
        flip = bool(hint.get("flip", False))
    moves = hint.get("moves", 0) if flip else 0
    if type(moves) is not int or not 0 <= moves <= len(DIAGONAL_MOVES):  # a file's metadata is not trusted
        moves = 0
    t0 = time.perf_counter()
    loss, acc = accuracy(loaded.predict, images, flip=flip, moves=moves)
    return Evaluation(str(path), loaded.kind + (" int8" if loaded.info.get("int8") else ""), images.source,
                      len(images.test_y), loss, acc, time.perf_counter() - t0, Path(path).stat().st_size, flip, moves)
