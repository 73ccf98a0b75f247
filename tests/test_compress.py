"""Deep Compression: the file format by hand, exact decoding, v1.0's sizes, and the command."""

import json
import struct

import numpy as np
import pytest
import torch

from fireablate import codec
from fireablate.compress import (PAPER_V10, CompressSettings, compress_model, compression_text, kmeans_1d,
                                 load_compressed, prune_positions, resolve_bits, resolve_densities, to_model,
                                 weighted_layers)
from fireablate.errors import UsageError
from fireablate.model import build
from fireablate.presets import resolve

from .helpers import TINY


def bits_of(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().numpy().tobytes()


# ---------------------------------------------------------------------------------------------
# The format, worked by hand


def test_relative_indices_with_fillers_by_hand():
    # kept positions 5, 6 and 40 of 64: gaps 6, 1 and 34 (the first counted from position -1)
    positions = np.array([5, 6, 40])
    # 3-bit entries: 0..6 mean "advance s+1, a weight here"; 7 is a filler, "advance 7, nothing here"
    entries = codec.relative_entries(positions, 3)
    assert entries.tolist() == [5, 0, 7, 7, 7, 7, 5]  # 34 = 4 fillers of 7, then 6
    assert codec.positions_from_entries(entries, 3).tolist() == [5, 6, 40]
    # entries per width: 1 bit 41 (a bitmap), 2 bits 15, 3 bits 7, 4 bits 5, 5 bits 4, 6 bits 3
    assert [codec.entries_count(positions, w) for w in range(1, 7)] == [41, 15, 7, 5, 4, 3]
    # bytes: 6, 4, 3, 3, 3, 3: the narrowest of the smallest wins
    assert codec.best_index_bits(positions, 64, huffman=False) == 3
    assert codec.best_index_bits(np.arange(64), 64, huffman=False) == 0  # nothing pruned: no index
    assert codec.pack_fixed(entries, 3) == bytes([0b10100011, 0b11111111, 0b11101000])  # 101 000 111 111 111 111 101


def test_a_small_layer_costs_what_arithmetic_says():
    codebook = np.array([-0.5, -0.25, 0.25, 0.5], dtype=np.float32)  # 2 bits
    layer = codec.SharedLayer("net.weight", "conv1", (4, 16), 2, codebook, np.array([3, 1, 2]), np.array([5, 6, 40]))
    bias = {"net.bias": np.arange(4, dtype=np.float32)}
    enc = codec.encode({"type": "test"}, [layer], bias, huffman=False)
    (size,) = enc.layers
    # codes: 3 x 2 bits = 6 bits -> 1 byte; indices: 7 entries x 3 bits = 21 bits -> 3 bytes; codebook 4 x 4 bytes
    assert (size.kept, size.index_bits, size.entries, size.codes, size.indices, size.codebook) == (3, 3, 7, 1, 3, 16)
    assert size.total == 20 and enc.raw_bytes == 16  # four float32 biases
    (header_len,) = struct.unpack("<I", enc.data[8:12])
    assert enc.header_bytes == 12 + header_len
    assert len(enc.data) == 8 + 4 + header_len + 20 + 16  # magic, length, header, layer, biases: nothing else
    payload = enc.data[enc.header_bytes:]
    assert payload[:16] == codebook.tobytes() and payload[16:17] == bytes([0b11011000])  # codes 11 01 10, padded
    decoded = codec.decode(enc.data)
    w = decoded.shared["net.weight"].weights()
    assert w.shape == (4, 16) and np.flatnonzero(w).tolist() == [5, 6, 40]
    assert w.ravel()[[5, 6, 40]].tolist() == [0.5, -0.25, 0.25]
    assert decoded.raw["net.bias"].tolist() == [0, 1, 2, 3]


def test_huffman_by_hand():
    values = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    assert codec.huffman_lengths(np.bincount(values)).tolist() == [1, 2, 3, 3]
    data = codec.huffman_encode(values, 2)
    # table: longest code 3; one code of length 1, one of 2, two of 3; symbols 0 1 2 3 at 2 bits (00011011)
    # then codes 0 0 0 0 10 10 110 111 = 00001010 110111(00)
    assert data == bytes([3, 1, 1, 2, 0b00011011, 0b00001010, 0b11011100])
    assert codec.huffman_size(np.bincount(values), 2) == len(data)
    assert codec.huffman_decode(data, 2, 8).tolist() == values.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_streams_round_trip(seed):
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, 17))
    n = int(rng.integers(1, 5000))
    # skewed counts (as codes of bell-shaped weights are), so codes have many lengths
    values = np.minimum(rng.geometric(0.3, n) - 1, (1 << width) - 1)
    assert codec.unpack_fixed(codec.pack_fixed(values, width), width, n).tolist() == values.tolist()
    assert codec.huffman_decode(codec.huffman_encode(values, width), width, n).tolist() == values.tolist()
    numel = int(rng.integers(n, 20 * n + 1))
    positions = np.sort(rng.choice(numel, size=n, replace=False))
    for w in (1, 2, 5, 16):
        assert codec.positions_from_entries(codec.relative_entries(positions, w), w).tolist() == positions.tolist()


def test_huffman_lengths_stay_within_the_limit():
    freq = np.array([2**k for k in range(45)], dtype=np.int64)  # a plain Huffman tree would be 44 deep
    lengths = codec.huffman_lengths(freq)
    assert lengths.max() <= codec.MAX_HUFFMAN_LENGTH
    assert sum(2.0 ** -lengths) <= 1  # still a prefix code
    values = np.repeat(np.arange(45), [1 + (k % 7) for k in range(45)])
    data = codec.huffman_encode(values, 6)
    assert codec.huffman_decode(data, 6, len(values)).tolist() == values.tolist()


# ---------------------------------------------------------------------------------------------
# Pruning and weight sharing


def test_pruning_keeps_the_largest_magnitudes():
    w = torch.tensor([0.1, -0.9, 0.3, -0.3, 0.05, 0.7])
    assert prune_positions(w, 0.5).tolist() == [1, 2, 5]  # |-0.9|, |0.7| and the first of the two 0.3s
    assert prune_positions(w, 1e-9).tolist() == [1]  # never an empty layer


def test_kmeans_starts_linear_and_finds_clusters():
    x = np.concatenate([np.full(10, -1.0), np.full(5, 0.0), np.full(20, 2.0)])
    book, codes = kmeans_1d(x, 4)
    assert book.dtype == np.float32 and len(book) == 4
    assert np.allclose(book[codes], x)  # each value sits on its own centroid
    # nearest stored centroid, always
    y = np.random.default_rng(0).normal(size=1000)
    book, codes = kmeans_1d(y, 8)
    nearest = np.abs(y[:, None] - book[None, :].astype(np.float64)).argmin(1)
    assert np.array_equal(np.abs(y - book[codes]), np.abs(y - book[nearest]))


def test_paper_densities_by_name_for_v10_and_by_kind_elsewhere():
    v10 = build(resolve("squeezenet1_0", {}), seed=0)
    densities, source = resolve_densities("paper", v10)
    assert densities == PAPER_V10 and "v1.0 layer name" in source
    tiny = build(TINY, seed=0)
    densities, source = resolve_densities("paper,fire3.squeeze=0.5", tiny)
    assert "by layer kind" in source
    assert densities["conv1"] == 1.0 and densities["fire2.expand3x3"] == 0.33 and densities["conv5"] == 0.2
    assert densities["fire3.squeeze"] == 0.5 and densities["fire2.squeeze"] == 1.0
    assert set(resolve_densities("0.4", tiny)[0].values()) == {0.4}
    assert resolve_densities("fire2/expand3x3=33%", tiny)[0]["fire2.expand3x3"] == 0.33  # count-params' spelling
    bits = resolve_bits("8,expand3x3=4,fire2.expand3x3=3", tiny)
    assert bits["fire2.expand3x3"] == 3 and bits["fire3.expand3x3"] == 4 and bits["conv1"] == 8


@pytest.mark.parametrize("option, text, message", [
    ("density", "0", "in (0, 1]"), ("density", "1.5", "in (0, 1]"), ("density", "nan", "in (0, 1]"),
    ("density", "fire9.squeeze=0.5", "unknown layer 'fire9.squeeze'"), ("density", "lots", "expected a number"),
    ("bits", "0", "from 1 to 16"), ("bits", "17", "from 1 to 16"), ("bits", "conv=8,dense=x", "whole number"),
])
def test_bad_densities_and_bits_are_one_line(option, text, message):
    tiny = build(TINY, seed=0)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("]", r"\]")):
        (resolve_densities if option == "density" else resolve_bits)(text, tiny)


def test_compression_text_is_one_spelling_per_setting():
    """Protects results from pooling different compressions (and from splitting one): the ledger's
    compression cell names every setting that changes the model, defaults too, and spellings that
    resolve alike ('40%' and '0.40', items in another order or repeated) give one text."""
    text = compression_text(CompressSettings(density="paper", bits="6"))
    assert text == "density paper, 6 bits, Huffman, retrain 1, finetune 1"
    assert compression_text(CompressSettings(density=" 40% ", bits="06")) == compression_text(
        CompressSettings(density="0.4", bits="6"))
    assert compression_text(CompressSettings(density="conv10=0.2,paper,fire2/expand3x3=10%,conv10=0.1",
                                             bits="dense=5,conv=8", huffman=False, retrain_epochs=0)) == (
        "density paper,conv10=0.1,fire2.expand3x3=0.1, bits 8,conv=8,dense=5, no Huffman, retrain 0, finetune 1")
    assert compression_text(CompressSettings(density="fire2.expand3x3=0.33")).startswith("density 1,fire2")  # others kept whole
    variants = [CompressSettings(bits="8"), CompressSettings(density="0.5"), CompressSettings(huffman=False),
                CompressSettings(retrain_epochs=2), CompressSettings(finetune_epochs=0), CompressSettings(kmeans_iters=5)]
    texts = [compression_text(v) for v in variants]
    assert len(set(texts + [text])) == len(texts) + 1  # each setting tells a compression apart
    assert compression_text(CompressSettings(seed=3, lr=0.5)) == compression_text(CompressSettings())  # own columns


# ---------------------------------------------------------------------------------------------
# The whole pipeline, exact


def _no_training(**kw):
    return CompressSettings(retrain_epochs=0, finetune_epochs=0, **kw)


@pytest.mark.parametrize("huffman", [True, False])
def test_decoding_gives_the_quantized_weights_bit_for_bit(huffman):
    model = build(TINY, seed=3)
    result = compress_model(model, _no_training(density="paper", bits="conv=5", huffman=huffman))
    decoded = to_model(codec.decode(result.data))
    for (k, a), (k2, b) in zip(model.state_dict().items(), decoded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and bits_of(a) == bits_of(b), k
    for layer in weighted_layers(model):
        w = layer.weight.detach().flatten()
        kept = w[w != 0]
        assert len(torch.unique(kept)) <= 32  # 5 bits: at most 32 shared values
        assert bits_of(w[w == 0]) == bits_of(torch.zeros(int((w == 0).sum())))  # pruned weights are +0.0


def test_v10_sizes_near_the_papers():
    """SqueezeNet v1.0 with the paper's densities, random weights, no training.

    The paper: 0.66 MB at 8 bits, 0.47 MB at 6 bits (Deep Compression with Huffman coding).
    """
    sizes = {}
    for bits, huffman in ((8, False), (6, True)):
        model = build(resolve("squeezenet1_0", {}), seed=0)
        result = compress_model(model, _no_training(density="paper", bits=str(bits), huffman=huffman))
        kept = sum(s.kept for s in result.sizes.layers)
        # Table 1's densities, by hand: 14,112 + squeeze and 1x1 layers whole or halved + 33% (30%) of the
        # 3x3 layers + 20% of conv10's 512,000
        assert kept == 421_541
        sizes[bits] = len(result.data)
        (n,) = struct.unpack("<I", result.data[8:12])
        coded = json.loads(result.data[12:12 + n])["shared"]["huffman"]
        assert any(c for c, _ in coded) == huffman  # the big layers' codes are Huffman-coded, when asked
        decoded = to_model(codec.decode(result.data))
        assert all(bits_of(a) == bits_of(b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))
    assert 0.55e6 < sizes[8] < 0.70e6
    assert sizes[6] < 0.5e6


# ---------------------------------------------------------------------------------------------
# Damaged files


def test_damaged_files_are_refused_in_one_line(tmp_path):
    data = compress_model(build(TINY, seed=0), _no_training(bits="4")).data
    (tmp_path / "ok.fadc").write_bytes(data)
    model, decoded = load_compressed(tmp_path / "ok.fadc")
    assert decoded.spec["stem_filters"] == 16
    cases = {
        "truncated": data[:-7],
        "flipped": data[:-100] + bytes([data[-100] ^ 1]) + data[-99:],
        "header cut": data[:20],
        "not one": b"PK\x03\x04" + data[4:],
        "extra": data + b"\x00",
    }
    for name, blob in cases.items():
        (tmp_path / f"{name}.fadc").write_bytes(blob)
        with pytest.raises(codec.CompressedFileError) as info:
            load_compressed(tmp_path / f"{name}.fadc")
        assert "\n" not in str(info.value), name
    # A header edited to lie about its payload (the checksum still matching) is one line too.
    (n,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12:12 + n])
    header["shared"]["kept"][0] += 1
    raw = json.dumps(header).encode()
    with pytest.raises(codec.CompressedFileError):
        codec.decode(codec.MAGIC + struct.pack("<I", len(raw)) + raw + data[12 + n:])


# ---------------------------------------------------------------------------------------------
# The commands, on a real (tiny) run

from typer.testing import CliRunner  # noqa: E402

from fireablate import ledger as L  # noqa: E402
from fireablate.cli import app  # noqa: E402

runner = CliRunner()
NET = ["--stem-filters", "16", "--base-e", "16", "--incr-e", "16", "--n-fire", "3", "--pool-after", "2,3"]
DATA = ["--data", "synthetic", "--limit-train", "200", "--limit-test", "100"]
QUICK = ["--retrain-epochs", "1", "--finetune-epochs", "1"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code):
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("fireablate: error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run of a tiny cifar network on synthetic images, with its ledger."""
    base = tmp_path_factory.mktemp("trained")
    result = cli("train", *NET, *DATA, "--recipe", "fast", "--epochs", "1", "--batch-size", "50", "--device", "cpu",
                 "--ledger", base / "ledger.csv")
    assert result.exit_code == 0, result.output
    (rid,) = [p.name for p in base.iterdir() if p.is_dir()]
    return base, rid


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run and its ledger: (ledger, run folder, run id)."""
    import shutil

    base, rid = trained
    shutil.copytree(base, tmp_path / "runs")
    ledger = tmp_path / "runs" / "ledger.csv"
    ledger.write_text(ledger.read_text().replace(str(base), str(tmp_path / "runs")))  # rows name the copy's folder
    return ledger, tmp_path / "runs" / rid, rid


def test_compress_a_run_by_id_writes_file_sidecar_and_row(run):
    ledger, folder, rid = run
    result = cli("compress", rid[:6], "--ledger", ledger, "--bits", "6", *QUICK, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = folder / f"best-compressed-{report['run_id']}.fadc"
    assert report["out"] == str(out) and out.is_file()
    assert report["file_bytes"] == out.stat().st_size  # sizes are what is on disk
    side = json.loads((folder / (out.name + ".json")).read_text())
    assert side["parent_run_id"] == rid and side["run_id"] == report["run_id"]
    assert set(report["accuracy"]) == {"original", "pruned", "retrained", "quantized", "final"}
    assert all(0 <= a <= 1 for a in report["accuracy"].values())
    assert report["layers"][0]["layer"] == "conv1" and report["layers"][-1]["layer"] == "conv5"
    assert report["layers"][3]["density"] == pytest.approx(48 / 144)  # fire2.expand3x3 at the paper's 33%
    rows = {r["run_id"]: r for r in L.read(ledger).rows}
    row = rows[report["run_id"]]
    assert row["status"] == "done" and row["preset"] == rows[rid]["preset"] and row["out_dir"] == str(out)
    assert row["mib"] == pytest.approx(out.stat().st_size / 2**20, abs=1e-6) and row["error"] == ""
    assert row["best_val_acc"] == pytest.approx(report["accuracy"]["final"])
    assert row["init"] and row["init"] != rows[rid]["init"]  # started from the parent's weights
    assert row["parent_run"] == rid and rows[rid]["parent_run"] == "" and rows[rid]["compression"] == ""
    assert row["compression"] == "density paper, 6 bits, Huffman, retrain 1, finetune 1"
    # the file holds the model whose accuracy was reported
    evaluated = cli("evaluate", out, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(report["accuracy"]["final"])
    # the same command again answers from the sidecar and adds no row
    again = cli("compress", rid[:6], "--ledger", ledger, "--bits", "6", *QUICK, "--device", "cpu")
    assert again.exit_code == 0 and "already compressed" in again.stdout
    assert len(L.read(ledger).rows) == 2
    # a compression whose row never landed (the ledger lost it) gets its row from the sidecar
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]))
    again = cli("compress", rid[:6], "--ledger", ledger, "--bits", "6", *QUICK, "--device", "cpu")
    assert again.exit_code == 0 and "already compressed" in again.stdout
    assert [r["run_id"] for r in L.read(ledger).rows] == [rid, report["run_id"]]


def test_a_ledger_without_the_compression_columns_is_refused_before_any_work(run, monkeypatch):
    """Protects an existing ledger (the version before parent_run and compression) from a row it
    cannot hold: compress refuses it in one line, saying why and what to do, before any data is
    loaded or anything written; the ledger still takes training rows (tests/test_ledger.py)."""
    ledger, folder, rid = run
    book = L.read(ledger)
    old = [c for c in L.COLUMNS if c not in L.COMPRESSION_COLUMNS]
    ledger.write_bytes(L._csv_line(old) + b"".join(L._csv_line([L._cell(r[c]) for c in old]) for r in book.rows))
    before = ledger.read_bytes()
    assert L.read(ledger).appendable

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the ledger was checked")

    monkeypatch.setattr("fireablate.data.load", no_data)
    line = one_line_error(cli("compress", rid, "--ledger", ledger, *QUICK, "--device", "cpu"), 1)
    assert f"{ledger} was written by an older fireablate" in line and "no parent_run or compression column" in line
    assert "use another --ledger" in line
    assert ledger.read_bytes() == before
    _nothing_written(folder, ledger, 1)


def test_compress_a_model_file_with_its_own_data_and_no_parent(tmp_path):
    model = tmp_path / "tiny.pt"
    assert cli("build", *NET, "--output", model).exit_code == 0
    result = cli("compress", model, *DATA, "--density", "0.4", "--bits", "conv=4", "--no-huffman",
                 "--retrain-epochs", "0", "--finetune-epochs", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "total on disk" in result.stdout and "no parent run" in result.stdout
    (out,) = tmp_path.glob("tiny-compressed-*.fadc")
    assert json.loads((tmp_path / (out.name + ".json")).read_text())["parent_run_id"] is None
    (row,) = L.read(L.ledger_path()).rows
    assert row["parent_run"] == "" and row["compression"].startswith("density 0.4, bits 8,conv=4, no Huffman, retrain 0")
    _, decoded = load_compressed(out)
    assert {s.bits for s in decoded.layers} == {4}
    assert all(s.kept == int(0.4 * s.weights + 0.5) for s in decoded.layers)  # 40% of each layer, rounded


def test_sizes_only_without_data(tmp_path):
    model = tmp_path / "tiny.pt"
    assert cli("build", *NET, "--output", model).exit_code == 0
    result = cli("compress", model, "--data", "none", "--retrain-epochs", "0", "--finetune-epochs", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accuracy"]["final"] is None and report["ledger"] is None
    assert not (tmp_path / "ledger").exists()  # nothing evaluated, no row


def _nothing_written(folder, ledger, rows_before):
    assert not list(folder.glob("*.fadc*")) and not list(folder.glob(".*.tmp"))
    assert len(L.read(ledger).rows) == rows_before


@pytest.mark.parametrize("args, code, message", [
    (["--density", "0"], 2, "in (0, 1]"),
    (["--density", "1.2"], 2, "in (0, 1]"),
    (["--bits", "17"], 2, "from 1 to 16"),
    (["--bits", "0"], 2, "from 1 to 16"),
    (["--density", "fire7.expand3x3=0.3"], 2, "unknown layer 'fire7.expand3x3'"),
    (["--data", "none"], 2, "--data none cannot retrain"),
])
def test_bad_options_fail_before_anything_is_written(run, args, code, message):
    ledger, folder, rid = run
    before = len(L.read(ledger).rows)
    message_line = one_line_error(cli("compress", folder, "--ledger", ledger, *args), code)
    assert message in message_line
    _nothing_written(folder, ledger, before)


def test_compress_never_replaces_other_files_and_asks_for_data_it_cannot_know(run, tmp_path):
    ledger, folder, rid = run
    best = (folder / "best.pt").read_bytes()
    assert "is the model being compressed" in one_line_error(
        cli("compress", folder, "--ledger", ledger, "--out", folder / "best.pt"), 2)
    assert "is not a compressed model" in one_line_error(
        cli("compress", folder, "--ledger", ledger, "--out", folder / "result.json"), 2)
    assert (folder / "best.pt").read_bytes() == best
    model = tmp_path / "tiny.pt"
    assert cli("build", *NET, "--output", model).exit_code == 0
    assert "give --data" in one_line_error(cli("compress", model), 2)  # a bare model file: no run, no data
    assert "give --data" in one_line_error(cli("evaluate", model), 2)
    _nothing_written(folder, ledger, 1)


def test_a_run_that_is_not_done_is_refused(run):
    ledger, folder, rid = run
    result_json = folder / "result.json"
    result_json.write_text(result_json.read_text().replace('"status": "done"', '"status": "diverged"'))
    assert "is diverged, not done" in one_line_error(cli("compress", folder, "--ledger", ledger), 2)
    result_json.unlink()  # an interrupted run: no result yet
    assert "not a finished fireablate run" in one_line_error(cli("compress", folder, "--ledger", ledger), 2)
    # a run the ledger has only as failed
    row = dict(L.read(ledger).rows[0], run_id="abcdef012345", status="failed", error="boom")
    L.append(ledger, row)
    assert "run abcdef012345 is failed, not done" in one_line_error(cli("compress", "abcdef", "--ledger", ledger), 2)
    assert "no run 999" in one_line_error(cli("compress", "999", "--ledger", ledger), 2)
    _nothing_written(folder, ledger, 2)


def test_damaged_compressed_files_and_foreign_models_are_one_line(tmp_path):
    model = tmp_path / "tiny.pt"
    assert cli("build", *NET, "--output", model).exit_code == 0
    assert cli("compress", model, "--data", "none", "--retrain-epochs", "0", "--finetune-epochs", "0",
               "--out", tmp_path / "ok.fadc").exit_code == 0
    data = (tmp_path / "ok.fadc").read_bytes()
    (tmp_path / "cut.fadc").write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(cli("evaluate", tmp_path / "cut.fadc", *DATA), 1)
    (tmp_path / "noise.onnx").write_bytes(b"\x08\x07garbage" * 10)
    # Without the export extra, any .onnx file asks for it first (one line either way).
    expected = "not an ONNX model" if onnx is not None else "needs the optional export dependencies"
    assert expected in one_line_error(cli("evaluate", tmp_path / "noise.onnx", *DATA), 2)
    (tmp_path / "text.pt").write_text("hello")
    assert "not a model file" in one_line_error(cli("evaluate", tmp_path / "text.pt", *DATA), 2)
    assert "compressed already" in one_line_error(cli("compress", tmp_path / "ok.fadc"), 2)


# ---------------------------------------------------------------------------------------------
# ONNX: export, int8, latency (the optional 'export' extra)

try:
    import onnx
    import onnxruntime
except ImportError:
    onnx = onnxruntime = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="onnx/onnxruntime not installed: pip install -e '.[export]'")


@needs_onnx
def test_export_a_compressed_model_to_onnx_and_evaluate_it(tmp_path):
    from fireablate.export import bench, environment

    model = tmp_path / "tiny.pt"
    assert cli("build", *NET, "--output", model).exit_code == 0
    assert cli("compress", model, *DATA, "--bits", "5", "--retrain-epochs", "0", "--finetune-epochs", "0",
               "--out", tmp_path / "tiny.fadc", "--ledger", tmp_path / "ledger.csv").exit_code == 0
    result = cli("export", tmp_path / "tiny.fadc", "--format", "onnx", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = tmp_path / "tiny.onnx"
    assert report["out"] == str(out) and report["bytes"] == out.stat().st_size and report["max_abs_diff"] < 1e-4
    proto = onnx.load(out)
    assert {p.key for p in proto.metadata_props} >= {"fireablate_format", "spec", "data"}
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)  # self-contained
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch dimension is dynamic
        assert session.run(None, {"x": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 10)
    # same accuracy from the ONNX file as from the compressed one, on the data the file remembers
    via_onnx = json.loads(cli("evaluate", out, "--json").stdout)
    via_fadc = json.loads(cli("evaluate", tmp_path / "tiny.fadc", "--json").stdout)
    assert via_onnx["data"] == "synthetic" and via_onnx["n_test"] == 100
    assert via_onnx["accuracy"] == pytest.approx(via_fadc["accuracy"], abs=0.011)
    # latency rows: every engine on 1 thread (and on all cores, where there are more)
    spec_model, _ = load_compressed(tmp_path / "tiny.fadc")
    rows = bench(spec_model, spec_model.spec, out.read_bytes(), None, warmup=2, runs=5)
    assert {r["engine"] for r in rows} == {"torch eager fp32", "onnxruntime fp32"} and rows[0]["threads"] == 1
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)
    assert environment()["onnxruntime"] == onnxruntime.__version__


@needs_onnx
def test_int8_export_is_calibrated_and_measured(run):
    ledger, folder, rid = run
    result = cli("export", folder / "best.pt", "--int8", "--calibrate", "50")
    assert result.exit_code == 0, result.output
    assert "max abs difference" in result.stdout and "onnx int8" in result.stdout and "50 training images" in result.stdout
    out = folder / "best.int8.onnx"
    proto = onnx.load(out)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights  # conv weights stored as int8
    evaluated = json.loads(cli("evaluate", out, "--json").stdout)
    assert evaluated["kind"] == "onnx int8" and evaluated["n_test"] == 100


@needs_onnx
def test_foreign_onnx_files_are_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    assert "fireablate did not export" in one_line_error(cli("evaluate", tmp_path / "other.onnx", *DATA), 2)


def test_export_without_the_extra_says_how_to_install(tmp_path):
    import subprocess
    import sys

    model = tmp_path / "tiny.pt"
    assert cli("build", *NET, "--output", model).exit_code == 0
    probe = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None\n"
             "from fireablate.cli import main; sys.argv = ['fireablate', 'export', sys.argv[1]]; main()")
    result = subprocess.run([sys.executable, "-c", probe, str(model)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "fireablate: error: ONNX needs the optional export dependencies: pip install -e '.[export]'"]
    assert not (tmp_path / "tiny.onnx").exists()


@pytest.mark.parametrize("command", ["compress", "evaluate", "export"])
def test_the_new_commands_have_examples(command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"fireablate {command}" in result.stdout.split("Examples:")[1]


def test_batch_norm_statistics_are_re_estimated_for_the_changed_weights():
    """Protects the accuracy after pruning and weight sharing: batch norm's running statistics are
    recomputed for the weights the model has now (the plain average over training images, no
    augmentation, dropout off), momentum restored, the model left in eval mode."""
    from fireablate import data as D
    from fireablate.compress import recalibrate_batch_norm

    data = D.synthetic(n_train=64, n_test=10)
    model = build(resolve("cifar_tiny"), seed=0)
    first_bn = model.features[2]
    first_bn.running_mean.fill_(5.0)  # statistics of weights the model no longer has
    first_bn.running_var.fill_(9.0)
    seen = []
    model.features[1].register_forward_hook(lambda mod, inp, out: seen.append(out.detach().clone()))
    recalibrate_batch_norm(model, data, torch.device("cpu"), batch=64, images=64)
    acts = seen[0]  # relu(conv1(x)) for the 64 images in one batch: exactly what the average sees
    assert torch.allclose(first_bn.running_mean, acts.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first_bn.running_var, acts.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert first_bn.momentum == 0.1 and not model.training
    assert all(not m.training for m in model.modules())
    again = build(resolve("cifar_tiny"), seed=0)
    again.load_state_dict(model.state_dict())
    recalibrate_batch_norm(again, data, torch.device("cpu"), batch=64, images=64)
    # the classifier's batch norm sits behind dropout: equal twice only if dropout was off
    assert torch.equal(again.classifier[3].running_mean, model.classifier[3].running_mean)
