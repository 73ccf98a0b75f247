import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fireablate import ledger as L
from fireablate.cli import app
from fireablate.errors import LedgerError
from fireablate.files import lock
from fireablate.params import count
from fireablate.config import TrainConfig

from .helpers import TINY

CFG = TrainConfig(data="synthetic")


def _row(i: int, status: str = "done", **extra):
    row = L.make_row(run_id=f"{i:012x}", status=status, spec=TINY, config=CFG, counts=count(TINY),
                     data_source="synthetic", data_identity="abc", sweep_param="sr", sweep_value=str(i))
    row.update(best_val_acc=0.5 + i / 1000, **extra)
    return row


def test_round_trip(tmp_path):
    path = tmp_path / "l.csv"
    for i in range(3):
        L.append(path, _row(i, error='a "quoted", multi\nline message' if i == 1 else ""))
    book = L.read(path)
    assert book.warnings == []
    df = book.frame()
    assert list(df.columns) == L.COLUMNS and len(df) == 3
    assert df["best_val_acc"].tolist() == [0.5, 0.501, 0.502]
    assert df.loc[1, "error"] == 'a "quoted", multi\nline message'
    assert df.loc[0, "sr"] == TINY.meta.sr and df.loc[0, "pool_after"] == "2,3" and df.loc[0, "params"] == count(TINY).params
    assert path.read_text().splitlines()[0] == ",".join(L.COLUMNS)


def test_damaged_rows_are_skipped_with_their_line_number(tmp_path):
    path = tmp_path / "l.csv"
    L.append(path, _row(1))
    with open(path, "a") as fh:
        fh.write("0000000000ff,done,cut off here\n")
        fh.write("not-a-run-id" + "," * (len(L.COLUMNS) - 1) + "\n")
    L.append(path, _row(2))
    with open(path, "a") as fh:
        fh.write("00000000abcd,done,torn")  # a writer died mid-row: no newline
    L.append(path, _row(3))  # starts on a line of its own, the torn one stays as it was
    book = L.read(path)
    assert [r["run_id"] for r in book.rows] == [f"{i:012x}" for i in (1, 2, 3)]
    assert len(book.warnings) == 3
    assert "line 3: damaged row (expected" in book.warnings[0]
    assert "line 4: damaged row (bad run id" in book.warnings[1]
    assert "line 6: damaged row (cut off mid-row" in book.warnings[2]
    assert "\n00000000abcd,done,torn," in path.read_text()  # kept as it was, closed off after its last byte


def test_status_and_schema(tmp_path):
    path = tmp_path / "l.csv"
    L.append(path, _row(1, status="failed"))
    L.append(path, _row(1, status="done"))
    L.append(path, _row(2, status="diverged"))
    assert L.read(path).status_of() == {f"{1:012x}": "done", f"{2:012x}": "diverged"}
    other = tmp_path / "other.csv"
    other.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(LedgerError, match="unknown columns 'a', 'b', 'c'"):
        L.read(other)
    with pytest.raises(LedgerError, match="not a ledger this fireablate can read"):
        L.append(other, _row(1))
    assert other.read_text() == "a,b,c\n1,2,3\n"  # untouched
    with pytest.raises(LedgerError, match="ledger not found"):
        L.read(tmp_path / "missing.csv", missing_ok=False)


def test_two_processes_appending_at_once_lose_and_tear_nothing(tmp_path):
    path = tmp_path / "shared.csv"
    script = textwrap.dedent(f"""
        import sys
        from tests.test_ledger import _row
        from fireablate import ledger as L
        base = int(sys.argv[1])
        for i in range(150):
            L.append(L.Path({str(path)!r}), _row(base + i, error="x" * 3000))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(base)], cwd=str(L.Path(__file__).parents[1]))
             for base in (0, 100000)]
    assert all(p.wait() == 0 for p in procs)
    book = L.read(path)
    assert book.warnings == []
    ids = [r["run_id"] for r in book.rows]
    assert len(ids) == 300 and len(set(ids)) == 300
    assert path.read_text().count(",".join(L.COLUMNS)) == 1  # one header


def test_many_processes_appending_at_once_leave_exactly_their_rows(tmp_path):
    """Protects the lock in ledger.append. Without it, workers racing on a new ledger each see it
    empty and each write a header, and a worker that reads the ledger while another's row is half
    copied takes that row for a torn one and closes it off: rows end up hidden behind warnings.
    Many short rounds, each on a fresh ledger with the workers released at one instant, make that
    likely without the lock (here 3 to 23 of the 60 rounds went wrong, and 4 runs in 5 failed); the
    next test catches a missing lock every time."""
    import multiprocessing as mp

    from .appender import append_rounds

    workers, rounds, rows = 3, 60, 2
    row = json.loads(json.dumps(_row(0, error="x" * 2000)))  # plain data: a child unpickling it never imports torch
    ctx = mp.get_context("spawn")  # as sweep workers are started: fresh interpreters
    barrier, start = ctx.Barrier(workers, timeout=60), ctx.RawValue("d", 0.0)  # raw: spinning on it takes no lock
    procs = [ctx.Process(target=append_rounds, args=(str(tmp_path), w, rounds, rows, row, barrier, start))
             for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * workers
    for r in range(rounds):
        path = tmp_path / f"{r}.csv"
        book = L.read(path)
        assert book.warnings == [], f"round {r}: {book.warnings}"
        ids = [x["run_id"] for x in book.rows]
        assert len(ids) == workers * rows and len(set(ids)) == len(ids), f"round {r}"
        assert path.read_text().count(",".join(L.COLUMNS)) == 1, f"round {r}: more than one header"


_APPEND_ONE = textwrap.dedent("""
    import json, sys
    from fireablate import ledger as L
    print("ready", flush=True)
    L.append(L.Path(sys.argv[1]), json.loads(sys.argv[2]))
""")


def test_append_waits_while_another_process_holds_the_ledger_lock(tmp_path):
    """Protects the lock in ledger.append, deterministically: the README promises appends under a
    POSIX lock on ledger.csv.lock, which is what keeps a writer on another node (or another
    fireablate version) from interleaving with this one. While this process holds that lock, a
    second process's append must wait, and land whole once the lock is released."""
    path = tmp_path / "l.csv"
    with lock(path):
        child = subprocess.Popen([sys.executable, "-c", _APPEND_ONE, str(path), json.dumps(_row(7))],
                                 cwd=str(L.Path(__file__).parents[1]), stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline() == "ready\n"
            with pytest.raises(subprocess.TimeoutExpired):  # an append that ignored the lock is done in ms
                child.wait(timeout=0.5)
            assert not path.exists() or L.read(path).rows == []
        except BaseException:
            child.kill()
            raise
    assert child.wait(timeout=60) == 0
    assert [r["run_id"] for r in L.read(path).rows] == [f"{7:012x}"]


def _same(a: dict, b: dict) -> bool:
    """Row equality where NaN (a blank number) equals NaN."""
    return a.keys() == b.keys() and all(x == y or (x != x and y != y) for x, y in zip(a.values(), b.values()))


def _line(row: dict) -> bytes:
    """A row as append writes it."""
    return L._csv_line([L._cell(row.get(c)) for c in L.COLUMNS])


# --- a failed append: short writes --------------------------------------------------------------

_LIMITED_APPEND = textwrap.dedent("""
    import json, resource, signal, sys
    from fireablate import ledger as L
    path, limit, row = L.Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        L.append(path, row)
    except (L.LedgerError, OSError) as exc:
        print(type(exc).__name__, exc)
    else:
        print("appended")
""")


def _append_under_size_limit(path, limit: int, row: dict) -> str:
    out = subprocess.run([sys.executable, "-c", _LIMITED_APPEND, str(path), str(limit), json.dumps(row)],
                         cwd=str(L.Path(__file__).parents[1]), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("room", [0, 100, 1], ids=["at-the-limit", "short-write-mid-row", "one-byte-left"])
def test_a_write_cut_short_raises_and_takes_its_part_row_back(tmp_path, room):
    path = tmp_path / "l.csv"
    L.append(path, _row(1))
    before = path.read_bytes()
    said = _append_under_size_limit(path, len(before) + room, _row(2))
    assert said.startswith("LedgerError cannot append to ledger") and "File too large" in said
    assert "the ledger is as it was" in said and said.count("\n") == 1  # one line
    assert path.read_bytes() == before  # nothing of row 2 stays behind to swallow the next row
    L.append(path, _row(3))  # no limit now
    book = L.read(path)
    assert book.warnings == [] and [r["run_id"] for r in book.rows] == [f"{1:012x}", f"{3:012x}"]


def test_a_header_cut_short_leaves_an_empty_ledger(tmp_path):
    path = tmp_path / "new.csv"
    said = _append_under_size_limit(path, 10, _row(1))
    assert said.startswith("LedgerError") and "File too large" in said
    assert path.read_bytes() == b""  # not 10 bytes of a header that no later append would accept
    L.append(path, _row(2))
    assert [r["run_id"] for r in L.read(path).rows] == [f"{2:012x}"]


# --- torn rows -----------------------------------------------------------------------------------

def _torn_cases():
    full = _line(_row(9, error="CUDA out of memory\nwhile training")).decode()
    quoted = full.index('"2,3"')
    return {
        "inside-quotes": full[:quoted + 3],  # ...,"2,
        "inside-quotes-after-a-newline": full[:full.index("memory\n") + 7],  # ends in '\n', quote still open
        "mid-row-no-quotes": "00000000abcd,done,torn",
        "ends-in-cr": "00000000abcd,done,torn\r",
        "ends-in-cr-inside-quotes": full[:quoted + 2] + "\r",
        "whole-but-for-its-last-cell": full[:full.index("memory")],  # would pass for a row, error cut short
        "only-its-newline-missing": _line(_row(9)).decode()[:-1],
        "stray-quote": '00000000abcd,d"one,"x\r',
    }


@pytest.mark.parametrize("name", list(_torn_cases()))
def test_a_torn_row_is_closed_off_and_reported_and_the_next_row_reads_whole(tmp_path, name):
    path = tmp_path / "l.csv"
    L.append(path, _row(1))
    L.append(path, _row(2))
    with open(path, "ab") as fh:
        fh.write(_torn_cases()[name].encode())  # a writer died here, on line 4
    before = path.read_bytes()
    L.append(path, _row(3, error='a "quoted", multi\nline message'))
    L.append(path, _row(4))
    book = L.read(path)
    assert [r["run_id"] for r in book.rows] == [f"{i:012x}" for i in (1, 2, 3, 4)]
    assert book.rows[2]["error"] == 'a "quoted", multi\nline message'
    assert book.warnings == [f"{path} line 4: damaged row ({L._TORN_REASON}); skipped"]
    assert path.read_bytes().startswith(before)  # what was there is still there, as it was


def test_cells_with_odd_characters_read_back(tmp_path):
    path = tmp_path / "l.csv"
    odd = ["progress 10%\r50%\r100%", "ends in cr\r", "\r\n", 'quote " and , comma', "not text \udcff here"]
    for i, error in enumerate(odd):
        L.append(path, _row(i, error=error))
    book = L.read(path)
    assert book.warnings == []
    assert [r["error"] for r in book.rows] == odd[:-1] + ["not text \\udcff here"]  # escaped, not lost


# --- files that are not ledgers ------------------------------------------------------------------

@contextlib.contextmanager
def _unblocking(fifo):
    """Opens ``fifo`` from the other side after a while, so that code which waits on it fails a
    test instead of hanging it."""
    stop = threading.Event()

    def other_side():
        if stop.wait(3):
            return
        while not stop.is_set():
            fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # never waits, and lets a waiting open go on
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 1 << 16)
            os.close(fd)
            time.sleep(0.1)

    thread = threading.Thread(target=other_side, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_a_named_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with _unblocking(fifo):
        started = time.monotonic()
        with pytest.raises(LedgerError, match="is a named pipe, not a ledger file"):
            L.read(fifo)
        with pytest.raises(LedgerError, match="is a named pipe, not a ledger file"):
            L.append(fifo, _row(1))
        assert time.monotonic() - started < 2
    result = CliRunner().invoke(app, ["runs", "--ledger", str(fifo)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"fireablate: error: {fifo} is a named pipe, not a ledger file"]


def test_a_device_or_a_folder_is_refused(tmp_path):
    with pytest.raises(LedgerError, match="is a device, not a ledger file"):
        L.read(L.Path("/dev/null"))
    with pytest.raises(LedgerError, match="is a folder, not a ledger file"):
        L.read(tmp_path)
    with pytest.raises(LedgerError, match="is a folder, not a ledger file"):
        L.append(tmp_path, _row(1))


@pytest.mark.parametrize("content", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8,
    b"\x00" * 300_000,  # a zeroed block, past csv's limit on a cell
    b"x" * 300_000,  # one huge line
    "run_id,status,r\u00e9sum\u00e9\n".encode("latin-1"),
    b"\xef\xbb\xbfrun_id,status\n\x00\x01,done\n"[3:] + b"\xff\xfe",  # a valid header, then garbage
], ids=["png", "zeros", "huge-line", "latin-1", "garbage-body"])
def test_a_binary_file_is_one_line_not_a_traceback(tmp_path, content):
    path = tmp_path / "l.csv"
    path.write_bytes(content)
    try:
        book = L.read(path)
    except LedgerError as exc:
        assert "is not a" in str(exc) and "\n" not in str(exc)
    else:
        assert book.rows == [] and all("\n" not in w for w in book.warnings)
    with pytest.raises(LedgerError):
        L.append(path, _row(1))
    assert path.read_bytes() == content


def test_a_row_that_is_not_utf8_is_damaged_alone(tmp_path):
    path = tmp_path / "l.csv"
    L.append(path, _row(1))
    with open(path, "ab") as fh:
        fh.write(_line(_row(2, error="caf\u00e9")).replace("\u00e9".encode(), b"\xe9"))
    L.append(path, _row(3))
    book = L.read(path)
    assert [r["run_id"] for r in book.rows] == [f"{1:012x}", f"{3:012x}"]
    assert book.warnings == [f"{path} line 3: damaged row (not UTF-8 text); skipped"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_ledger_is_one_line(tmp_path):
    path = tmp_path / "l.csv"
    L.append(path, _row(1))
    path.chmod(0)
    try:
        with pytest.raises(LedgerError, match="cannot read ledger .*Permission denied"):
            L.read(path)
    finally:
        path.chmod(0o644)


# --- ledgers of older versions -------------------------------------------------------------------

def _old_ledger(path, columns, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([L._cell(row.get(c)) for c in columns])
    path.write_text(buf.getvalue())


def test_an_older_ledger_reads_with_its_missing_columns_blank(tmp_path):
    path = tmp_path / "old.csv"
    dropped = {"preset", "weight_init", "images_per_sec", "error", "slurm_job_id"}
    columns = [c for c in L.COLUMNS if c not in dropped]
    columns[0], columns[1] = columns[1], columns[0]  # and in another order
    _old_ledger(path, columns, [_row(1), _row(2, status="failed")])
    book = L.read(path)
    assert book.warnings == []
    assert [r["run_id"] for r in book.rows] == [f"{1:012x}", f"{2:012x}"]
    for r in book.rows:
        assert list(r) == L.COLUMNS
        assert r["preset"] == "" and r["error"] == "" and math.isnan(r["images_per_sec"])
        assert r["best_val_acc"] == float(_row(int(r["run_id"], 16))["best_val_acc"])
    assert list(book.frame().columns) == L.COLUMNS
    assert book.status_of() == {f"{1:012x}": "done", f"{2:012x}": "failed"}
    _old_ledger(path, ["run_id", "status"], [_row(1)])  # the least a ledger can be
    assert [r["status"] for r in L.read(path).rows] == ["done"]


BEFORE_COMPRESSION = [c for c in L.COLUMNS if c not in L.COMPRESSION_COLUMNS]  # the previous version's header
SAMPLE = L.Path(__file__).parents[1] / "examples" / "sample" / "ledger.csv"


@pytest.mark.parametrize("columns", [
    BEFORE_COMPRESSION[:-1],  # a prefix that stops before the compression columns' version: no "error"
    [c for c in BEFORE_COMPRESSION if c != "host"],  # a column missing in the middle (the sample ledger's kind)
    [BEFORE_COMPRESSION[1], BEFORE_COMPRESSION[0], *BEFORE_COMPRESSION[2:]],  # every column, in another order
], ids=["no-error-column", "a-column-missing", "reordered"])
def test_append_refuses_an_other_versions_ledger(tmp_path, columns):
    """Protects 'a ledger of another version is refused, never rewritten': only this version's
    header and the one before the compression columns take rows; any other is refused up front
    (require_appendable) and by append, and stays as it was."""
    path = tmp_path / "old.csv"
    _old_ledger(path, columns, [_row(1)])
    before = path.read_bytes()
    book = L.read(path)
    assert [r["run_id"] for r in book.rows] == [f"{1:012x}"] and not book.appendable
    with pytest.raises(LedgerError, match="was written by another version of fireablate .*another --ledger"):
        book.require_appendable()
    with pytest.raises(LedgerError, match="was written by another version of fireablate .*use another --ledger"):
        L.append(path, _row(2))
    assert path.read_bytes() == before


def test_a_ledger_from_before_the_compression_columns_takes_training_rows(tmp_path):
    """Protects existing ledgers: one written by the version before parent_run and compression
    (its header a prefix of COLUMNS) still takes training rows, under its own header and never
    rewritten, and they read back with the new columns blank."""
    path = tmp_path / "old.csv"
    _old_ledger(path, BEFORE_COMPRESSION, [_row(1)])
    before = path.read_bytes()
    assert L.read(path).require_appendable().appendable
    L.append(path, _row(2, error='a "quoted", multi\nline message'))
    text = path.read_bytes()
    assert text.startswith(before) and text.splitlines()[0].decode() == ",".join(BEFORE_COMPRESSION)
    book = L.read(path)
    assert book.warnings == [] and [r["run_id"] for r in book.rows] == [f"{1:012x}", f"{2:012x}"]
    assert book.rows[1]["error"] == 'a "quoted", multi\nline message'
    assert book.rows[1]["parent_run"] == "" and book.rows[1]["compression"] == ""
    assert _same({c: v for c, v in book.rows[1].items() if c != "error"},
                 {c: v for c, v in _alone_as(_row(2)).items() if c != "error"})


def test_a_compressed_row_needs_the_new_columns_and_is_refused_in_one_line(tmp_path):
    """Protects compressions from being recorded without what tells them apart: on a ledger whose
    header has no parent_run and compression, require_appendable(compressed=True) (which compress
    calls before any work) and append both refuse in one line saying why and what to do, and
    nothing is written. A ledger of this version, or a new one, takes the row whole."""
    compressed = _row(3, parent_run=f"{1:012x}", compression="density paper, 6 bits, Huffman, retrain 1, finetune 1")
    path = tmp_path / "old.csv"
    _old_ledger(path, BEFORE_COMPRESSION, [_row(1)])
    before = path.read_bytes()
    for refuse in (lambda: L.read(path).require_appendable(compressed=True), lambda: L.append(path, compressed)):
        with pytest.raises(LedgerError) as caught:
            refuse()
        message = str(caught.value)
        assert "\n" not in message and "no parent_run or compression column" in message
        assert "older fireablate" in message and "use another --ledger" in message
    assert path.read_bytes() == before
    new = tmp_path / "new" / "l.csv"
    L.read(new).require_appendable(compressed=True)  # not there yet: it will get every column
    L.append(new, compressed)
    (row,) = L.read(new).rows
    assert row["parent_run"] == f"{1:012x}" and row["compression"].startswith("density paper, 6 bits")


def test_the_sample_ledger_still_reads(tmp_path):
    """Protects the repository's sample ledger (an older version's, with fewer columns): it reads,
    the compressed models' columns blank, and stays another version's for append."""
    book = L.read(SAMPLE)
    assert book.warnings == [] and len(book.rows) == 10 and not book.appendable
    assert all(r["parent_run"] == "" and r["compression"] == "" for r in book.rows)


@pytest.mark.parametrize("header,message", [
    ([*L.COLUMNS, "from_the_future"], "unknown columns 'from_the_future'"),
    (["run_id", "status", "lr", "lr"], "its header repeats 'lr'"),
    (["status", "lr"], "its header has no 'run_id'"),
    (["run_id", "status", "a\nb"], r"unknown columns 'a\\n'"),  # cut at its line's end
])
def test_a_header_that_is_no_ledgers_is_one_line(tmp_path, header, message):
    path = tmp_path / "l.csv"
    _old_ledger(path, header, [])
    with pytest.raises(LedgerError, match=message) as caught:
        L.read(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(LedgerError):
        L.append(path, _row(1))


# --- any content: read never fails but with LedgerError; append always lands whole ---------------

_HEADER = ",".join(L.COLUMNS).encode() + b"\n"
_PIECES = [_line(_row(5)), _line(_row(6, error='x "y", z\r\nw'))]
# Text made of what matters to csv (quotes, commas, line ends), pieces of real rows and anything
# else; some of it cut inside a quoted cell, as a writer dying there leaves it.
_texts = st.lists(
    st.one_of(st.sampled_from(['"', ",", "\n", "\r", "\r\n", "a", "00000000abcd", "done", "\x00", "\udcff"]),
              st.sampled_from(_PIECES).map(bytes.decode),
              st.sampled_from(_PIECES).flatmap(lambda p: st.integers(0, len(p)).map(lambda n: p[:n].decode("utf-8", "ignore"))),
              st.text(max_size=5)),
    max_size=12).map("".join)
_bodies = st.one_of(
    st.binary(max_size=400),
    _texts,
    st.tuples(_texts, st.text(st.characters(blacklist_characters='"'), max_size=8)).map(lambda t: f'{t[0]},"{t[1]}'),
).map(lambda b: b if isinstance(b, bytes) else b.encode("utf-8", "surrogateescape"))
_FUZZ = settings(max_examples=200, deadline=None, database=None)


@_FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    _bodies,
    st.tuples(st.sampled_from([_HEADER, _HEADER[:50], b"run_id,status\n", b"\xef\xbb\xbfrun_id,status\r\n", b"\n"]),
              _bodies).map(b"".join),
))
def test_any_file_reads_as_a_ledger_or_one_line(content):
    with tempfile.TemporaryDirectory() as folder:
        path = L.Path(folder) / "l.csv"
        path.write_bytes(content)
        try:
            book = L.read(path)
        except LedgerError as exc:
            assert "\n" not in str(exc)
        else:
            assert all("\n" not in w for w in book.warnings)


@_FUZZ
@given(_bodies)
def test_any_body_reads_and_takes_a_row_whole(body):
    with tempfile.TemporaryDirectory() as folder:
        path = L.Path(folder) / "l.csv"
        path.write_bytes(_HEADER + body)
        before = L.read(path)  # never raises: the header is good
        assert all("\n" not in w for w in before.warnings)
        L.append(path, _row(7))
        after = L.read(path)
        assert path.read_bytes().startswith(_HEADER + body)
        assert _same(after.rows[-1], ALONE)
        # The rows before are the same, except that a last one without its newline is now torn.
        kept = after.rows[:-1]
        assert len(kept) in (len(before.rows), len(before.rows) - 1)
        assert all(_same(a, b) for a, b in zip(kept, before.rows))
        L.append(path, _row(8))
        assert [r["run_id"] for r in L.read(path).rows[-2:]] == [f"{7:012x}", f"{8:012x}"]


def _alone_as(row: dict) -> dict:
    """``row`` as read from a ledger of its own."""
    with tempfile.TemporaryDirectory() as folder:
        L.append(L.Path(folder) / "l.csv", row)
        return L.read(L.Path(folder) / "l.csv").rows[0]


ALONE = _alone_as(_row(7))
