"""The run ledger: one CSV file, one row per run, only ever appended to.

This module is the one place that knows the columns. Appends take a POSIX lock on a sidecar
``.lock`` file (fcntl locks also hold across NFS clients) and write the row with one ``write``
call on an O_APPEND descriptor, then fsync, so concurrent writers on one machine or many never
tear or drop a row. Readers skip a damaged row with a warning naming its line instead of refusing
the whole file; nothing here ever rewrites what is already there. A ledger of the version before
COMPRESSION_COLUMNS keeps taking training rows under its own header; only a compressed model's row
needs a ledger of this version.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .config import CONFIG_COLUMNS, TrainConfig, TrainResult
from .errors import LedgerError
from .files import lock
from .options import options_of
from .params import Count
from .spec import SPEC_OPTIONS, NetSpec, spec_cells

DEFAULT_LEDGER = Path("runs") / "ledger.csv"
STATUSES = ("done", "failed", "diverged")
INTERRUPTED = "interrupted"  # how the error of a failed row starts when the run itself did not fail

# The columns are derived from the option declarations (spec.py, config.py): a new network or
# training option gets its column without an edit here.
SPEC_COLUMNS = ["network", *SPEC_OPTIONS]
OUTCOME_COLUMNS = [
    "epochs", "best_epoch", "best_val_acc", "best_val_loss", "final_val_acc", "final_val_loss",
    "train_time_s", "images_per_sec",
]
# A compressed model's own columns: the run it was compressed from, and its settings as one
# canonical text (compress.compression_text). Training rows leave them blank. They come last, so
# that the header of a ledger written before them is a prefix of COLUMNS and that ledger still
# takes training rows (see _writable).
COMPRESSION_COLUMNS = ["parent_run", "compression"]
COLUMNS = [
    "run_id", "status", "preset", "sweep_param", "sweep_value",
    *SPEC_COLUMNS,
    "params", "mib", "macs",
    "data_identity", "n_train", "n_test", *CONFIG_COLUMNS,
    *OUTCOME_COLUMNS,
    "fireablate_version", "torch_version", "host", "started", "ended", "out_dir", "slurm_job_id", "error",
    *COMPRESSION_COLUMNS,
]
NUMERIC = {
    *(name for name, (opt, _) in SPEC_OPTIONS.items() if opt.kind in (int, float)),
    *(opt.column for opt in options_of(TrainConfig).values() if opt.column and opt.kind in (int, float)),
    "params", "mib", "macs", "n_train", "n_test", *OUTCOME_COLUMNS,
}
_RUN_ID = re.compile(r"^[0-9a-f]{12}$")


def ledger_path(path: str | Path | None = None) -> Path:
    """--ledger, else $FIREABLATE_LEDGER, else runs/ledger.csv under the current folder."""
    return Path(path or os.environ.get("FIREABLATE_LEDGER") or DEFAULT_LEDGER)


def make_row(
    *, run_id: str, status: str, spec: NetSpec, config: TrainConfig, counts: Count, data_source: str,
    data_identity: str, result: TrainResult | None = None, error: str = "", sweep_param: str = "",
    sweep_value: str = "", out_dir: str = "", slurm_job_id: str = "",
) -> dict[str, Any]:
    """One ledger row, from a finished result or, for a run that failed, from what is known."""
    import torch

    from . import __version__

    row: dict[str, Any] = {c: "" for c in COLUMNS}
    row.update(spec_cells(spec))
    row.update(config.cells())
    row.update(
        run_id=run_id, status=status, preset=spec.name, sweep_param=sweep_param, sweep_value=sweep_value,
        params=counts.params, mib=round(counts.mib(), 6), macs=counts.macs, data=data_source,
        data_identity=data_identity, fireablate_version=__version__, torch_version=torch.__version__,
        host=socket.gethostname(), out_dir=out_dir, slurm_job_id=slurm_job_id, error=error,
    )
    if result is not None:
        row.update({c: getattr(result, c) for c in OUTCOME_COLUMNS})
        row.update(
            n_train=result.n_train, n_test=result.n_test, train_time_s=round(result.train_time_s, 3),
            images_per_sec=round(result.images_per_sec, 2), device=result.device, precision=result.precision,
            started=result.started, ended=result.ended, out_dir=result.out_dir,
            error=error or (result.message if status != "done" else ""),
        )
    return row


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value)


# A record whose writer stopped mid-row (killed, or out of disk) is closed off by the next append
# with this marker as its last cell; see _separator. It holds no comma, quote or newline, so it is
# written bare and reads back as one cell.
_TORN = "~torn: its writer stopped mid-row; closed off by a later append~"
_TORN_REASON = "cut off mid-row by a writer that stopped; closed off by a later append"
_HEADER_MAX = 64 * 1024  # a longer first line is no ledger's header, and is not read whole to find out
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, as surrogateescape decodes them


def _csv_line(cells: list[str]) -> bytes:
    """One CSV record, ending in a newline, as UTF-8."""
    buf = io.StringIO()
    # Written with a '\r\n' terminator because csv then quotes every cell that holds a '\r' (with
    # '\n' alone Python 3.11 leaves such a cell bare, and a bare '\r' ends the record for readers);
    # the record still ends in '\n' like every other. A cell that is not valid text (a path in an
    # undecodable encoding) is written with backslash escapes rather than failing the append.
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return (buf.getvalue()[:-2] + "\n").encode("utf-8", "backslashreplace")


def _refuse_special(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise LedgerError(f"{path} is a folder, not a ledger file")
    kind = ("a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    raise LedgerError(f"{path} is {kind}, not a ledger file")


def _open_ledger(path: Path, flags: int, verb: str) -> int:
    """A descriptor on the ledger file; LedgerError (one line) for anything that is not a regular
    file or cannot be opened, FileNotFoundError when it is missing and ``flags`` do not create it."""
    # A named pipe or a device is refused before it is opened: opening a pipe waits for a writer
    # (a read would hang for good) and opening a device can act on it. Should the name change in
    # between, O_NONBLOCK keeps the open itself from waiting and the fstat after it decides.
    try:
        _refuse_special(path, os.stat(path).st_mode)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise LedgerError(f"cannot {verb} ledger {path}: {exc.strerror or exc}") from exc
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
    except FileNotFoundError as exc:
        if not flags & os.O_CREAT:
            raise
        raise LedgerError(f"cannot {verb} ledger {path}: {exc.strerror}") from exc
    except OSError as exc:
        raise LedgerError(f"cannot {verb} ledger {path}: {exc.strerror or exc}") from exc
    try:
        _refuse_special(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _names(names: list[str]) -> str:
    """Column names for a one-line message: quoted (so control characters show), at most five."""
    shown = ", ".join(repr(n[:30]) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _header(path: Path, first: bytes) -> list[str]:
    """The columns a ledger's first line names; LedgerError when it is no fireablate ledger's header.

    Any subset of COLUMNS that has run_id and status is a header: ledgers of older versions,
    written before columns were added, stay readable.
    """
    if len(first) >= _HEADER_MAX and not first.endswith(b"\n"):
        raise LedgerError(f"{path} is not a fireablate ledger: its first line is not a ledger header")
    try:
        text = first.decode("utf-8").removeprefix("\ufeff")  # a spreadsheet may add a byte-order mark
    except UnicodeDecodeError:
        raise LedgerError(f"{path} is not a fireablate ledger: it is not UTF-8 text (a binary file?)") from None
    try:
        if "\x00" in text:
            raise csv.Error("NUL")
        names = next(csv.reader([text]), [])
    except csv.Error:
        raise LedgerError(f"{path} is not a fireablate ledger: its first line is not a CSV header "
                          "(a binary file?)") from None
    unknown = [n for n in dict.fromkeys(names) if n not in COLUMNS]
    if unknown:
        raise LedgerError(f"{path} is not a ledger this fireablate can read: its header has unknown columns "
                          f"{_names(unknown)} (a newer fireablate's ledger, or not a ledger at all)")
    repeated = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if repeated:
        raise LedgerError(f"{path} is not a fireablate ledger: its header repeats {_names(repeated)}")
    missing = [c for c in ("run_id", "status") if c not in names]
    if missing:
        raise LedgerError(f"{path} is not a fireablate ledger: its header has no {_names(missing)}")
    return names


def _records(text: str, first_line: int) -> Iterator[tuple[int, list[str] | str]]:
    """Each CSV record of ``text`` with the line it starts on: its cells, or why csv cannot read it.

    Lines end at '\n' only, as append ends them. After an error csv goes on at the next line, so
    a damaged record costs that record alone.
    """
    reader = csv.reader(io.StringIO(text))
    consumed = 0  # lines read before the next record
    seen, at = 1, 0  # line `seen` of text starts at offset `at`: where the line of the last error was
    while True:
        try:
            record: list[str] | str = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # A torn record that ended in '\r' fails here once closed off (csv refuses the comma
            # after a bare '\r'), so its marker is looked for on the line csv stopped in.
            while seen < reader.line_num:
                at, seen = text.index("\n", at) + 1, seen + 1
            end = text.find("\n", at)
            stopped_in = text[at:] if end < 0 else text[at:end]
            if stopped_in.rstrip("\r").endswith(_TORN):
                record = _TORN_REASON
            elif str(exc).startswith("new-line character seen in unquoted field"):
                record = "a line break inside an unquoted cell"  # csv's own words suggest a fix for code, not for files
            else:
                record = str(exc)
        yield first_line + consumed, record
        consumed = reader.line_num


def _separator(path: Path, body: str, row: str) -> str:
    """What to write after the ledger's rows (``body``, from line 2) so that ``row`` reads back whole.

    Usually nothing. But a writer that stopped mid-row (killed, or a full disk before appends were
    checked) leaves a record with no final newline, or one cut inside a quoted cell, where even a
    newline does not end it and csv would read the next row as more of it. What is written is
    never rewritten, so the torn record is closed off: a quote if the reader is inside one, then as
    many commas as there are columns and the _TORN marker, then a newline. A torn record has at
    least one cell, so it now has more cells than the header and every reader (this one, an older
    fireablate, pandas) refuses it, rather than taking a cut-off last cell (an error message, say)
    for a whole one, and read names it as torn on the line where it starts.

    Whether a quote is open is for the reader to say, not a count of quotes (a damaged line can hold
    a stray one): each candidate is parsed as read parses, and the first after which the new row
    reads back whole on a line of its own is the one written.
    """
    close = "," * len(COLUMNS) + _TORN + "\n"
    alone = next(_records(row, 1))[1]
    for sep in ("", close, '"' + close):
        if sep == "" and body and not body.endswith("\n"):  # it could only run into the torn record
            continue
        text = body + sep
        last = None
        for last in _records(text + row, 2):
            pass
        if last == (2 + text.count("\n"), alone):
            return sep
    raise LedgerError(f"cannot append to {path}: its last row is damaged in a way fireablate cannot close off; "
                      "use another --ledger")


_BEFORE_COMPRESSION = len(COLUMNS) - len(COMPRESSION_COLUMNS)  # the header of the version before them


def _writable(header: list[str]) -> list[str] | None:
    """The columns an append writes under ``header``: all of COLUMNS for this version's ledger, the
    ones it has for a ledger written before COMPRESSION_COLUMNS (its header a prefix of COLUMNS that
    lacks some of them), None for any other header: another version's, which append refuses."""
    return header if len(header) >= _BEFORE_COMPRESSION and header == COLUMNS[:len(header)] else None


def _another_version(path: Path, then: str) -> LedgerError:
    return LedgerError(f"{path} was written by another version of fireablate (its columns differ); {then}")


def _lacks(path: Path, missing: list[str]) -> LedgerError:
    """Why a compressed model's row cannot go into a ledger written before its columns, and what to do."""
    return LedgerError(f"{path} was written by an older fireablate: its header has no {' or '.join(missing)} "
                       "column, so it takes training runs but not a compressed model's row; "
                       "use another --ledger (a new file gets this version's columns)")


def _row_line(path: Path, columns: list[str], row: dict[str, Any]) -> bytes:
    """``row`` as a record under ``columns`` (a prefix of COLUMNS). A cell the header has no column
    for must be blank: what a row says is never dropped on the way into the file."""
    missing = [c for c in COLUMNS[len(columns):] if _cell(row.get(c))]
    if missing:
        raise _lacks(path, missing)
    return _csv_line([_cell(row.get(c)) for c in columns])


def _continuation(path: Path, fd: int, row: dict[str, Any]) -> bytes:
    """What to write to a ledger that has a header already: ``row``, after what it needs first."""
    with open(fd, "rb", closefd=False) as fh:
        first = fh.readline(_HEADER_MAX)
        columns = _writable(_header(path, first))
        if columns is None:
            raise _another_version(path, "use another --ledger")
        line = _row_line(path, columns, row)
        body = fh.read()
    if not first.endswith(b"\n"):  # the header, whole, but without its newline
        return b"\n" + line
    return _separator(path, body.decode("utf-8", "surrogateescape"), line.decode()).encode() + line


def _write_all(fd: int, path: Path, data: bytes) -> None:
    """Write ``data`` at the end of the ledger and onto the disk, or raise and leave the file as it was."""
    size = os.fstat(fd).st_size
    done = 0
    try:
        # A full disk or quota, or a file-size limit, can make write take only part of the data and
        # say so only in its count; the next call then raises the reason.
        while done < len(data):
            n = os.write(fd, memoryview(data)[done:])
            if n == 0:  # neither progress nor an error: stop rather than spin
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        os.fsync(fd)
    except OSError as exc:
        # Take back what did get written, so the ledger ends where it did and an error means the
        # row is not there. Only when the file is exactly as long as this append made it: bytes
        # that a writer ignoring the lock added meanwhile are not ours to cut. Should this fail
        # too, the torn row stays, and the next append closes it off (see _separator).
        try:
            restored = os.fstat(fd).st_size == size + done
            if restored:
                os.ftruncate(fd, size)
                os.fsync(fd)
        except OSError:
            restored = False
        state = "the ledger is as it was" if restored else "its last row may be torn; the next append closes it off"
        raise LedgerError(f"cannot append to ledger {path}: {exc.strerror or exc} ({state})") from exc


def append(path: Path, row: dict[str, Any]) -> None:
    """Append one row; write the header first if the ledger is new.

    A ledger written before COMPRESSION_COLUMNS gets the columns its header has; a row that fills
    one it lacks (a compressed model's) is refused with LedgerError. Under the ledger's lock the row (after what closes off a torn last row, if any) goes out in one
    write on an O_APPEND descriptor, then fsync. A failed append raises LedgerError and takes back
    what it wrote of the row.
    """
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown ledger columns {sorted(unknown)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"bad status {row.get('status')!r}")
    path = Path(path)
    with lock(path):
        fd = _open_ledger(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, "append to")
        try:
            if os.fstat(fd).st_size == 0:
                data = _csv_line(COLUMNS) + _row_line(path, COLUMNS, row)
            else:
                data = _continuation(path, fd, row)
            _write_all(fd, path, data)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Ledger:
    rows: list[dict[str, Any]]  # good rows, numbers parsed
    warnings: list[str]  # one per skipped row, with its line number
    path: Path
    columns: tuple[str, ...] = tuple(COLUMNS)  # the file's header; a new or empty ledger gets all of COLUMNS

    @property
    def appendable(self) -> bool:
        """False for a ledger of another version: readable, but append refuses it."""
        return _writable(list(self.columns)) is not None

    def require_appendable(self, compressed: bool = False) -> "Ledger":
        """Fail now, before a run trains or a model is compressed, when ``append`` would refuse the
        row; ``compressed``: the row is a compressed model's, which fills COMPRESSION_COLUMNS."""
        if not self.appendable:
            raise _another_version(self.path, "it can be read, but new runs need another --ledger")
        missing = [c for c in COMPRESSION_COLUMNS if c not in self.columns] if compressed else []
        if missing:
            raise _lacks(self.path, missing)
        return self

    def frame(self):
        """The rows as a pandas DataFrame with the ledger's columns."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=COLUMNS)

    def status_of(self) -> dict[str, str]:
        """run_id -> its best status so far (done beats diverged beats failed).

        A run that was interrupted (killed by Slurm, say) is not an outcome: it counts as never
        finished, so the next sweep continues it.
        """
        rank = {"failed": 0, "diverged": 1, "done": 2}
        best: dict[str, str] = {}
        for r in self.rows:
            if r["status"] == "failed" and str(r["error"]).startswith(INTERRUPTED):
                continue
            if r["run_id"] not in best or rank[r["status"]] > rank[best[r["run_id"]]]:
                best[r["run_id"]] = r["status"]
        return best


def _parse(values: list[str], columns: list[str]) -> dict[str, Any] | str:
    """A good row as a dict with every one of COLUMNS (those ``columns`` lack blank, or NaN when
    numeric), or the reason it is damaged."""
    if values and values[-1] == _TORN:
        return _TORN_REASON
    if len(values) != len(columns):
        return f"expected {len(columns)} fields, found {len(values)}"
    if any(_NOT_UTF8.search(v) for v in values):
        return "not UTF-8 text"
    found = dict(zip(columns, values))
    row: dict[str, Any] = {c: found.get(c, "") for c in COLUMNS}
    if not _RUN_ID.match(row["run_id"]):
        return f"bad run id {row['run_id'][:20]!r}"
    if row["status"] not in STATUSES:
        return f"unknown status {row['status'][:20]!r}"
    for c in NUMERIC:
        if row[c] == "":
            row[c] = math.nan
            continue
        try:
            row[c] = float(row[c])
        except ValueError:
            return f"{c} is not a number: {row[c][:20]!r}"
    return row


def read(path: Path, missing_ok: bool = True) -> Ledger:
    """All good rows; each damaged one is skipped with a warning naming its line.

    A ledger from an older version (fewer columns) reads with the missing cells blank. Anything
    that is not a ledger (a pipe, a binary file, other columns) is one LedgerError line.
    """
    path = Path(path)
    try:
        fd = _open_ledger(path, os.O_RDONLY, "read")
    except FileNotFoundError:
        if missing_ok:
            return Ledger([], [], path)
        raise LedgerError(f"ledger not found: {path}") from None
    try:
        with open(fd, "rb") as fh:
            first = fh.readline(_HEADER_MAX)
            # The header is checked before the rest is read: a large binary file is turned away
            # without being loaded whole.
            columns = _header(path, first) if first.strip() else None
            body = fh.read()
    except OSError as exc:
        raise LedgerError(f"cannot read ledger {path}: {exc.strerror or exc}") from exc
    if columns is None:
        if not body.strip():
            return Ledger([], [], path)
        columns = _header(path, first)  # raises: a blank line is no header
    rows, warnings = [], []
    for line, record in _records(body.decode("utf-8", "surrogateescape"), 2):
        if record == []:  # a blank line
            continue
        parsed = record if isinstance(record, str) else _parse(record, columns)
        if isinstance(parsed, str):
            warnings.append(f"{path} line {line}: damaged row ({parsed}); skipped")
        else:
            rows.append(parsed)
    return Ledger(rows, warnings, path, tuple(columns))


def read_frame(path: str | Path | None = None):
    """The ledger at ``path`` (default as ``ledger_path``) as a DataFrame: the Python API's view."""
    return read(ledger_path(path), missing_ok=False).frame()
