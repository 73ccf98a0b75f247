"""Image datasets held as one uint8 tensor each, decoded once and cached on disk.

Three sources: the official CIFAR-10 (python pickles, downloaded on first use), any folder in
ImageFolder layout with ``train/`` and ``test/``, and a generated synthetic set for tests and
demos. Whatever the source, the result is an ``ImageData``: uint8 (N, C, H, W) tensors and int64
labels, so a training step is a slice of a shuffled index, never per-image Python.

Beside each decoded image folder (and each CIFAR-10 copy) the cache keeps a small JSON summary:
identity, classes, per-class counts and channel statistics. ``data_identity`` answers from it,
so planning a sweep needs neither decoding nor a download.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import DataError, UsageError
from .files import atomic_open, atomic_torch_save, atomic_write

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST = ["test_batch"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

Progress = Callable[[int, int], None]  # (images decoded so far, images to decode in all)
PROGRESS_EVERY = 256  # images between progress calls: often enough to move a bar, too rare to cost anything
_STATS_CHUNK = 4096  # images per step of channel_stats: 4096 CIFAR images are 4 MB a channel
_SUMMARY_VERSION = 1

ChannelStats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True, eq=False)
class ImageData:
    source: str  # "cifar10", "synthetic", "synthetic-hard", or the folder given
    identity: str  # digest of the pixels and labels (and limits): part of every run id
    classes: tuple[str, ...]
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    # (mean, std) per channel of train_x when already known: read from the decode cache or the
    # summary, or remembered by channel_stats(). ``limit`` drops it when it changes train_x.
    train_stats: ChannelStats | None = field(default=None, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images on a 0..1 scale (the study's normalization).

        The std is torch's default, unbiased one (``x.std(dim=(0, 2, 3))``). Worked out once from
        per-channel histograms of a few thousand images at a time, so it needs a few MB where a
        float64 copy of CIFAR-10 needed 2.5 GB, and exact integer sums instead of float rounding.
        """
        if self.train_stats is None:
            # frozen, so remembered the way dataclasses themselves set fields
            object.__setattr__(self, "train_stats", _channel_stats(self.train_x))
        mean, std = self.train_stats  # type: ignore[misc]
        return list(mean), list(std)


def _channel_stats(x: torch.Tensor) -> ChannelStats:
    """Mean and unbiased std per channel of uint8 images, scaled to 0..1, from pixel histograms."""
    images = x.detach().cpu().numpy()
    hist = np.zeros((images.shape[1], 256), dtype=np.int64)
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start:start + _STATS_CHUNK]
        for c in range(images.shape[1]):
            hist[c] += np.bincount(chunk[:, c].ravel(), minlength=256)  # ravel copies one channel of one chunk
    means, stds = [], []
    for counts in hist.tolist():
        # Python integers: n * squares - total**2 is exact, so no cancellation creeps into the variance
        n = sum(counts)
        total = sum(level * k for level, k in enumerate(counts))
        squares = sum(level * level * k for level, k in enumerate(counts))
        means.append(total / n / 255 if n else math.nan)
        variance = (n * squares - total * total) / (n * (n - 1)) if n > 1 else math.nan  # as torch: nan for one pixel
        stds.append(math.sqrt(variance) / 255)
    return tuple(means), tuple(stds)


def cache_root() -> Path:
    """Where downloads and decoded tensors live: $FIREABLATE_CACHE, else the per-user cache."""
    if os.environ.get("FIREABLATE_CACHE"):
        return Path(os.environ["FIREABLATE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fireablate"


def _decoded_dir() -> Path:
    return cache_root() / "decoded"


def default_data_dir() -> Path:
    return Path(os.environ.get("FIREABLATE_DATA") or cache_root() / "data")


def _digest(*tensors: torch.Tensor, extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy())  # hashed through the buffer: no copy of the pixels
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Summaries: what data_identity needs, in a small JSON file beside the decode cache


def _write_summary(path: Path, data: ImageData) -> None:
    mean, std = data.channel_stats()
    k = len(data.classes)
    summary = {
        "version": _SUMMARY_VERSION,
        "identity": data.identity,
        "classes": list(data.classes),
        "train_counts": torch.bincount(data.train_y, minlength=k).tolist(),
        "test_counts": torch.bincount(data.test_y, minlength=k).tolist(),
        "channel_mean": mean,
        "channel_std": std,
    }
    try:
        atomic_write(path, json.dumps(summary, indent=1) + "\n", durable=False)
    except OSError:
        pass  # it only spares planning a decode: a read-only cache must not stop a run that has its data


def _read_summary(path: Path) -> dict[str, Any] | None:
    """The summary at ``path``, or None when it is missing, damaged or from another version."""
    try:
        d = json.loads(path.read_text())
        k = len(d["classes"])
        ok = (
            d["version"] == _SUMMARY_VERSION and isinstance(d["identity"], str)
            and all(isinstance(name, str) for name in d["classes"])
            and all(len(d[key]) == k and all(isinstance(v, int) for v in d[key]) for key in ("train_counts", "test_counts"))
            and len(d["channel_mean"]) == len(d["channel_std"])
            and all(isinstance(v, (int, float)) for v in d["channel_mean"] + d["channel_std"])
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return d if ok else None


def _summary_stats(summary: dict[str, Any]) -> ChannelStats:
    return tuple(map(float, summary["channel_mean"])), tuple(map(float, summary["channel_std"]))


def _files_key(root: Path, entries: list[tuple[Path, str]]) -> str:
    """Changes when any file is added, removed, resized or touched, or the folder moves."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for path, tag in entries:
        st = path.stat()
        h.update(f"{path.relative_to(root)}|{tag}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# CIFAR-10 in its official python format


def _cifar_folder(root: Path) -> Path | None:
    """Accept both the folder that contains cifar-10-batches-py and that folder itself."""
    for candidate in (root / CIFAR10_FOLDER, root):
        if (candidate / "batches.meta").is_file():
            return candidate
    return None


def _cifar_summary_path(folder: Path) -> Path | None:
    """Where the summary of this copy of CIFAR-10 lives, or None when one of its files is missing."""
    names = ["batches.meta", *CIFAR10_TRAIN, *CIFAR10_TEST]
    try:
        key = _files_key(folder, [(folder / n, "") for n in names])
    except OSError:
        return None
    return _decoded_dir() / f"cifar10-{key}.json"


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # a checksum the host publishes, not a security measure
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, archive: Path) -> None:
    """Download ``url`` to ``archive`` in one atomic write: an interrupted or wrong download leaves nothing."""
    with urllib.request.urlopen(url, timeout=60) as response, atomic_open(archive) as fh:
        h = hashlib.md5(usedforsecurity=False)
        while chunk := response.read(1 << 20):
            h.update(chunk)
            fh.write(chunk)
        if h.hexdigest() != CIFAR10_MD5:
            raise ValueError(f"md5 {h.hexdigest()}, expected {CIFAR10_MD5}")


def _umask_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    # 'data' refuses absolute paths, links out of the folder and device files; with no mode the
    # files get the user's umask like every file fireablate writes, not the modes in the archive
    return tarfile.data_filter(member, dest).replace(mode=None, deep=False)


def _extract(archive: Path, root: Path) -> None:
    """Unpack into a temporary folder, then move cifar-10-batches-py into place in one rename."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".cifar-10-extract-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter=_umask_filter)
        if (staging / CIFAR10_FOLDER).is_dir():
            os.replace(staging / CIFAR10_FOLDER, root / CIFAR10_FOLDER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_cifar10(root: Path) -> None:
    url = os.environ.get("FIREABLATE_CIFAR10_URL", CIFAR10_URL)  # a mirror, where the official host is blocked
    archive = root / CIFAR10_ARCHIVE
    if (root / CIFAR10_FOLDER).exists():  # never unpacked over: it may be someone's own files
        raise DataError(f"{root / CIFAR10_FOLDER} has no batches.meta; delete that folder to download CIFAR-10 again")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not (archive.is_file() and _md5(archive) == CIFAR10_MD5):  # an archive put there by hand is used as it is
            _fetch(url, archive)
        _extract(archive, root)
    except Exception as exc:  # offline, refused, or a corrupt archive: say what to do instead
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"CIFAR-10 not found in {root} and the download failed ({reason}); put {CIFAR10_ARCHIVE} "
            f"(md5 {CIFAR10_MD5}) from {CIFAR10_URL} in that folder, or pass --data-dir"
        ) from None


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """The only globals CIFAR-10's python files name, each mapped to numpy's own function.

    The official batches are numpy 1.x pickles (``numpy.core.multiarray._reconstruct``); files
    pickled by numpy 2 at protocol 5 name ``numpy._core.numeric._frombuffer`` instead. Both module
    spellings map to whatever this numpy has, so neither ``numpy.core``'s deprecation shim nor
    any other module is imported on a file's say-so.
    """
    try:  # numpy >= 2 (and 1.26, which added the new name for reading numpy 2's pickles)
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # older numpy
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.what = f"{module}.{name}"


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a pickle may name any function to call while
    loading, so a planted ``data_batch_1`` could otherwise run code (os.system, exec, ...)."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if _CifarUnpickler._allowed is None:
            _CifarUnpickler._allowed = _numpy_reconstructors()
        try:
            return _CifarUnpickler._allowed[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None


def _read_pickle(path: Path) -> object:
    """One of CIFAR-10's python files, unpickled without running anything it names."""
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 file missing: {path}; delete the folder to download it again") from None
    except _Refused as exc:
        raise DataError(
            f"CIFAR-10 file refused: {path} asks to call {exc.what}, which CIFAR-10's files never do "
            f"(a planted or foreign file); delete the folder to download it again"
        ) from None
    except Exception:
        raise DataError(f"CIFAR-10 file is corrupt: {path}; delete the folder to download it again") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    try:
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # type: ignore[index]
        y = np.asarray(d[b"labels"], dtype=np.int64)  # type: ignore[index]
    except Exception:  # not a dict, keys missing, values of the wrong kind or size
        raise DataError(f"CIFAR-10 file is corrupt: {path}; delete the folder to download it again") from None
    if y.ndim != 1 or len(x) != len(y):
        raise DataError(f"CIFAR-10 file is corrupt: {path} has {len(x)} images but {y.size} labels")
    return x, y


def load_cifar10(data_dir: Path | None = None, download: bool = True) -> ImageData:
    root = Path(data_dir) if data_dir else default_data_dir()
    folder = _cifar_folder(root)
    if folder is None:
        if not download:
            raise DataError(f"CIFAR-10 not found in {root}: expected {root / CIFAR10_FOLDER}")
        _download_cifar10(root)
        folder = _cifar_folder(root)
        if folder is None:
            raise DataError(f"{CIFAR10_ARCHIVE} in {root} did not contain {CIFAR10_FOLDER}/batches.meta")
    summary_path = _cifar_summary_path(folder)  # before reading: it names the files as they are read
    meta = _read_pickle(folder / "batches.meta")
    try:
        classes = tuple(n.decode() for n in meta[b"label_names"])  # type: ignore[index]
    except Exception:
        raise DataError(f"CIFAR-10 file is corrupt: {folder / 'batches.meta'}; delete the folder to download it again") from None
    parts = {}
    for split, names in (("train", CIFAR10_TRAIN), ("test", CIFAR10_TEST)):
        xs, ys = zip(*(_read_batch(folder / n) for n in names))
        y = np.concatenate(ys)
        if y.size and (y.min() < 0 or y.max() >= len(classes)):  # would crash training with a traceback
            raise DataError(f"CIFAR-10 {split} labels run from {y.min()} to {y.max()} but batches.meta names {len(classes)} classes")
        parts[split] = (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(y))
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["test"]
    data = ImageData("cifar10", _digest(train_x, train_y, test_x, test_y), classes, train_x, train_y, test_x, test_y)
    if summary_path is not None:
        summary = _read_summary(summary_path)
        if summary is not None and summary["identity"] == data.identity:  # its statistics are of these very pixels
            return replace(data, train_stats=_summary_stats(summary))
        _write_summary(summary_path, data)
    return data


# ---------------------------------------------------------------------------------------------
# ImageFolder layout: PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg


def _list_split(split_dir: Path, classes: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist: an image folder needs train/ and test/ subfolders")
    found = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not found:
        raise DataError(f"{split_dir} has no class folders: expected {split_dir}/<class>/<image files>")
    if classes is not None and found != classes:
        raise DataError(f"{split_dir} has classes {', '.join(found)} but train/ has {', '.join(classes)}")
    files = []
    for label, name in enumerate(found):
        images = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.extend((p, label) for p in images)
    return found, files


def _list_image_folder(root: Path) -> tuple[tuple[str, ...], list[tuple[Path, int]], list[tuple[Path, int]], str]:
    """Classes, training files, test files and the cache key: a listing, no image opened."""
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    classes, train_files = _list_split(root / "train", None)
    _, test_files = _list_split(root / "test", classes)
    key = _files_key(root, [(path, str(label)) for path, label in train_files + test_files])
    return classes, train_files, test_files, key


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:
        raise DataError(f"cannot decode image {path}") from None


def _decode(files: list[tuple[Path, int]], progress: Progress | None = None, done: int = 0,
            total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images as one (N, C, H, W) uint8 tensor, and their labels.

    ``progress(done + images decoded here, total)`` is called every PROGRESS_EVERY images and
    after the last.
    About 8 s for 30,000 small JPEGs here, once: the result is cached (threads did not help).
    """
    total = len(files) if total is None else total
    first_path = files[0][0]
    first = _read_image(first_path)
    height, width, channels = first.shape
    # Filled in place, already (N, C, H, W): a list of arrays, np.stack and a permuted copy held
    # every pixel three times over.
    pixels = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        img = first if i == 0 else _read_image(path)
        if img.shape != first.shape:
            raise DataError(
                f"images of mixed sizes: {first_path} is {width}x{height} but {path} is "
                f"{img.shape[1]}x{img.shape[0]}; resize them to one size first"
            )
        pixels[i] = img.transpose(2, 0, 1)  # HWC files -> CHW
        if progress is not None and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == len(files)):
            progress(done + i + 1, total)
    return torch.from_numpy(pixels), torch.tensor([label for _, label in files], dtype=torch.int64)


def _read_decoded(cache: Path, source: str) -> ImageData | None:
    try:
        with warnings.catch_warnings():  # a foreign file's warnings would add lines to one-line errors
            warnings.simplefilter("ignore")
            d = torch.load(cache, weights_only=True)  # weights_only: a planted cache file runs nothing either
        stats = (tuple(d["channel_mean"]), tuple(d["channel_std"])) if "channel_mean" in d else None
        return ImageData(source, d["identity"], tuple(d["classes"]), d["train_x"], d["train_y"], d["test_x"],
                         d["test_y"], train_stats=stats)
    except Exception:
        return None  # a damaged cache entry is simply decoded again


def load_image_folder(root: Path, use_cache: bool = True, progress: Progress | None = None) -> ImageData:
    """Decode ``root``/train and ``root``/test once; later loads read the cached tensors.

    ``progress(done, total)`` is called while decoding (every PROGRESS_EVERY images, and with
    done == total at the end); a load from the cache decodes nothing and never calls it.
    """
    root = Path(root)
    classes, train_files, test_files, key = _list_image_folder(root)
    cache, summary_path = _decoded_dir() / f"{key}.pt", _decoded_dir() / f"{key}.json"
    if use_cache and cache.is_file():
        data = _read_decoded(cache, str(root))
        if data is not None:
            summary = _read_summary(summary_path)
            if summary is None or summary["identity"] != data.identity:  # decoded before summaries existed
                _write_summary(summary_path, data)
            return data
    total = len(train_files) + len(test_files)
    train_x, train_y = _decode(train_files, progress, 0, total)
    test_x, test_y = _decode(test_files, progress, len(train_files), total)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"train images are {tuple(train_x.shape[1:])} but test images are {tuple(test_x.shape[1:])}")
    data = ImageData(str(root), _digest(train_x, train_y, test_x, test_y), classes, train_x, train_y, test_x, test_y)
    if use_cache:
        mean, std = data.channel_stats()
        atomic_torch_save(
            {"identity": data.identity, "classes": list(classes), "train_x": train_x, "train_y": train_y,
             "test_x": test_x, "test_y": test_y, "channel_mean": mean, "channel_std": std},
            cache,
        )
        _write_summary(summary_path, data)  # after the tensors: a summary means the data was decoded
    return data


# ---------------------------------------------------------------------------------------------
# Synthetic: deterministic, learnable, instant


# Five colours for class c % 5. The hard set's come in close pairs (two reds, two greens) and each
# image's colour is jittered, so a pair overlaps: telling the five colours apart from an image's
# mean colour is right 93.5% of the time at best, and networks level off there instead of at
# 100% (tests/test_data.py measures it).
_EASY_PALETTE = ((0.9, 0.2, 0.2), (0.2, 0.8, 0.2), (0.2, 0.3, 0.9), (0.9, 0.85, 0.2), (0.7, 0.25, 0.8))
_HARD_PALETTE = ((0.85, 0.25, 0.2), (0.85, 0.4, 0.2), (0.2, 0.75, 0.3), (0.2, 0.65, 0.4), (0.3, 0.3, 0.85))
_HARD_COLOUR_JITTER = 0.05  # per channel; the red pair is 0.15 apart: Phi(-0.15 / 0.1) = 6.7% confused
SYNTHETIC_SOURCES = ("synthetic", "synthetic-hard")


def _synthetic(source: str) -> ImageData:
    """The generated set a ``--data`` name in SYNTHETIC_SOURCES stands for."""
    return synthetic(hard=source == "synthetic-hard")


def synthetic(n_train: int = 2000, n_test: int = 1000, size: int = 32, num_classes: int = 10, seed: int = 0,
              hard: bool = False) -> ImageData:
    """Colour and stripe pattern tell the class; random phase, brightness and noise make it a task.

    Class c gets colour c % 5 and horizontal or vertical stripes (c // 5 % 2) at a frequency that
    grows with c // 10, so any number of classes stays distinguishable after the study's
    augmentation (rotations of 20 degrees keep stripes horizontal or vertical enough). ``hard``:
    colours in overlapping pairs (see _HARD_PALETTE), so no model reaches 100%.
    """
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor(_HARD_PALETTE if hard else _EASY_PALETTE)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        vertical = ((y // 5) % 2).view(-1, 1, 1).float()
        freq = (2 + 2 * (y // 10)).view(-1, 1, 1).float()
        phase = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
        pos = vertical * xx + (1 - vertical) * yy
        stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * pos + phase)
        if hard:
            colour = palette[y % 5] + _HARD_COLOUR_JITTER * torch.randn(n, 3, generator=g)
        else:
            colour = palette[y % 5] * (0.7 + 0.3 * torch.rand(n, 1, generator=g))
        img = colour.view(n, 3, 1, 1) * (0.35 + 0.65 * stripes.unsqueeze(1))
        img = img + 0.08 * torch.randn(n, 3, size, size, generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), y.to(torch.int64)

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    classes = tuple(f"class{c}" for c in range(num_classes))
    return ImageData(SYNTHETIC_SOURCES[1] if hard else SYNTHETIC_SOURCES[0], _digest(train_x, train_y, test_x, test_y), classes, train_x, train_y, test_x, test_y)


# ---------------------------------------------------------------------------------------------


def _balanced_counts(counts: list[int], n: int, split: str, option: str) -> list[int]:
    """How many images of each class a balanced subset of ``n`` takes; a UsageError when it cannot."""
    k = len(counts)
    if n < k:
        raise UsageError(f"{option} {n} is fewer than the {k} classes; give at least {k}")
    if n > sum(counts):
        raise UsageError(f"{option} {n} is more than the {sum(counts)} {split} images available")
    wants = [n // k + (1 if c < n % k else 0) for c in range(k)]
    for c, (want, have) in enumerate(zip(wants, counts)):
        if have < want:
            raise UsageError(f"{option} {n} needs {want} {split} images of class {c} but there are {have}")
    return wants


def _balanced(y: torch.Tensor, n: int, num_classes: int, split: str, option: str) -> torch.Tensor:
    """The first images of each class in dataset order, as equal in number as ``n`` allows."""
    wants = _balanced_counts(torch.bincount(y, minlength=num_classes).tolist(), n, split, option)
    picks = [(y == c).nonzero().flatten()[:want] for c, want in enumerate(wants)]
    return torch.cat(picks).sort().values


def _limited_identity(identity: str, limit_train: int | None, limit_test: int | None) -> str:
    if limit_train is None and limit_test is None:
        return identity
    return hashlib.sha256(f"{identity}|{limit_train}|{limit_test}".encode()).hexdigest()[:16]


def limit(data: ImageData, limit_train: int | None, limit_test: int | None) -> ImageData:
    """A class-balanced subset; its identity records the limits so run ids stay distinct."""
    if limit_train is None and limit_test is None:
        return data
    k = len(data.classes)
    changes: dict[str, Any] = {}
    if limit_train is not None:
        i = _balanced(data.train_y, limit_train, k, "training", "--limit-train")
        changes.update(train_x=data.train_x[i], train_y=data.train_y[i], train_stats=None)  # other images, other stats
    if limit_test is not None:
        i = _balanced(data.test_y, limit_test, k, "test", "--limit-test")
        changes.update(test_x=data.test_x[i], test_y=data.test_y[i])
    return replace(data, identity=_limited_identity(data.identity, limit_train, limit_test), **changes)


def load(source: str = "cifar10", data_dir: Path | None = None, limit_train: int | None = None,
         limit_test: int | None = None, progress: Progress | None = None) -> ImageData:
    """The dataset named by ``--data``: 'cifar10', 'synthetic', 'synthetic-hard', or an ImageFolder path.

    ``progress(done, total)`` reports the decoding of an image folder (see load_image_folder);
    CIFAR-10's pickles and the synthetic set load in seconds and report nothing.
    """
    if source == "cifar10":
        data = load_cifar10(data_dir)
    elif source in SYNTHETIC_SOURCES:
        data = _synthetic(source)
    else:
        data = load_image_folder(Path(source), progress=progress)
    return limit(data, limit_train, limit_test)


def data_identity(source: str = "cifar10", data_dir: Path | None = None, limit_train: int | None = None,
                  limit_test: int | None = None) -> str | None:
    """``load(...).identity`` for the same arguments, without decoding or downloading anything.

    For planning (``sweep --dry-run``). An image folder is listed (names, sizes, mtimes) and
    CIFAR-10's files are stat'ed to find the summary ``load`` wrote; None when there is none
    yet (never loaded here, changed since, or CIFAR-10 not downloaded). Raises the DataError
    ``load`` would for a folder of the wrong layout, and the UsageError for a limit the data
    cannot meet.
    """
    if source in SYNTHETIC_SOURCES:  # generated in well under a second
        return limit(_synthetic(source), limit_train, limit_test).identity
    if source == "cifar10":
        folder = _cifar_folder(Path(data_dir) if data_dir else default_data_dir())
        summary_path = _cifar_summary_path(folder) if folder is not None else None
        summary = _read_summary(summary_path) if summary_path is not None else None
    else:
        *_, key = _list_image_folder(Path(source))
        summary = _read_summary(_decoded_dir() / f"{key}.json")
    if summary is None:
        return None
    if limit_train is not None:
        _balanced_counts(summary["train_counts"], limit_train, "training", "--limit-train")
    if limit_test is not None:
        _balanced_counts(summary["test_counts"], limit_test, "test", "--limit-test")
    return _limited_identity(summary["identity"], limit_train, limit_test)


def extract_image_folder(archive: Path, dest: Path, train_per_class: int | None = None,
                         test_per_class: int | None = None) -> Path:
    """Unpack an ImageFolder archive (``TOP/<split>/<class>/<file>``) into ``dest``; return ``dest/TOP``.

    ``*_per_class`` keep only the first images of each class (in archive order), for quick runs
    and tests on a part of the shared CIFAR-10 JPEGs. Extraction uses tarfile's safe ``data``
    filter: no absolute paths, links out of ``dest`` or device files.
    """
    keep = {"train": train_per_class, "test": test_per_class}
    counts: dict[tuple[str, str], int] = {}
    top = None
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 4 or parts[1] not in keep:
                continue
            top = top or parts[0]
            key = (parts[1], parts[2])
            limit_ = keep[parts[1]]
            if limit_ is None or counts.get(key, 0) < limit_:
                counts[key] = counts.get(key, 0) + 1
                members.append(m)
        tar.extractall(dest, members=members, filter="data")
    if top is None:
        raise DataError(f"{archive} holds no TOP/train|test/<class>/<image> files")
    return Path(dest) / top
