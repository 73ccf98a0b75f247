import functools
import http.server
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest
import torch

from fireablate import data as D
from fireablate.errors import DataError, UsageError

from .helpers import extract_real_subset, write_cifar_archive, write_image_folder, write_png

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-20k.tar.gz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREABLATE_CACHE", str(tmp_path / "cache"))


def test_synthetic_is_deterministic_and_balanced():
    a, b = D.synthetic(n_train=100, n_test=50), D.synthetic(n_train=100, n_test=50)
    assert torch.equal(a.train_x, b.train_x) and a.identity == b.identity
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape == (100, 3, 32, 32)
    assert a.train_y.bincount().tolist() == [10] * 10
    assert D.synthetic(n_train=100, n_test=50, seed=1).identity != a.identity


def _mean_colour_accuracy(d: D.ImageData) -> float:
    """Accuracy of telling class c % 5 from an image's mean colour, nearest training mean: the
    part of the task that decides whether it can be learned perfectly."""
    def colours(x):
        return x.float().mean(dim=(2, 3))
    group_train, group_test = d.train_y % 5, d.test_y % 5
    means = torch.stack([colours(d.train_x[group_train == k]).mean(0) for k in range(5)])
    guess = torch.cdist(colours(d.test_x), means).argmin(1)
    return (guess == group_test).float().mean().item()


def test_synthetic_hard_has_overlapping_classes_so_no_model_reaches_100_percent():
    """Protects the quickstart's point: on synthetic-hard accuracy levels off below 100% (close
    colour pairs, jittered), while the easy set's colours are perfectly separable; both are
    deterministic, named after their source, and distinct experiments."""
    easy, hard = D.load("synthetic"), D.load("synthetic-hard")
    assert (easy.source, hard.source) == ("synthetic", "synthetic-hard")
    assert hard.identity != easy.identity == D.data_identity("synthetic")
    assert D.data_identity("synthetic-hard") == hard.identity == D.synthetic(hard=True).identity
    assert _mean_colour_accuracy(easy) == 1.0
    assert 0.85 < _mean_colour_accuracy(hard) < 0.97  # ~6% of a close pair's images are ambiguous


def test_limit_is_class_balanced_and_changes_identity():
    d = D.synthetic(n_train=200, n_test=100)
    sub = D.limit(d, 25, 10)
    assert sub.train_y.bincount().tolist() == [3] * 5 + [2] * 5
    assert len(sub.test_y) == 10 and sub.identity != d.identity
    with pytest.raises(UsageError, match="--limit-train 500 is more than the 200 training images"):
        D.limit(d, 500, None)


def _torch_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    x = x.double() / 255
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()


def test_channel_stats():
    d = D.synthetic(n_train=100, n_test=10)
    mean, std = d.channel_stats()
    want_mean, want_std = _torch_stats(d.train_x)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-12)


def test_channel_stats_over_many_chunks_match_torch():
    # more images than one chunk, and channels with different ranges, so a mixed-up sum shows
    g = torch.Generator().manual_seed(1)
    n = 2 * D._STATS_CHUNK + 123
    x = torch.stack([torch.randint(0, 256, (n, 6, 6), generator=g), torch.randint(100, 120, (n, 6, 6), generator=g),
                     torch.randint(0, 2, (n, 6, 6), generator=g) * 255], dim=1).to(torch.uint8)
    y = torch.zeros(n, dtype=torch.int64)
    d = D.ImageData("made", "id", ("a",), x, y, x[:5], y[:5])
    mean, std = d.channel_stats()
    want_mean, want_std = _torch_stats(x)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-12)
    assert d.train_stats == (tuple(mean), tuple(std))  # remembered: a second call computes nothing


def test_limit_forgets_the_stats_of_images_it_drops():
    d = D.synthetic(n_train=200, n_test=100)
    d.channel_stats()
    assert D.limit(d, None, 20).train_stats == d.train_stats  # same training images, same statistics
    sub = D.limit(d, 30, None)
    assert sub.train_stats is None
    mean, std = sub.channel_stats()
    want_mean, want_std = _torch_stats(sub.train_x)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-12)
    assert mean != pytest.approx(d.channel_stats()[0], rel=1e-6)


def _spoil_images(root: Path) -> None:
    """Overwrite every image with bytes no decoder accepts, keeping each file's size and mtime.

    The cache key sees no change, so whatever still works afterwards never opened an image.
    """
    for path in sorted(root.rglob("*.png")):
        st = path.stat()
        path.write_bytes(b"\0" * st.st_size)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_image_folder_decodes_once_then_reads_the_cache(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    first = D.load(str(root))
    assert first.classes == ("cat", "dog", "ship")
    assert first.train_x.shape == (12, 3, 8, 8) and first.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (first.train_x[:4, 0] == 255).all()  # decoded pixels, not noise
    _spoil_images(root)
    second = D.load(str(root))  # from the cache: a decode would fail on the spoilt files
    assert torch.equal(second.train_x, first.train_x) and second.identity == first.identity
    for cached in (tmp_path / "cache" / "decoded").glob("*.pt"):
        cached.write_bytes(b"damaged")
    with pytest.raises(DataError, match=r"cannot decode image .*0000.png"):  # so a damaged cache is decoded again
        D.load(str(root))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        D.load(str(tmp_path / "nope"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no class folders"):
        D.load(str(tmp_path / "empty"))
    root = write_image_folder(tmp_path / "mixed", per_class=2)
    write_png(torch.zeros(3, 9, 9, dtype=torch.uint8), root / "train" / "dog" / "9999.png")
    with pytest.raises(DataError, match="images of mixed sizes"):
        D.load(str(root))
    (root / "train" / "dog" / "9999.png").unlink()
    for f in (root / "test" / "ship").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="holds no images"):
        D.load(str(root))


@pytest.fixture
def cifar_server(tmp_path, monkeypatch):
    """A local HTTP server with a small archive in CIFAR-10's official format."""
    served = tmp_path / "served"
    served.mkdir()
    archive, md5 = write_cifar_archive(served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FIREABLATE_CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/{archive.name}")
    monkeypatch.setattr(D, "CIFAR10_MD5", md5)
    yield archive
    server.shutdown()


def test_cifar10_download_then_offline(tmp_path, cifar_server, monkeypatch):
    root = tmp_path / "data"
    d = D.load("cifar10", data_dir=root)
    assert d.train_x.shape == (100, 3, 32, 32) and d.test_x.shape == (20, 3, 32, 32)
    assert d.classes[0] == "airplane" and d.train_y[:10].tolist() == list(range(10))
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    monkeypatch.setenv("FIREABLATE_CIFAR10_URL", "http://127.0.0.1:9/unreachable.tar.gz")
    # both the parent folder and cifar-10-batches-py itself are accepted, with no download
    assert D.load("cifar10", data_dir=root).identity == d.identity
    assert D.load("cifar10", data_dir=root / "cifar-10-batches-py").identity == d.identity
    monkeypatch.setenv("FIREABLATE_DATA", str(root))
    assert D.load("cifar10").identity == d.identity


def test_cifar10_offline_names_the_file_expected(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREABLATE_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=r"CIFAR-10 not found in .* put cifar-10-python.tar.gz \(md5 "):
        D.load("cifar10", data_dir=tmp_path / "empty")


def test_cifar10_corrupt_download_and_batch(tmp_path, cifar_server, monkeypatch):
    monkeypatch.setattr(D, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DataError, match=r"the download failed \(md5 [0-9a-f]{32}, expected 0{32}\)"):
        D.load("cifar10", data_dir=tmp_path / "a")
    assert list((tmp_path / "a").iterdir()) == []  # a wrong download leaves no archive and no temporary
    monkeypatch.undo()
    root = tmp_path / "b"
    monkeypatch.setenv("FIREABLATE_CACHE", str(tmp_path / "cache"))
    with tarfile.open(cifar_server) as tar:
        tar.extractall(root)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3; delete the folder"):
        D.load("cifar10", data_dir=root)


def _cifar_folder(tmp_path, python2: bool = False):
    """A --data-dir holding a small CIFAR-10 in the official layout, no download involved."""
    archive, _ = write_cifar_archive(tmp_path / ("py2" if python2 else "py3"), python2=python2)
    root = tmp_path / "data"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def test_cifar10_in_python2_format_loads_like_the_python3_copy(tmp_path):
    py3 = D.load("cifar10", data_dir=_cifar_folder(tmp_path / "a"))
    py2 = D.load("cifar10", data_dir=_cifar_folder(tmp_path / "b", python2=True))
    assert py2.classes == py3.classes and py2.classes[9] == "truck"
    assert torch.equal(py2.train_x, py3.train_x) and torch.equal(py2.test_y, py3.test_y)
    assert py2.identity == py3.identity and py2.train_x.shape == (100, 3, 32, 32)


class _Planted:
    """Unpickling this runs ``builtins.exec``, which writes the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("planted", ["batches.meta", "data_batch_2", "test_batch"])
def test_cifar10_planted_pickle_runs_nothing(tmp_path, planted):
    import pickle

    root = _cifar_folder(tmp_path)
    marker = tmp_path / "marker"
    payload = pickle.dumps({b"label_names": [b"x"], b"data": _Planted(marker), b"labels": [0]})
    (root / "cifar-10-batches-py" / planted).write_bytes(payload)
    pickle.loads(payload)  # the payload does work: unpickled the ordinary way, it writes the marker
    assert marker.read_text() == "pwned"
    marker.unlink()
    with pytest.raises(DataError, match=rf"CIFAR-10 file refused: .*{planted} asks to call builtins.exec"):
        D.load("cifar10", data_dir=root)
    assert not marker.exists()


def test_cifar10_pickle_naming_os_system_is_refused(tmp_path):
    root = _cifar_folder(tmp_path)
    marker = tmp_path / "marker"
    # os.system("touch MARKER") as protocol 0 opcodes: the oldest, most common form of the attack
    payload = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(payload)
    with pytest.raises(DataError, match=r"data_batch_1 asks to call os.system"):
        D.load("cifar10", data_dir=root)
    assert not marker.exists()


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    """600 real CIFAR-10 JPEGs (50 training and 10 test images a class), shared read-only by this module."""
    if not SHARED.is_file():
        pytest.skip(f"real images not found at {SHARED}")
    return extract_real_subset(SHARED, tmp_path_factory.mktemp("real"), train_per_class=50, test_per_class=10)


def test_image_folder_keeps_its_channel_stats_with_the_decoded_tensors(real_folder, tmp_path):
    first = D.load(str(real_folder))
    mean, std = first.channel_stats()
    want_mean, want_std = _torch_stats(first.train_x)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-12)
    assert 0.3 < mean[0] < 0.7 and 0.15 < std[0] < 0.35  # real photographs, not noise
    (cached,) = (tmp_path / "cache" / "decoded").glob("*.pt")
    saved = torch.load(cached, weights_only=True)
    assert saved["channel_mean"] == mean and saved["channel_std"] == std
    summary = json.loads(cached.with_suffix(".json").read_text())
    assert summary["identity"] == first.identity and summary["channel_mean"] == mean
    assert summary["train_counts"] == [50] * 10 and summary["test_counts"] == [10] * 10
    second = D.load(str(real_folder))
    assert second.train_stats == (tuple(mean), tuple(std))  # read back, before anyone asked for them


def test_progress_counts_up_to_the_total_while_decoding(real_folder):
    calls = []
    data = D.load(str(real_folder), progress=lambda done, total: calls.append((done, total)))
    total = len(data.train_y) + len(data.test_y)
    assert total == 600 and calls[-1] == (total, total)
    assert {t for _, t in calls} == {total}
    done = [0] + [d for d, _ in calls]
    assert all(0 < b - a <= D.PROGRESS_EVERY for a, b in zip(done, done[1:])), calls  # rising, a few hundred apart
    calls.clear()
    D.load(str(real_folder), progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # read from the cache: nothing decoded, nothing to report


def test_data_identity_of_an_image_folder_without_decoding(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=6)
    assert D.data_identity(str(root)) is None  # never decoded here
    assert D.data_identity(str(root), limit_train=9) is None
    loaded = {lim: D.load(str(root), limit_train=lim[0], limit_test=lim[1]).identity
              for lim in [(None, None), (9, None), (None, 3), (9, 3)]}
    assert len(set(loaded.values())) == 4
    _spoil_images(root)  # listing is all it may do: decoding would fail now
    for cached in (tmp_path / "cache" / "decoded").glob("*.pt"):
        cached.write_bytes(b"damaged")  # nor read the decoded tensors
    for (lt, ltest), identity in loaded.items():
        assert D.data_identity(str(root), limit_train=lt, limit_test=ltest) == identity
    with pytest.raises(UsageError, match="--limit-train 19 is more than the 18 training images"):
        D.data_identity(str(root), limit_train=19)  # the error load would give
    with pytest.raises(UsageError, match="--limit-test 2 is fewer than the 3 classes"):
        D.data_identity(str(root), limit_test=2)
    with pytest.raises(DataError, match="data folder not found"):
        D.data_identity(str(tmp_path / "nope"))
    (root / "train" / "cat" / "0000.png").touch()  # a changed file: the old identity may be stale
    assert D.data_identity(str(root)) is None


def test_data_identity_of_synthetic_matches_load():
    assert D.data_identity("synthetic") == D.load("synthetic").identity
    assert D.data_identity("synthetic", limit_train=100, limit_test=50) == D.load("synthetic", None, 100, 50).identity


def test_data_identity_of_cifar10_needs_one_load_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("FIREABLATE_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert D.data_identity("cifar10", data_dir=tmp_path / "nothing") is None
    assert not (tmp_path / "nothing").exists()  # nothing downloaded or made
    root = _cifar_folder(tmp_path)
    assert D.data_identity("cifar10", data_dir=root) is None  # there, but never loaded
    first = D.load("cifar10", data_dir=root)
    assert D.data_identity("cifar10", data_dir=root) == first.identity
    assert D.data_identity("cifar10", data_dir=root / "cifar-10-batches-py") == first.identity
    assert D.data_identity("cifar10", data_dir=root, limit_train=30, limit_test=10) == \
        D.load("cifar10", data_dir=root, limit_train=30, limit_test=10).identity
    for bad in (101, 5):  # more than the 100 training images; fewer than the 10 classes
        with pytest.raises(UsageError) as by_load:
            D.load("cifar10", data_dir=root, limit_train=bad)
        with pytest.raises(UsageError, match=f"--limit-train {bad} is") as by_identity:
            D.data_identity("cifar10", data_dir=root, limit_train=bad)
        assert str(by_identity.value) == str(by_load.value)
    second = D.load("cifar10", data_dir=root)
    assert second.train_stats == tuple(map(tuple, first.channel_stats()))  # read from the summary


def test_data_identity_is_none_for_a_cache_entry_older_than_summaries(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    first = D.load(str(root))
    (summary,) = (tmp_path / "cache" / "decoded").glob("*.json")
    summary.unlink()  # as a cache written before summaries existed
    assert D.data_identity(str(root)) is None
    assert D.load(str(root)).identity == first.identity  # the next load writes it
    assert D.data_identity(str(root)) == first.identity


def test_data_identity_refuses_a_limit_one_class_cannot_fill_as_load_does(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=6)
    for name in ("0004.png", "0005.png"):
        (root / "train" / "ship" / name).unlink()
    D.load(str(root))
    with pytest.raises(UsageError) as by_load:
        D.load(str(root), limit_train=15)
    with pytest.raises(UsageError, match="--limit-train 15 needs 5 training images of class 2 but there are 4") as by_identity:
        D.data_identity(str(root), limit_train=15)
    assert str(by_identity.value) == str(by_load.value)


def test_cifar10_download_writes_with_the_users_umask(tmp_path, cifar_server):
    root = tmp_path / "data"
    old = os.umask(0o027)  # the archive's own modes are 0644 and 0755: extraction must not keep them
    try:
        D.load("cifar10", data_dir=root)
    finally:
        os.umask(old)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]  # no staging left
    folder = root / "cifar-10-batches-py"
    assert folder.stat().st_mode & 0o777 == 0o750
    written = [root / "cifar-10-python.tar.gz", *folder.iterdir(), *(tmp_path / "cache").rglob("*.json")]
    assert len(written) == 9  # archive, 7 batch files, summary
    assert {p.name: p.stat().st_mode & 0o777 for p in written} == {p.name: 0o640 for p in written}


def test_cifar10_archive_put_there_by_hand_needs_no_network(tmp_path, cifar_server, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(cifar_server.read_bytes())
    monkeypatch.setenv("FIREABLATE_CIFAR10_URL", "http://127.0.0.1:9/unreachable.tar.gz")
    assert D.load("cifar10", data_dir=root).train_x.shape == (100, 3, 32, 32)


def test_cifar10_half_unpacked_folder_is_not_overwritten(tmp_path, cifar_server):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(b"someone's")
    with pytest.raises(DataError, match="cifar-10-batches-py has no batches.meta; delete that folder"):
        D.load("cifar10", data_dir=tmp_path / "data")
    assert (folder / "data_batch_1").read_bytes() == b"someone's"


def test_cifar10_archive_reaching_outside_its_folder_is_refused(tmp_path, monkeypatch):
    import hashlib
    import io

    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("../../escaped.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"bad"))
    monkeypatch.setattr(D, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    archive.rename(root / archive.name)  # as if downloaded: a mirror serving this passes the md5 check
    with pytest.raises(DataError, match="the download failed .*outside the destination"):
        D.load("cifar10", data_dir=root)
    assert not list(tmp_path.rglob("escaped.txt"))


def _write_uncompressed(img: torch.Tensor, path: Path) -> None:
    # Stored, not deflated: the file's size depends on the image's shape alone, so a replaced image
    # can only be told by its content and its modification time.
    from PIL import Image

    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, compress_level=0)


def test_a_replaced_image_is_decoded_again_under_a_new_identity(tmp_path):
    """Protects the decode cache's key (data.load_image_folder): it must see the files, not only
    the folder. An image replaced by another of the same size must be decoded again, and the data
    get a new identity (so new run ids); a stale key would train on the old pixels and call the
    runs on the new images done."""
    root = write_image_folder(tmp_path / "imgs")
    target = root / "train" / "dog" / "0001.png"  # class 1, second image: training image 5
    old = torch.randint(0, 256, (3, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    _write_uncompressed(old, target)
    first = D.load(str(root))
    assert torch.equal(first.train_x[5], old)
    st = target.stat()
    new = 255 - old
    _write_uncompressed(new, target)
    assert target.stat().st_size == st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a second later, whatever the clock's grain
    assert D.data_identity(str(root)) is None  # this state of the folder was never decoded
    decoded = []
    second = D.load(str(root), progress=lambda done, total: decoded.append(done))
    assert decoded, "the changed folder was read from the cache"
    assert torch.equal(second.train_x[5], new) and second.identity != first.identity
    assert D.data_identity(str(root)) == second.identity
