"""The ``fireablate`` command line: parse options, call one library function, render with rich.

Every option is declared once, on its dataclass field (``spec.py`` for the network, ``config.py``
for training); the decorators below turn those declarations into Typer options, so names, types,
choices and help are the same in every command. torch, pandas and seaborn are imported inside the
commands that need them, so ``--help`` and ``count-params`` start in a fraction of a second.
Errors the user can fix are one line on stderr; only this module prints.
"""


import dataclasses
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer._click import exceptions as click_exceptions
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .config import PLAIN_SETTINGS, TrainConfig, recipe_settings, recipe_table
from .errors import FireablateError, UsageError
from .options import Option, options_of
from .params import size_in
from .presets import PRESETS, option_name
from .spec import SPEC_OPTIONS

# Piped output gets a fixed, roomy width rather than rich's 80 columns, so tables stay whole;
# soft wrapping leaves sentences to the terminal, so a piped line or a one-line error never breaks.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int) -> None:
    err.print(f"fireablate: error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)


class _FlagsTakeNoValue:
    """Help that shows no value for a flag: typer labels every flag, --help included, ``<bool>``,
    which reads as if ``--dry-run true`` were the way to write it. A blank metavar shows nothing."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Command(_FlagsTakeNoValue, TyperCommand):
    """Every fireablate command (``@app.command(cls=_Command)``)."""


class _OneLineErrors(_FlagsTakeNoValue, TyperGroup):
    """Every error the user can fix ends as one line on stderr, never a traceback or a panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        if not args:
            args = ["--help"]
        try:
            rv = super().main(args, prog_name or "fireablate", complete_var, standalone_mode=False, **extra)
        except click_exceptions.ClickException as exc:
            _fail(exc.format_message().replace("\n", " "), exc.exit_code)
        except FireablateError as exc:
            _fail(str(exc), exc.exit_code)
        except OSError as exc:  # an unwritable --output, a full disk: the user's to fix, in one line
            where = f": {exc.filename}" if exc.filename else ""
            _fail(f"{exc.strerror or exc}{where}", 1)
        except (typer.Abort, KeyboardInterrupt):
            rv = 130
        if rv == 130:  # typer turns Ctrl-C into a silent exit code 130: say what it means
            _fail("interrupted; every finished epoch is saved, and the same command continues from there", 130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=_OneLineErrors,
    help="Fire-module (SqueezeNet) ablation studies: size calculator, training, sweeps, figures.",
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"fireablate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Fire-module (SqueezeNet) ablation studies: size calculator, training, sweeps, figures.

    Start with [bold]fireablate count-params --preset cifar[/bold], then [bold]fireablate train[/bold].
    """


# ---------------------------------------------------------------------------------------------
# Options derived from the field declarations (options.py)


def _typer_option(name: str, opt: Option, default: Any) -> inspect.Parameter:
    """One keyword parameter with a Typer option built from a field's declaration."""
    kind: Any = Literal[opt.choices] if opt.choices else opt.kind
    flag = opt.flag(name)
    if opt.kind is bool and default is None:  # a tri-state network option: --batch-norm/--no-batch-norm
        decls = [f"{flag}/--no-{option_name(name)}"]
    else:
        decls = [flag]
    annotation = Optional[kind] if default is None else kind
    option = typer.Option(*decls, help=opt.help, rich_help_panel=opt.panel or None, show_default=default is not None)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, option])


def _with_options(target: str, fields: dict[str, Option], defaults: dict[str, Any], make: Callable[[dict], Any]):
    """A decorator adding ``fields`` as options; they reach the command as ``target=make(values)``."""

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.name != target]
        params += [_typer_option(name, opt, defaults[name]) for name, opt in fields.items()]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in fields if name in kwargs}
            return func(*args, **{target: make(values)}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate


# Network options default to None: "keep the preset's value".
network_options = _with_options(
    "overrides", {name: opt for name, (opt, _) in SPEC_OPTIONS.items()}, {name: None for name in SPEC_OPTIONS},
    lambda values: {k: v for k, v in values.items() if v is not None},
)
_CONFIG_FIELDS = {name: opt for name, opt in options_of(TrainConfig).items() if name != "init"}
train_options = _with_options(
    "config", _CONFIG_FIELDS, {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in _CONFIG_FIELDS},
    lambda values: TrainConfig(**values),
)

class _OrderedOptions(_Command):
    """A command that remembers the order its options were given in.

    Typer hands a repeated option over as one list, so ``--param a --values 1 --param b --values 2``
    and ``--values 1 --param a ...`` would look alike; the pairing rule (each --values belongs to
    the --param before it) needs the order, which only the parser sees. It goes in ``ctx.meta``.
    """

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_in_order(*args, **kwargs):
            parsed = parse(*args, **kwargs)
            try:
                ctx.meta[_ORDER] = [p.name for p in parsed[2]]
            except (TypeError, IndexError, AttributeError):
                pass  # a parser that does not say: --param and --values then pair by position
            return parsed

        parser.parse_args = parse_in_order
        return parser


_ORDER = "fireablate.option_order"


def _param_order(ctx: typer.Context, param: Optional[list[str]], values: Optional[list[str]]) -> Optional[list[str]]:
    """How --param and --values were interleaved on the command line ("param"/"values" each time)."""
    order = [name for name in ctx.meta.get(_ORDER, []) if name in ("param", "values")]
    return order if len(order) == len(param or []) + len(values or []) else None


ParamOption = Annotated[Optional[list[str]], typer.Option(
    "--param", help="A parameter to vary: any network option (sr, pct3x3, bypass, ...) or preset. Repeat it, "
    "each followed by its --values, for a grid (every combination).", rich_help_panel="Sweep")]
ValuesOption = Annotated[Optional[list[str]], typer.Option(
    "--values", help="Values of the --param before it: 'a,b,c' or a range 'start:stop:step'.", rich_help_panel="Sweep")]


PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
PresetOption = Annotated[PresetName, typer.Option("--preset", "-p", help="Starting network.", rich_help_panel="Network")]
SizeUnitOption = Annotated[Literal["MB", "MiB"], typer.Option(
    "--size-unit", help="MB: 10^6 bytes of float32 parameters (the study's unit); MiB: 2^20 bytes (the SqueezeNet paper's).")]
MetricOption = Annotated[Literal["auto", "best", "final"], typer.Option(
    "--metric", help="Which epoch's accuracy: final (the study's: EarlyStopping kept the last epoch), best (chosen on "
    "the validation split), or auto: final for recipes that stop early, best otherwise.")]
LedgerOption = Annotated[
    Optional[Path], typer.Option("--ledger", help="The run ledger (default: $FIREABLATE_LEDGER or runs/ledger.csv).")
]


# ---------------------------------------------------------------------------------------------
# count-params


def _fmt_macs(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


def _totals(name: str, count, bits: int, unit: str) -> dict[str, Any]:
    key = unit.lower()  # the unit names the key: "mb" or "mib"
    return {"name": name, "params": count.params, key: round(count.size(unit), 4),
            f"{key}_{bits}bit": round(count.size(unit, bits), 4), "macs": count.macs, "flops": 2 * count.macs}


def _count_table(count, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("layer", "kind", "in -> out", "kernel", "output", "weights", "biases", "bn", "MMACs"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in count.rows:
        size = f"{r.out_size}x{r.out_size}" if r.out_size else ""
        kernel = f"{r.kernel}x{r.kernel}" if r.kernel else ""
        table.add_row(
            r.name, r.kind, f"{r.in_channels} -> {r.out_channels}", kernel, size,
            f"{r.weights:,}", f"{r.biases:,}", f"{r.bn:,}", f"{r.macs / 1e6:,.1f}",
        )
    return table


@app.command("count-params", cls=_OrderedOptions)
@network_options
def count_params(
    ctx: typer.Context,
    preset: PresetOption = "cifar",
    per_layer: Annotated[bool, typer.Option("--per-layer", help="One row per layer.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    bits: Annotated[Literal[32, 16, 8, 6], typer.Option("--bits", help="Also give the size at 16, 8 or 6 bits per parameter.")] = 32,
    size_unit: SizeUnitOption = "MB",
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", help="Preview a sweep: a parameter to vary; repeat it, each with its --values, for a grid.",
        rich_help_panel="Sweep preview")] = None,
    values: Annotated[Optional[list[str]], typer.Option(
        "--values", help="Values of the --param before it: 'a,b,c' or 'start:stop:step'.",
        rich_help_panel="Sweep preview")] = None,
    fire: Annotated[
        bool, typer.Option("--fire", help="One fire module against a 3x3 conv.", rich_help_panel="Single module")
    ] = False,
    expand: Annotated[
        Optional[int], typer.Option("--expand", help="Expand filters (= output channels).", rich_help_panel="Single module")
    ] = None,
    squeeze: Annotated[
        Optional[int], typer.Option("--squeeze", help="Squeeze filters, instead of --sr.", rich_help_panel="Single module")
    ] = None,
    *,
    overrides: dict[str, Any],
) -> None:
    """Parameters, size and MACs of a network, from its description alone (instant, no torch).

    Size is float32 parameter bytes in MB (10^6 bytes, the study's unit; --size-unit MiB for the
    SqueezeNet paper's). FLOPs = 2 x MACs.

    Examples:

      fireablate count-params --preset squeezenet1_0

      fireablate count-params --preset cifar --sr 0.5 --per-layer

      fireablate count-params --param sr --values 0.125,0.25,0.5,0.75,1.0

      fireablate count-params --param sr --values 0.125,0.5 --param pct3x3 --values 0.25,0.75

      fireablate count-params --fire --in-channels 256 --expand 512 --sr 0.125
    """
    from . import params
    from .presets import display_name, resolve, sweep_axes

    if fire:
        return _render_fire(params.compare_fire_options(overrides, expand, squeeze), as_json)
    if expand is not None or squeeze is not None:
        raise UsageError("--expand and --squeeze describe a single module: add --fire")
    axes = sweep_axes(param, values, _param_order(ctx, param, values))
    name = display_name(preset, overrides)
    if axes:
        names = [n for n, _ in axes]
        return _render_grid(name, names, params.count_grid(preset, overrides, axes), bits, size_unit, as_json)
    spec = resolve(preset, overrides)
    count = params.count(spec)
    if as_json:
        payload = _totals(name, count, bits, size_unit)
        if per_layer:
            payload["layers"] = [{**r.__dict__, "params": r.params} for r in count.rows]
        return out.print_json(json.dumps(payload))
    if per_layer:
        out.print(_count_table(count, name))
    out.print(
        f"[bold]{name}[/bold]: {count.params:,} parameters, {count.size(size_unit):.2f} {size_unit} (float32)"
        + (f", {count.size(size_unit, bits):.2f} {size_unit} at {bits} bits" if bits != 32 else "")
        + f", {_fmt_macs(count.macs)} MACs ({2 * count.macs / 1e9:.2f} GFLOPs) per {spec.input_size}x{spec.input_size} image"
    )


def _render_fire(cmp, as_json: bool) -> None:
    s = cmp.sizes
    if as_json:
        return out.print_json(json.dumps({
            "in_channels": cmp.in_channels, "squeeze": s.squeeze, "expand1x1": s.expand1x1, "expand3x3": s.expand3x3,
            "fire_weights": cmp.fire_weights, "conv3x3_weights": cmp.conv_weights, "reduction": round(cmp.reduction, 6),
        }))
    cin = cmp.in_channels
    out.print(f"Fire module: {cin} -> squeeze {s.squeeze} -> expand {s.expand1x1} 1x1 + {s.expand3x3} 3x3 = {s.out_channels} channels")
    out.print(f"  fire module weights:   {cmp.fire_weights:>12,}")
    out.print(f"  3x3 conv {cin}->{s.out_channels} weights: {cmp.conv_weights:>12,}")
    out.print(f"  [bold]{cmp.reduction:.2%} fewer[/bold] ({cmp.conv_weights / cmp.fire_weights:.2f}x smaller); biases left out")


def _render_grid(name: str, names: list[str], rows: list, bits: int, unit: str, as_json: bool) -> None:
    if as_json:
        # A grid over presets names each network by its own preset, not by --preset.
        named = [(dict(zip(names, point)), c) for point, c in rows]
        return out.print_json(json.dumps([{**v, **_totals(name if "preset" not in v else v["preset"], c, bits, unit)}
                                          for v, c in named]))
    title = f"{name}: sweep of {' x '.join(names)}" + (f" ({len(rows)} networks)" if len(names) > 1 else "")
    table = Table(title=title, title_justify="left")
    for col in (*names, "parameters", f"{unit} (fp32)", *([f"{unit} ({bits}-bit)"] if bits != 32 else []), "MACs"):
        table.add_column(col, justify="right")
    for point, c in rows:
        table.add_row(*point, f"{c.params:,}", f"{c.size(unit):.3f}", *([f"{c.size(unit, bits):.3f}"] if bits != 32 else []),
                      _fmt_macs(c.macs))
    out.print(table)


# ---------------------------------------------------------------------------------------------
# build


@app.command(cls=_Command)
@network_options
def build(
    preset: PresetOption = "cifar",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Save the spec and fresh weights here, for 'train --init'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved spec as JSON.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the initial weights.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --output replace a file that is not a fireablate model file.")] = False,
    *,
    overrides: dict[str, Any],
) -> None:
    """Build the PyTorch model, show its layers, and check it against the calculator.

    Examples:

      fireablate build --preset squeezenet1_1

      fireablate build --preset cifar --bypass complex --freq 2 --output cifar_complex.pt

      fireablate build --preset cifar_optimized --json
    """
    from .model import build_checked, save_model, summarize
    from .presets import display_name, resolve
    from .spec import to_dict

    spec = resolve(preset, overrides)
    model = build_checked(spec, seed)
    if as_json:
        out.print_json(json.dumps(to_dict(spec)))
    else:
        table = Table(title=display_name(preset, overrides), title_justify="left")
        for col in ("module", "type", "output shape", "parameters"):
            table.add_column(col, justify="right" if col == "parameters" else "left")
        for name, kind, shape, n in summarize(model):
            table.add_row(name, kind, " x ".join(map(str, shape)), f"{n:,}" if n else "")
        out.print(table)
        n = sum(p.numel() for p in model.parameters())
        out.print(f"{n:,} parameters ({size_in(n):.2f} MB float32), matching the calculator")
    if output is not None:
        save_model(output, model, {"seed": seed}, overwrite=overwrite)
        (err if as_json else out).print(f"saved spec and initial weights to {output}")


# ---------------------------------------------------------------------------------------------
# train


class _TrainDisplay:
    """Rich progress bars for epochs and steps, and one line per epoch."""

    def __init__(self, label: str = ""):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.label = label
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=out, transient=True,
        )
        self.epochs = self.steps = None
        self.finished_before = False

    def __call__(self, event: str, **info: Any) -> None:
        p = self.progress
        if event == "finished_before":
            self.finished_before = True
            out.print(f"{self.label}run {info['run_id']} already finished in {info['out_dir']}; nothing to train")
        elif event == "start":
            r = info["recipe"]
            resumed = f", resuming after epoch {info['start_epoch']}" if info["start_epoch"] else ""
            out.print(
                f"{self.label}run {info['run_id']}: {info['params']:,} parameters on {info['device']} ({info['precision']}, {info['precision_reason']}), "
                f"{info['n_train']:,} training images, {info['n_test']:,} validation images (the test split, as in the study){resumed}"
            )
            settings = "; ".join(f"{k} {v}" for k, v in recipe_settings(r).items() if v not in PLAIN_SETTINGS)
            out.print(f"  recipe {r.name}: {settings}; output {info['out_dir']}")
            p.start()
            self.epochs = p.add_task("epochs", total=info["epochs"], completed=info["start_epoch"])
            self.steps = p.add_task("steps", total=info["steps"])
        elif event == "step":
            p.update(self.steps, completed=info["step"])
        elif event == "compiled":
            p.console.print(f"  torch.compile took {info['seconds']:.1f} s (left out of img/s)")
        elif event == "epoch":
            p.update(self.epochs, completed=info["epoch"])
            p.update(self.steps, completed=0)
            best = " *" if info["best_epoch"] == info["epoch"] else ""
            p.console.print(
                f"  epoch {info['epoch']:>3}  loss {info['train_loss']:.4f}  train {info['train_acc']:.2%}  "
                f"val loss {info['val_loss']:.4f}  val {info['val_acc']:.2%}{best}  lr {info['lr']:.2e}  "
                f"{info['images_per_sec']:,.0f} img/s  {info['tflops']:.3f} TFLOP/s",
                highlight=False,
            )

    def close(self) -> None:
        self.progress.stop()



class _DecodeDisplay:
    """A progress bar for the first decode of an image folder (minutes for 60,000 JPEGs)."""

    def __enter__(self):
        self.progress = self.task = None
        return self

    def __call__(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.progress is None:
            self.progress = Progress(TextColumn("decoding images once (cached for later runs)"), BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(), console=err, transient=True)
            self.progress.start()
            self.task = self.progress.add_task("decode", total=total)
        self.progress.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _print_recorded(rec, ledger_file: Path) -> None:
    result, row = rec.result, rec.row
    if row["status"] == "skipped":
        out.print(f"run {row['run_id']} {row['error']} (see {ledger_file}); nothing to train")
        return
    if result is not None and result.status == "done":
        out.print(
            f"[bold]best val accuracy {result.best_val_acc:.2%}[/bold] (epoch {result.best_epoch} of {result.epochs}), "
            f"final {result.final_val_acc:.2%}; {result.train_time_s:.0f} s training, "
            f"{result.images_per_sec:,.0f} img/s; {result.params:,} parameters, {size_in(result.params):.2f} MB"
        )
        if result.message:
            out.print(f"  {result.message}")
        out.print(f"  weights, history and checkpoint in {result.out_dir}")
    if rec.appended:
        before = " (it had finished before; its row was missing)" if result is not None and result.finished_before else ""
        out.print(f"  row appended to {ledger_file}{before}")


@app.command(cls=_Command)
@train_options
@network_options
def train(
    preset: Annotated[
        Optional[PresetName], typer.Option("--preset", "-p", help="Starting network (default cifar).", rich_help_panel="Network")
    ] = None,
    init: Annotated[
        Optional[Path], typer.Option("--init", help="Start from a model file written by 'build --output' (its network too).")
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Output folder (default runs/RUN_ID); an unfinished run there continues.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Insist on continuing the checkpoint in --out.")] = False,
    ledger: LedgerOption = None,
    *,
    overrides: dict[str, Any],
    config: TrainConfig,
) -> None:
    """Train one model, report its best validation accuracy, and append its row to the ledger.

    Writes best.pt and last.pt (spec and weights), history.csv (one row per epoch), result.json,
    run.json (how the run was made) and a checkpoint each epoch; running the same command again
    continues an interrupted run.

    Examples:

      fireablate train --preset cifar --data synthetic --epochs 3

      fireablate train --preset cifar --data ./cifar10-jpeg --recipe fast --out runs/fast

      fireablate train --preset cifar_optimized --recipe step --device cuda
    """
    from . import ledger as L
    from . import sweep as W

    ledger_file = L.ledger_path(ledger)
    _warn(L.read(ledger_file).require_appendable().warnings)  # a ledger that cannot take the row fails now
    with _DecodeDisplay() as decoding:
        plan = W.plan_train(preset, overrides, init, config, ledger_file, out_dir, progress=decoding)
    display = _TrainDisplay()
    try:
        rec = W.record_run(plan.tasks[0], plan.job, data=plan.data, progress=display, resume=resume,
                           errors_to_ledger=False)
    finally:
        display.close()
    _print_recorded(rec, ledger_file)
    if rec.row["status"] not in ("done", "skipped"):
        raise FireablateError(f"training {rec.row['status']}: {rec.row['error']}")


# ---------------------------------------------------------------------------------------------
# sweep


def _value_label(param: Optional[str], value: str) -> str:
    """'sr=0.5', or 'sr=0.5, pct3x3=0.25' for a point of a grid (the ledger joins both with ',')."""
    if not param:
        return "(no sweep)"
    return ", ".join(f"{p}={v}" for p, v in zip(param.split(","), value.split(",")))


def _value_cells(param: Optional[str], value: str) -> list[str]:
    """One cell per swept parameter."""
    return value.split(",") if param else [value]


@app.command(cls=_OrderedOptions)
@train_options
@network_options
def sweep(
    ctx: typer.Context,
    preset: PresetOption = "cifar",
    param: ParamOption = None,
    values: ValuesOption = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per value, with seeds SEED, SEED+1, ...", rich_help_panel="Sweep")] = 1,
    ledger: LedgerOption = None,
    out_root: Annotated[
        Optional[Path], typer.Option("--out", help="Folder for the runs' outputs (default: beside the ledger).", rich_help_panel="Sweep")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan and what is already done; train nothing.", rich_help_panel="Sweep")] = False,
    rerun_failed: Annotated[bool, typer.Option("--rerun-failed", help="Run failed and diverged runs again.", rich_help_panel="Sweep")] = False,
    force: Annotated[bool, typer.Option("--force", help="Run every run again, in fresh folders (old rows stay).", rich_help_panel="Sweep")] = False,
    gpus: Annotated[
        Optional[str], typer.Option("--gpus", help="Run one worker process per GPU, e.g. '0,1'.", rich_help_panel="Sweep")
    ] = None,
    devices: Annotated[
        Optional[str], typer.Option("--devices", help="Worker devices, one process each, e.g. 'cuda:0,cuda:1' or 'cpu,cpu'.", rich_help_panel="Sweep")
    ] = None,
    executor_name: Annotated[Literal["local", "slurm"], typer.Option("--executor", help="local, or slurm (one job array element per run).", rich_help_panel="Slurm")] = "local",
    partition: Annotated[Optional[str], typer.Option("--partition", help="Slurm partition.", rich_help_panel="Slurm")] = None,
    time_limit: Annotated[str, typer.Option("--time", help="Time limit per run, e.g. 2:00:00.", rich_help_panel="Slurm")] = "2:00:00",
    gpus_per_run: Annotated[int, typer.Option("--gpus-per-run", help="GPUs per run.", rich_help_panel="Slurm")] = 0,
    cpus_per_run: Annotated[Optional[int], typer.Option("--cpus-per-run", help="CPUs per run.", rich_help_panel="Slurm")] = None,
    mem: Annotated[Optional[str], typer.Option("--mem", help="Memory per run, e.g. 16G.", rich_help_panel="Slurm")] = None,
    max_parallel: Annotated[Optional[int], typer.Option("--max-parallel", help="Most runs at once.", rich_help_panel="Slurm")] = None,
    slurm_folder: Annotated[Optional[Path], typer.Option("--slurm-folder", help="Job scripts and logs (default: slurm/ beside the ledger).", rich_help_panel="Slurm")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the jobs, showing their states.", rich_help_panel="Slurm")] = True,
    *,
    overrides: dict[str, Any],
    config: TrainConfig,
) -> None:
    """Train one model per value (and seed), resumably, recording every run in the ledger.

    Runs already done in the ledger are skipped; an interrupted run continues from its last
    epoch. A failed or diverged run is recorded and the sweep goes on; the exit code is 1 if any
    run failed. Repeat --param (each with its --values) for a grid of every combination.

    Examples:

      fireablate sweep --param sr --values 0.125,0.25,0.5,0.75,1.0 --preset cifar

      fireablate sweep --param sr --values 0.125,0.25,0.5 --param pct3x3 --values 0.25,0.5,0.75 --dry-run

      fireablate sweep --param pct3x3 --values 0.125:0.875:0.125 --seeds 3 --dry-run

      fireablate sweep --param preset --values cifar,cifar_valid_padding,cifar_early_pool --gpus 0,1
    """
    from . import ledger as L
    from . import sweep as W

    ledger_file = L.ledger_path(ledger)
    _warn(L.read(ledger_file).require_appendable().warnings)
    workers = W.worker_devices(gpus, devices)
    slurm_display = _SlurmDisplay(param) if executor_name == "slurm" else None
    slurm = None if slurm_display is None else _slurm_options(  # checked now, before any data loads
        slurm_folder or ledger_file.parent / "slurm", partition, time_limit, gpus_per_run, cpus_per_run, mem,
        max_parallel, wait, slurm_display)
    with _DecodeDisplay() as decoding:
        plan = W.plan_sweep(preset, overrides, param, values, seeds, config, ledger_file, out_root, rerun_failed,
                            force, dry_run=dry_run, progress=decoding, order=_param_order(ctx, param, values))
    if dry_run:
        return _render_plan(plan, ledger_file, force)
    executor = W.make_executor(plan, executor_name, workers, force, _progress_for(plan), slurm)
    _render_skipped(plan)
    if workers:
        out.print(f"{len(plan.tasks)} runs on {len(workers)} worker processes: {', '.join(workers)}")
    try:
        finished = [_render_row(plan, row, quiet=not (workers or slurm)) for row in W.run_sweep(plan, executor)]
    finally:
        if slurm_display is not None:
            slurm_display.close()
    if slurm is not None and not wait:
        out.print(f"not waiting: follow the jobs with squeue, then 'fireablate runs --ledger {ledger_file}'")
        return
    _sweep_summary(finished, plan)
    bad = [r for r in finished if r["status"] in ("failed", "diverged")]
    if bad:
        raise FireablateError(f"{len(bad)} of {len(finished)} runs did not finish (see the table above and {ledger_file})")


class _SlurmDisplay:
    """Job ids when submitted, then a live table of run states while the sweep waits."""

    def __init__(self, param: Optional[str]):
        self.param, self.live = param, None

    def submitted(self, new: list, queued: list) -> None:
        if new:
            ids = [s.job_id for s in new]
            out.print(f"submitted {len(new)} runs to Slurm as job array {ids[0].split('_')[0]} ({', '.join(ids)})")
        for s in queued:
            out.print(f"run {s.task.run_id} is still queued as job {s.job_id} ({s.state}); not submitted again")
        if not new and not queued:
            out.print("nothing to submit: every run of this grid is done")

    def states(self, watching: list) -> None:
        from rich.live import Live

        table = Table(title="Slurm jobs", title_justify="left")
        for col in ("job", self.param or "value", "seed", "run id", "state", "reason"):
            table.add_column(col)
        for s in watching:
            table.add_row(s.job_id, s.task.value, str(s.task.seed), s.task.run_id, s.state, s.reason)
        if self.live is None and out.is_terminal:
            self.live = Live(table, console=out, refresh_per_second=2, transient=True)
            self.live.start()
        elif self.live is not None:
            self.live.update(table)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _slurm_options(folder, partition, time_limit, gpus_per_run, cpus_per_run, mem, max_parallel, wait, display) -> dict:
    from .slurm import parse_time, validate_options

    checked = dict(partition=partition, time_min=parse_time(time_limit), gpus_per_run=gpus_per_run,
                   cpus_per_run=cpus_per_run, mem=mem, max_parallel=max_parallel)
    validate_options(**checked)
    return dict(folder=folder, wait=wait, on_submit=display.submitted, on_states=display.states,
                on_warning=lambda message: _warn([message]), **checked)


def _progress_for(plan):
    def progress_for(task):
        return _TrainDisplay(label=f"[{task.index}/{len(plan.runs)}] {_value_label(plan.param, task.value)} seed {task.seed}: ")

    return progress_for


def _render_plan(plan, ledger_file: Path, force: bool) -> None:
    if not plan.data_known:
        out.print(f"the data ({plan.job.data_source}) has not been decoded here yet, so run ids (which hash it) and "
                  "what the ledger holds are not known; the first real run decodes it")
    to_run = {t.run_id for t in plan.tasks}
    table = Table(title=f"sweep plan: {len(plan.runs)} runs, {len(to_run)} to run (ledger {ledger_file})", title_justify="left")
    names = plan.param.split(",") if plan.param else ["value"]
    for col in ("#", *names, "seed", "run id", "parameters", "MB", "MMACs", "status"):
        table.add_column(col, justify="left" if col in ("run id", "status") else "right")
    for r in plan.runs:
        if r.run_id in to_run:
            state = "will resume" if r.has_checkpoint and not force else ("will run again" if r.ledger_status else "will run")
        else:
            state = f"{r.ledger_status}, skipped" + (" (--rerun-failed)" if r.ledger_status != "done" else "")
        table.add_row(str(r.index), *_value_cells(plan.param, r.value), str(r.seed), r.run_id if plan.data_known else "?", f"{r.counts.params:,}",
                      f"{r.counts.size():.3f}", f"{r.counts.macs / 1e6:,.1f}", state)
    out.print(table)


def _render_skipped(plan) -> None:
    to_run = {t.run_id for t in plan.tasks}
    for r in plan.runs:
        if r.run_id not in to_run:
            hint = "" if r.ledger_status == "done" else " (--rerun-failed runs it again)"
            out.print(f"[{r.index}/{len(plan.runs)}] {_value_label(plan.param, r.value)} seed {r.seed}: "
                      f"run {r.run_id} already {r.ledger_status}; skipped{hint}")


def _render_row(plan, row: dict[str, Any], quiet: bool) -> dict[str, Any]:
    task = next((r for r in plan.runs if r.run_id == row.get("run_id")), None)
    where = f"{_value_label(plan.param, task.value)} seed {task.seed}: " if task else ""
    if row["status"] == "skipped":
        out.print(f"  {where}run {row['run_id']} skipped: {row['error']}")
    elif row["status"] != "done":
        out.print(f"  {where}run {row['run_id'] or '?'} [red]{row['status']}[/red]: {row.get('error', '')}")
    elif not quiet:
        out.print(f"  {where}run {row['run_id']} done on {row['device']}: best val {float(row['best_val_acc']):.2%}")
    return row


def _sweep_summary(rows: list[dict[str, Any]], plan) -> None:
    if not rows:
        out.print("nothing to run: every run of this grid is already in the ledger")
        return
    by_id = {r.run_id: r for r in plan.runs}
    names = plan.param.split(",") if plan.param else ["value"]
    table = Table(title="sweep summary", title_justify="left")
    for col in (*names, "seed", "run id", "status", "best val acc", "MB", "epochs", "seconds"):
        table.add_column(col, justify="left" if col in ("run id", "status") else "right")
    for row in rows:
        task = by_id.get(row.get("run_id", ""))
        acc = row.get("best_val_acc")
        table.add_row(
            *(_value_cells(plan.param, task.value) if task else [""] * len(names)), str(task.seed) if task else "",
            row.get("run_id", ""), row["status"],
            f"{float(acc):.2%}" if acc not in (None, "") and acc == acc else "",
            f"{task.counts.size():.3f}" if task else "", str(row.get("epochs", "") or ""),
            f"{float(row['train_time_s']):.0f}" if row.get("train_time_s") not in (None, "") else "",
        )
    out.print(table)


# ---------------------------------------------------------------------------------------------
# runs, plot and report: reading the ledger



def _read_ledgers(paths: Optional[list[Path]]):
    """One frame from one or more ledgers, with their warnings printed."""
    import pandas as pd

    from . import ledger as L

    books = [L.read(L.ledger_path(p), missing_ok=False) for p in (paths or [None])]
    for book in books:
        _warn(book.warnings)
    return pd.concat([b.frame() for b in books], ignore_index=True), [b.path.parent for b in books]


LedgersOption = Annotated[
    Optional[list[Path]], typer.Option("--ledger", help="Ledger(s) to read; repeat for several (default: runs/ledger.csv).")
]


def _print_table(table, title: str, caption_cols: tuple[str, ...] = ("data", "train images", "recipe", "epochs"),
                 ids=None) -> None:
    """A rich table of a results frame: percent for fractions, settings shared by every row said
    once under the title instead of repeated in each row."""
    from .results import display_header, format_cell

    shown = table.copy()
    shared = [c for c in caption_cols if c in shown and shown[c].astype(str).nunique() == 1]
    caption = ""
    if shared:
        first = shown.iloc[0]
        words = {"data": "data {}", "train images": "{} training images", "recipe": "recipe {}", "epochs": "{} epochs"}
        caption = "; ".join(words[c].format(format_cell(c, first[c])) for c in shared if format_cell(c, first[c]))
        caption = caption.replace("; 1 epochs", "; 1 epoch").replace(" 1 training images", " 1 training image")
        shown = shown.drop(columns=shared)
    if ids is not None and "run ids" in shown:
        shown["run ids"] = shown["run ids"].map(lambda v: " ".join(ids.get(i, i) for i in str(v).split()))
    t = Table(title=title + (f"\n{caption}" if caption else ""), title_justify="left")
    left = {"model", "sweep", "data", "recipe", "status", "run ids", "slurm jobs", "experiment"}
    for col in shown.columns:
        t.add_column(display_header(col), justify="left" if col in left else "right")
    for rec in shown.itertuples(index=False):
        t.add_row(*[format_cell(c, v) for c, v in zip(shown.columns, rec)])
    out.print(t)


@app.command(cls=_Command)
def recipes(
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown (as in the README).")] = False,
) -> None:
    """Every training recipe's settings side by side (--recipe chooses one; --epochs, --batch-size,
    --lr, --weight-decay and --augment change parts of it).

    Examples:

      fireablate recipes
    """
    header, *rows = recipe_table()
    if as_markdown:
        lines = [header, ["---"] * len(header), *rows]
        return sys.stdout.write("".join(f"| {' | '.join(cells)} |\n" for cells in lines)) and None
    table = Table(*header, title="fireablate's training recipes", show_lines=True)
    for cells in rows:
        table.add_row(*cells)
    out.print(table)


@app.command(cls=_Command)
def runs(
    ledger: LedgerOption = None,
    param: Annotated[Optional[str], typer.Option("--param", help="Only runs of sweeps over this parameter ('sr', or 'sr,pct3x3' for a grid), one column per parameter.")] = None,
    status: Annotated[Optional[Literal["done", "failed", "diverged"]], typer.Option("--status", help="Only runs with this status.")] = None,
    size_unit: SizeUnitOption = "MB",
    metric: MetricOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the grouped table as JSON (accuracies as fractions).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the grouped table as CSV (accuracies as fractions).")] = False,
) -> None:
    """The ledger's runs, grouped per variant (everything but the seed): data, recipe, epochs, mean
    and sd of the best val accuracy over seeds, size, statuses and run ids.

    Examples:

      fireablate runs

      fireablate runs --param sr --status done

      fireablate runs --ledger examples/sample/ledger.csv --csv
    """
    from . import ledger as L
    from .presets import canonical
    from .results import group_runs, short_ids, swept, with_metric

    book = L.read(L.ledger_path(ledger), missing_ok=False)
    _warn(book.warnings)
    if param is not None:
        param = ",".join(p if p == "preset" else canonical(p) for p in swept(param.replace(" ", "")))
    frame, phrase = with_metric(book.frame(), metric)
    groups = group_runs(frame, param=param, status=status, size_unit=size_unit)
    if as_json:
        return out.print_json(groups.to_json(orient="records"))
    if as_csv:
        return sys.stdout.write(groups.to_csv(index=False)) and None
    if groups.empty:
        return out.print(f"no runs match in {book.path}")
    title = f"{book.path}: {int(groups['runs'].sum())} runs of {len(groups)} variants"
    if (groups["done"] == groups["runs"]).all():
        groups = groups.drop(columns="done")  # the status column says so; the table stays narrow
    _print_table(groups, title, ids=short_ids(frame["run_id"]))
    out.print(phrase)


def _sweeps_to_plot(df, kind: str, param: Optional[str], x: Optional[str], hue: Optional[str]) -> list[list[str]]:
    """The sweeps (lists of swept parameters) that --param, --x and --hue ask for, or one line why none."""
    from .results import sweeps_in

    named = _plot_param(param) or []
    wanted = list(dict.fromkeys([*named, *(p for p in (x, hue) if p)]))
    found = sweeps_in(df)
    # --param sr is the sweep over sr itself where the ledger has one, not every grid with sr in it.
    exact = [s for s in found if named and set(s) == set(named) and set(wanted) <= set(s)]
    chosen = exact or [s for s in found if set(wanted) <= set(s)]
    if kind == "heatmap":
        chosen = [s for s in chosen if len(s) >= 2]
    if not chosen:
        what = f" over {' and '.join(wanted)}" if wanted else ""
        need = "two or more parameters" if kind == "heatmap" else "two or more values"
        raise FireablateError(f"nothing to plot: the ledger has no sweep{what} with {need} among its done runs")
    return chosen


def _plot_param(param: Optional[str]) -> Optional[list[str]]:
    if param is None:
        return None
    from .presets import canonical
    from .results import swept

    return [p if p == "preset" else canonical(p) for p in swept(param.replace(" ", ""))]


@app.command(cls=_Command)
def plot(
    run_ids: Annotated[Optional[list[str]], typer.Argument(help="With --kind curves: the runs (id prefixes, as 'fireablate runs' shows them).")] = None,
    ledger: LedgersOption = None,
    kind: Annotated[Literal["sweep", "heatmap", "pareto", "curves"], typer.Option(
        "--kind", help="sweep: accuracy vs the swept value; heatmap: a two-parameter grid; pareto: accuracy vs size; "
        "curves: training curves of runs.")] = "sweep",
    param: Annotated[Optional[str], typer.Option("--param", help="Only sweeps over this parameter ('sr', or 'sr,pct3x3' for a grid); default: every sweep found.")] = None,
    x: Annotated[Optional[str], typer.Option("--x", help="For a grid: the parameter on the x axis (default: the first swept).")] = None,
    hue: Annotated[Optional[str], typer.Option("--hue", help="For a grid: one line (heatmap: one row) per value of this parameter (default: the second swept).")] = None,
    errorbar: Annotated[Literal["sd", "ci", "none"], typer.Option("--errorbar", help="Over seeds: sd, ci (95%, Student's t) or none.")] = "sd",
    size_unit: SizeUnitOption = "MB",
    metric: MetricOption = "auto",
    fmt: Annotated[Literal["png", "svg", "pdf"], typer.Option("--format", help="png, svg or pdf.")] = "png",
    dpi: Annotated[Optional[int], typer.Option("--dpi", help="Resolution of a png (default 150).")] = None,
    style: Annotated[Literal["default", "paper"], typer.Option("--style", help="default, or paper: one column of a two-column paper, 8 pt text.")] = "default",
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the figures go, each with its numbers beside it as CSV.")] = Path("figures"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files that fireablate did not write (or that were changed since).")] = False,
) -> None:
    """Draw the study's figures from the ledger, each with a CSV of its points, and say where each went.

    Examples:

      fireablate plot

      fireablate plot --param pct3x3 --errorbar ci --format svg

      fireablate plot --kind heatmap --param sr,pct3x3

      fireablate plot --kind pareto --ledger examples/sample/ledger.csv --style paper --format pdf

      fireablate plot --kind curves 2c7cabac 0a3f1660 --ledger examples/sample/ledger.csv
    """
    from . import plots
    from .presets import canonical
    from .results import with_metric

    if run_ids and kind != "curves":
        raise UsageError("run ids go with --kind curves")
    if (x is not None or hue is not None) and kind not in ("sweep", "heatmap"):
        raise UsageError("--x and --hue go with --kind sweep or heatmap")
    x = None if x is None else x if x == "preset" else canonical(x)
    hue = None if hue is None else hue if hue == "preset" else canonical(hue)
    df, ledger_dirs = _read_ledgers(ledger)
    df, phrase = with_metric(df, metric)
    look = dict(style=style, dpi=dpi)
    drawn = []  # (figure, path stem)
    if kind in ("sweep", "heatmap"):
        for params in _sweeps_to_plot(df, kind, param, x, hue):
            if kind == "heatmap":
                d = plots.heatmap_figure(df, params, x=x, hue=hue, size_unit=size_unit, **look)
                drawn.append((d, "accuracy_grid_" + "_".join(params)))
            else:
                d = plots.sweep_figure(df, params, errorbar, x=x, hue=hue, size_unit=size_unit, **look)
                xs = x or (next(p for p in params if p != hue) if hue else params[0])
                others = [p for p in params if p != xs]
                drawn.append((d, f"accuracy_vs_{xs}" + "".join(f"_by_{p}" for p in others)))
    elif kind == "pareto":
        drawn.append((plots.pareto_figure(df, size_unit=size_unit, **look), "pareto"))
    else:
        if not run_ids:
            raise UsageError("--kind curves needs one or more run ids (see 'fireablate runs')")
        histories = plots.find_histories(df, run_ids, ledger_dirs)
        rows = df[df["run_id"].map(lambda r: any(r.startswith(i) for i in run_ids))]
        drawn.append((plots.curves_figure(histories, rows, **look), "curves_" + "_".join(r[:8] for r in run_ids)))
    for d, stem in drawn:
        figure, table = plots.write(d, out_dir / f"{stem}.{fmt}", overwrite)
        out.print(f"wrote {figure} (its points: {table.name})")
        for note in d.notes:
            out.print(f"  {note}")
    if kind != "curves":
        out.print(phrase)


@app.command(cls=_Command)
def report(
    ledger: LedgersOption = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="The model sizes are compared with, as the table names it (default: alexnet_cifar, where it has runs).")] = None,
    size_unit: SizeUnitOption = "MB",
    metric: MetricOption = "auto",
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (accuracies as fractions, sizes as ratios).")] = False,
) -> None:
    """A table like the study's Table I: each model's data, recipe, epochs, size, accuracy over
    seeds, and how many times smaller or larger than a baseline it is.

    Examples:

      fireablate report

      fireablate report --ledger examples/sample/ledger.csv --markdown

      fireablate report --ledger examples/sample/ledger.csv --baseline cifar --csv
    """
    from .results import compare_sizes, done_runs, report_table, size_basis, to_markdown, with_metric

    df, _ = _read_ledgers(ledger)
    df, phrase = with_metric(df, metric)
    table = report_table(df, size_unit=size_unit)
    chosen = baseline if baseline is not None else ("alexnet_cifar" if (table["model"] == "alexnet_cifar").any() else None)
    if chosen is not None:
        table = compare_sizes(table, chosen)  # a --baseline without a done run is one line, exit 2
    if markdown:
        sys.stdout.write(to_markdown(table))
        return
    if as_csv:
        sys.stdout.write(table.to_csv(index=False))
        return
    _print_table(table, f"Top-1 validation accuracy by model variant, sizes in {size_unit} ({size_basis(done_runs(df))})")
    out.print(phrase)
    if chosen is None:
        out.print("sizes are not compared: the ledger has no done run of alexnet_cifar (choose one with --baseline)")

# ---------------------------------------------------------------------------------------------
# compress, evaluate, export: a trained model made small, measured, and shipped

DataOption = Annotated[Optional[str], typer.Option("--data", help="cifar10, synthetic, synthetic-hard, a folder with train/ and test/, or none (compress: sizes only). Default: the model's own data.", rich_help_panel="Data")]
DataDirOption = Annotated[Optional[str], typer.Option("--data-dir", help="Where CIFAR-10 lives (default: the model's, else $FIREABLATE_DATA or the user cache).", rich_help_panel="Data")]
LimitTrainOption = Annotated[Optional[int], typer.Option("--limit-train", min=1, help="Use N training images, balanced over classes.", rich_help_panel="Data")]
LimitTestOption = Annotated[Optional[int], typer.Option("--limit-test", min=1, help="Use N test images, balanced over classes.", rich_help_panel="Data")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]


def _pct(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2%}"


def _render_compression(report) -> None:
    table = Table(title=f"compressed {report.source} -> {report.out}", title_justify="left")
    for col in ("layer", "weights", "kept", "density", "bits", "index bits", "codes B", "indices B", "codebook B", "total B"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in report.layers:
        table.add_row(r["layer"], f"{r['weights']:,}", f"{r['kept']:,}", f"{r['density']:.1%}", str(r["bits"]),
                      str(r["index_bits"]) if r["index_bits"] else "-", f"{r['codes_bytes']:,}",
                      f"{r['indices_bytes']:,}", f"{r['codebook_bytes']:,}", f"{r['bytes']:,}")
    sum_ = lambda key: sum(r[key] for r in report.layers)
    table.add_row("biases, batch norm (float32)", "", "", "", "", "", "", "", "", f"{report.raw_bytes:,}")
    table.add_row("header (spec, layout, metadata)", "", "", "", "", "", "", "", "", f"{report.header_bytes:,}")
    table.add_row("[bold]total on disk[/bold]", f"{sum_('weights'):,}", f"{sum_('kept'):,}",
                  f"{sum_('kept') / max(sum_('weights'), 1):.1%}", "", "", f"{sum_('codes_bytes'):,}",
                  f"{sum_('indices_bytes'):,}", f"{sum_('codebook_bytes'):,}", f"[bold]{report.file_bytes:,}[/bold]")
    out.print(table)
    settings = report.settings
    out.print(f"[bold]{report.file_bytes:,} bytes on disk[/bold] ({report.file_bytes / 1e6:.3f} MB, "
              f"{report.file_bytes / 2**20:.3f} MiB): {report.ratio:.1f}x smaller than float32 "
              f"({report.float32_bytes:,} bytes); densities: {report.density_source}; "
              f"{'Huffman-coded' if settings['huffman'] else 'no Huffman coding'}")
    a = report.accuracy
    if a.get("original") is not None:
        out.print(f"val accuracy: {_pct(a['original'])} before pruning, {_pct(a['pruned'])} pruned, "
                  f"{_pct(a['retrained'])} after {settings['retrain_epochs']} retraining epoch(s), "
                  f"{_pct(a['quantized'])} quantized, [bold]{_pct(a['final'])}[/bold] after "
                  f"{settings['finetune_epochs']} fine-tuning epoch(s) (the file's model)")
    parent = f"parent run {report.parent_run_id}" if report.parent_run_id else "no parent run (a model file)"
    row = f"; row {report.run_id} in {report.ledger}" if report.ledger else "; no ledger row (nothing was evaluated)"
    out.print(f"  {parent}; sidecar {report.out}.json{row}")


class _CompressDisplay:
    def __init__(self, console: Console):
        self.console = console

    def __call__(self, event: str, **info: Any) -> None:
        if event == "accuracy":
            self.console.print(f"  {info['stage']:>9}: val accuracy {info['acc']:.2%}, loss {info['loss']:.4f}")
        elif event == "epoch":
            self.console.print(f"  {info['stage']} epoch {info['epoch']}/{info['epochs']}: train loss {info['loss']:.4f}")


@app.command(cls=_Command)
def compress(
    source: Annotated[str, typer.Argument(help="A run id (or prefix) from the ledger, a run folder, or a model file (build --output, best.pt).")],
    density: Annotated[str, typer.Option("--density", help="Share of weights kept: 'paper' (SqueezeNet Table 1), a number for every layer, or per layer 'fire2.expand3x3=0.33,conv10=0.2' (also a kind: expand3x3=0.3, conv=, dense=); mix: 'paper,conv10=0.1'.", rich_help_panel="Compression")] = "paper",
    bits: Annotated[str, typer.Option("--bits", help="Bits per shared weight (1-16): '8', or per kind or layer 'conv=8,dense=5'.", rich_help_panel="Compression")] = "8",
    huffman: Annotated[bool, typer.Option("--huffman/--no-huffman", help="Huffman-code the codes and indices.", rich_help_panel="Compression")] = True,
    retrain_epochs: Annotated[int, typer.Option("--retrain-epochs", min=0, help="Epochs of retraining with the pruned weights held at zero.", rich_help_panel="Compression")] = 1,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", min=0, help="Epochs of centroid fine-tuning after weight sharing.", rich_help_panel="Compression")] = 1,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate of both (default: a tenth of the recipe's).", rich_help_panel="Compression")] = None,
    recipe: Annotated[Optional[str], typer.Option("--recipe", help="Optimizer, batch size and augmentation of retraining (default: the run's).", rich_help_panel="Compression")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the shuffling and augmentation of retraining.", rich_help_panel="Compression")] = 0,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="The compressed file (default: beside the model, NAME-compressed-ID.fadc).")] = None,
    ledger: LedgerOption = None,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    limit_train: LimitTrainOption = None,
    limit_test: LimitTestOption = None,
    device: DeviceOption = "auto",
    force: Annotated[bool, typer.Option("--force", help="Compress again even if this compression is already written.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Deep Compression of a trained model: prune, retrain, share weights, fine-tune, encode.

    Writes one file (a JSON header and packed streams, no pickle) and a sidecar JSON naming the
    parent run, appends a ledger row, and prints each layer's bytes and the accuracy at each step.

    Examples:

      fireablate compress 3ca98884 --density paper --bits 6

      fireablate compress runs/3ca98884b2f1 --density 0.4 --bits conv=8,dense=5 --no-huffman

      fireablate compress best.pt --density fire2.expand3x3=0.33,conv10=0.2 --data synthetic --json

      fireablate build --preset squeezenet1_0 -o v10.pt && fireablate compress v10.pt --data none --retrain-epochs 0 --finetune-epochs 0
    """
    from . import compress as C
    from .config import RECIPES

    if recipe is not None and recipe not in RECIPES:
        raise UsageError(f"--recipe must be one of {', '.join(RECIPES)}; got {recipe!r}")
    settings = C.CompressSettings(density=density, bits=bits, huffman=huffman, retrain_epochs=retrain_epochs,
                                  finetune_epochs=finetune_epochs, lr=lr, seed=seed)
    choice = C.DataChoice(data=data, data_dir=data_dir, limit_train=limit_train, limit_test=limit_test, recipe=recipe)
    report = C.compress(source, settings, choice, out_file, ledger, device=device, force=force,
                        progress=_CompressDisplay(err if as_json else out))
    if as_json:
        return out.print_json(json.dumps(report.to_dict()))
    if report.finished_before:
        out.print(f"already compressed with these settings: {report.out} (--force compresses again)")
    _render_compression(report)


@app.command(cls=_Command)
def evaluate(
    model: Annotated[Path, typer.Argument(help="A model file fireablate wrote: .pt, compressed .fadc, or .onnx from 'export'.")],
    data: DataOption = None,
    data_dir: DataDirOption = None,
    limit_train: LimitTrainOption = None,
    limit_test: LimitTestOption = None,
    device: DeviceOption = "cpu",
    flip: Annotated[Optional[bool], typer.Option(
        "--flip/--no-flip", show_default=False,
        help="Judge each image by the mean of its logits and its mirror image's, and of the one-pixel moves of both "
             "that the model's recipe names (default: as the model's run did; the fast recipe does).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Accuracy and loss of a model file on a dataset's test split (the model's own data by default).

    Examples:

      fireablate evaluate runs/3ca98884b2f1/best.pt

      fireablate evaluate runs/3ca98884b2f1/best-compressed-0a1b2c3d4e5f.fadc

      fireablate evaluate best.int8.onnx --data ./cifar10-jpeg --limit-test 2000
    """
    from .evaluate import evaluate_file

    result = evaluate_file(model, data, data_dir, limit_train, limit_test, device, flip=flip)
    if as_json:
        return out.print_json(json.dumps(result.to_dict()))
    mirrored = ", each averaged with its mirror image" if result.flip else ""
    if result.moves:
        mirrored += f" and {result.moves} one-pixel moves of both"
    out.print(f"{result.model} ({result.kind}, {result.bytes:,} bytes): [bold]accuracy {result.accuracy:.2%}[/bold], "
              f"loss {result.loss:.4f} on {result.n_test:,} test images of {result.data}{mirrored} ({result.seconds:.1f} s)")


@app.command("export", cls=_Command)
def export_model(
    model: Annotated[Path, typer.Argument(help="A model file: .pt (build --output, best.pt) or compressed .fadc.")],
    fmt: Annotated[str, typer.Option("--format", help="onnx.")] = "onnx",
    int8: Annotated[bool, typer.Option("--int8", help="Static int8 quantization with ONNX Runtime (QDQ, per-channel weights).")] = False,
    calibrate: Annotated[int, typer.Option("--calibrate", min=1, help="Training images that calibrate --int8's activation ranges.")] = 500,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="The .onnx file (default: beside the model, NAME.onnx or NAME.int8.onnx).")] = None,
    bench: Annotated[bool, typer.Option("--bench", help="Batch-1 latency (50 warm-up, 1,000 timed runs; 1 thread and every core): torch, ONNX Runtime fp32 and int8.")] = False,
    data: DataOption = None,
    data_dir: DataDirOption = None,
    limit_train: LimitTrainOption = None,
    limit_test: LimitTestOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Export to one self-contained ONNX file (dynamic batch), checked against torch; int8 on request.

    Needs the optional dependencies: pip install -e '.[export]'.

    Examples:

      fireablate export runs/3ca98884b2f1/best.pt --format onnx

      fireablate export runs/3ca98884b2f1/best.pt --int8 --calibrate 500 --bench

      fireablate export runs/3ca98884b2f1/best-compressed-0a1b2c3d4e5f.fadc --out compressed.onnx
    """
    from .export import export

    result = export(model, fmt, int8, out_file, calibrate, data, data_dir, limit_train, limit_test,
                    bench_runs=1000 if bench else None)
    if as_json:
        return out.print_json(json.dumps(result.to_dict()))
    out.print(f"wrote {result.out} ({result.bytes:,} bytes{', int8' if result.int8 else ''}); ONNX Runtime fp32 vs torch "
              f"on {result.check_batch} images: max abs difference {result.max_abs_diff:.2e}")
    if result.accuracy:
        shown = ", ".join(f"{k} {v:.2%}" for k, v in result.accuracy.items())
        calibrated = f" (int8 calibrated on {result.calibrate} training images)" if result.int8 else ""
        out.print(f"test accuracy on {result.data}: {shown}{calibrated}")
    if result.bench:
        env = result.environment
        table = Table(title=f"batch-1 latency, ms ({env['cpu']}, {env['cores']} cores; torch {env['torch']}, "
                            f"onnxruntime {env['onnxruntime']})", title_justify="left")
        for col in ("engine", "threads", "p50", "p90", "p99", "runs"):
            table.add_column(col, justify="left" if col == "engine" else "right")
        for r in result.bench:
            table.add_row(r["engine"], str(r["threads"]), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['runs']:,}")
        out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
