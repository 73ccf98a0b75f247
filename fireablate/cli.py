"""The ``fireablate`` command line: parse options, call one library function, render with rich.

torch, pandas and seaborn are imported inside the commands that need them, so ``--help`` and
``count-params`` start in a fraction of a second. Errors the user can fix are one line on stderr.
"""


import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from . import __version__
from .errors import FireablateError, UsageError
from .presets import PRESETS, OVERRIDES, option_name

# Piped output gets a fixed, roomy width rather than rich's 80 columns, so tables stay whole.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int) -> None:
    err.print(f"fireablate: error: {message}", markup=False, soft_wrap=True)
    sys.exit(code)


class _OneLineErrors(TyperGroup):
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
        except typer.Abort:
            _fail("interrupted", 130)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=_OneLineErrors,
    help="Fire-module (SqueezeNet) ablation studies: size calculator, training, sweeps, figures.",
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
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
# Network options shared by every command that describes a network.

_SPEC_HELP: dict[str, tuple[Any, str]] = {
    "sr": (Optional[float], "Squeeze ratio SR = s_i / e_i, in (0, 1]."),
    "pct3x3": (Optional[float], "Share of expand filters that are 3x3, in (0, 1)."),
    "base_e": (Optional[int], "Expand filters of the first metaparameter fire module."),
    "incr_e": (Optional[int], "Expand filters added every FREQ modules."),
    "freq": (Optional[int], "Fire modules per width step."),
    "n_fire": (Optional[int], "Number of metaparameter fire modules."),
    "fires": (Optional[str], "Explicit modules 'squeeze:expand1x1:expand3x3,...' instead of metaparameters."),
    "extra_fires": (Optional[str], "Expand filters of extra modules right after conv1, e.g. '128'."),
    "stem_filters": (Optional[int], "conv1 filters."),
    "stem_kernel": (Optional[int], "conv1 kernel size."),
    "stem_stride": (Optional[int], "conv1 stride."),
    "padding": (Optional[str], "conv1 padding: same or valid."),
    "pool_after": (Optional[str], "Max-pool after these layers (1 = conv1, 2.. = fire modules), e.g. '1,4,8'."),
    "bypass": (Optional[str], "none, simple (identity) or complex (1x1 conv where widths differ)."),
    "batch_norm": (Optional[bool], "Batch norm after every weighted layer."),
    "dropout": (Optional[float], "Dropout before the final layer."),
    "extra_dropout": (Optional[float], "Dropout after conv1 and each max-pool."),
    "num_classes": (Optional[int], "Output classes."),
    "in_channels": (Optional[int], "Input image channels."),
    "input_size": (Optional[int], "Input image side in pixels."),
    "weight_init": (Optional[str], "Weight init: xavier_uniform, kaiming_normal or pytorch."),
}
assert set(_SPEC_HELP) == set(OVERRIDES), "every override needs a CLI option"

PresetOption = Annotated[
    str, typer.Option("--preset", "-p", help=f"Starting network: {', '.join(PRESETS)}.", rich_help_panel="Network")
]


def spec_options(func: Callable) -> Callable:
    """Adds one option per spec override to a command; they arrive as ``overrides`` (name -> value).

    Declaring them once keeps every command's names, types and help identical. (This module has
    no ``from __future__ import annotations``: typer must see the real Annotated objects.)
    """
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "overrides"]
    for name, (annotation, help_text) in _SPEC_HELP.items():
        flag = f"--{option_name(name)}"
        decls = [f"{flag}/--no-{option_name(name)}"] if name == "batch_norm" else [flag]
        option = typer.Option(*decls, help=help_text, rich_help_panel="Network overrides", show_default=False)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation, option])
        )

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {name: kwargs.pop(name) for name in _SPEC_HELP if name in kwargs}
        return func(*args, overrides={k: v for k, v in overrides.items() if v is not None}, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _fmt_macs(n: int) -> str:
    return f"{n / 1e6:,.1f} M"


# ---------------------------------------------------------------------------------------------
# count-params


def _count_table(count, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("layer", "kind", "in -> out", "kernel", "output", "weights", "biases", "bn", "MMACs"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in count.rows:
        size = f"{r.out_size}x{r.out_size}" if r.out_size else ""
        kernel = f"{r.kernel}x{r.kernel}" if r.kernel else ""
        table.add_row(
            r.name, r.kind, f"{r.in_channels} -> {r.out_channels}", kernel, size,
            _fmt_int(r.weights), _fmt_int(r.biases), _fmt_int(r.bn), f"{r.macs / 1e6:,.1f}",
        )
    return table


def _totals(spec, count, bits: int) -> dict[str, Any]:
    return {
        "name": spec.name,
        "params": count.params,
        "mib": round(count.mib(32), 4),
        f"mib_{bits}bit": round(count.mib(bits), 4),
        "macs": count.macs,
        "flops": 2 * count.macs,
    }


@app.command("count-params")
@spec_options
def count_params(
    preset: PresetOption = "cifar",
    per_layer: Annotated[bool, typer.Option("--per-layer", help="One row per layer.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    bits: Annotated[int, typer.Option("--bits", help="Also give the size at 16, 8 or 6 bits per parameter.")] = 32,
    param: Annotated[
        Optional[str], typer.Option("--param", help="Preview a sweep: the parameter to vary.", rich_help_panel="Sweep preview")
    ] = None,
    values: Annotated[
        Optional[str],
        typer.Option("--values", help="Values for --param: 'a,b,c' or 'start:stop:step'.", rich_help_panel="Sweep preview"),
    ] = None,
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

    Size is float32 parameter bytes in MiB, the SqueezeNet paper's convention. FLOPs = 2 x MACs.

    Examples:

      fireablate count-params --preset squeezenet1_0

      fireablate count-params --preset cifar --sr 0.5 --per-layer

      fireablate count-params --param sr --values 0.125,0.25,0.5,0.75,1.0

      fireablate count-params --fire --in-channels 256 --expand 512 --sr 0.125
    """
    from . import params as P
    from .presets import apply_overrides, get_preset, parse_values, resolve

    if bits not in (32, 16, 8, 6):
        raise UsageError(f"--bits must be 32, 16, 8 or 6, got {bits}")
    if fire:
        cin = overrides.pop("in_channels", None)
        if cin is None or expand is None:
            raise UsageError("--fire needs --in-channels and --expand (and --sr or --squeeze)")
        cmp = P.compare_fire(
            cin, expand, sr=overrides.pop("sr", None) if squeeze is None else None, squeeze=squeeze,
            pct3x3=overrides.pop("pct3x3", 0.5),
        )
        if as_json:
            out.print_json(json.dumps({
                "in_channels": cin, "squeeze": cmp.sizes.squeeze, "expand1x1": cmp.sizes.expand1x1,
                "expand3x3": cmp.sizes.expand3x3, "fire_weights": cmp.fire_weights,
                "conv3x3_weights": cmp.conv_weights, "reduction": round(cmp.reduction, 6),
            }))
            return
        s = cmp.sizes
        out.print(f"Fire module: {cin} -> squeeze {s.squeeze} -> expand {s.expand1x1} 1x1 + {s.expand3x3} 3x3 = {s.out_channels} channels")
        out.print(f"  fire module weights:   {_fmt_int(cmp.fire_weights):>12}")
        out.print(f"  3x3 conv {cin}->{s.out_channels} weights: {_fmt_int(cmp.conv_weights):>12}")
        out.print(f"  [bold]{cmp.reduction:.2%} fewer[/bold] ({cmp.conv_weights / cmp.fire_weights:.2f}x smaller); biases left out")
        return
    if (param is None) != (values is None):
        raise UsageError("--param and --values go together")
    if param is not None:
        base = apply_overrides(get_preset(preset), overrides)
        rows = []
        for v in parse_values(values):
            spec = apply_overrides(base, {param: v})
            rows.append((v, P.count(spec)))
        if as_json:
            out.print_json(json.dumps([{param: v, **_totals(base, c, bits)} for v, c in rows]))
            return
        table = Table(title=f"{preset}: sweep of {param}", title_justify="left")
        for col in (param, "parameters", "MiB (fp32)", *([f"MiB ({bits}-bit)"] if bits != 32 else []), "MACs"):
            table.add_column(col, justify="right")
        for v, c in rows:
            table.add_row(v, _fmt_int(c.params), f"{c.mib():.3f}", *([f"{c.mib(bits):.3f}"] if bits != 32 else []), _fmt_macs(c.macs))
        out.print(table)
        return
    spec = resolve(preset, overrides)
    count = P.count(spec)
    if as_json:
        payload = _totals(spec, count, bits)
        if per_layer:
            payload["layers"] = [{**r.__dict__, "params": r.params} for r in count.rows]
        out.print_json(json.dumps(payload))
        return
    if per_layer:
        out.print(_count_table(count, spec.name))
    out.print(
        f"[bold]{spec.name}[/bold]: {_fmt_int(count.params)} parameters, {count.mib():.2f} MiB (float32)"
        + (f", {count.mib(bits):.2f} MiB at {bits} bits" if bits != 32 else "")
        + f", {_fmt_macs(count.macs)} MACs ({2 * count.macs / 1e9:.2f} GFLOPs) per {spec.input_size}x{spec.input_size} image"
    )


# ---------------------------------------------------------------------------------------------
# build


@app.command()
@spec_options
def build(
    preset: PresetOption = "cifar",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Save the spec and fresh weights here, for 'train --init'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved spec as JSON.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the initial weights.")] = 0,
    *,
    overrides: dict[str, Any],
) -> None:
    """Build the PyTorch model, show its layers, and check it against the calculator.

    Examples:

      fireablate build --preset squeezenet1_1

      fireablate build --preset cifar --bypass complex --freq 2 --output cifar_complex.pt

      fireablate build --preset cifar_optimized --json
    """
    from . import params as P
    from .model import build as build_model, save_model, summarize
    from .presets import resolve
    from .spec import to_dict

    spec = resolve(preset, overrides)
    model = build_model(spec, seed=seed)
    expected = P.count(spec).params
    actual = sum(p.numel() for p in model.parameters())
    if actual != expected:  # a bug in fireablate, not the user's input: keep it loud
        raise RuntimeError(f"built model has {actual} parameters but the calculator says {expected}")
    if as_json:
        out.print_json(json.dumps(to_dict(spec)))
    else:
        table = Table(title=spec.name, title_justify="left")
        for col in ("module", "type", "output shape", "parameters"):
            table.add_column(col, justify="right" if col == "parameters" else "left")
        for name, kind, shape, n in summarize(model):
            table.add_row(name, kind, " x ".join(map(str, shape)), _fmt_int(n) if n else "")
        out.print(table)
        out.print(
            f"{_fmt_int(actual)} parameters ({P.size_mib(actual):.2f} MiB float32), "
            "matching the calculator"
        )
    if output is not None:
        save_model(output, model, {"seed": seed})
        (err if as_json else out).print(f"saved spec and initial weights to {output}")


# ---------------------------------------------------------------------------------------------
# train


def _train_options(func: Callable) -> Callable:
    """Adds the data, recipe and speed options of one training run; they arrive as ``config``."""
    from_cli: dict[str, tuple[Any, Any, Any]] = {
        "data": (str, "cifar10", typer.Option("--data", help="cifar10, synthetic, or a folder with train/ and test/ (ImageFolder layout).", rich_help_panel="Data")),
        "data_dir": (Optional[str], None, typer.Option("--data-dir", help="Where CIFAR-10 lives or is downloaded to (default: $FIREABLATE_DATA or the user cache).", rich_help_panel="Data")),
        "limit_train": (Optional[int], None, typer.Option("--limit-train", help="Use N training images, balanced over classes.", rich_help_panel="Data")),
        "limit_test": (Optional[int], None, typer.Option("--limit-test", help="Use N test images, balanced over classes.", rich_help_panel="Data")),
        "augment": (Optional[str], None, typer.Option("--augment", help="study, flipcrop or none (default: the recipe's).", rich_help_panel="Recipe")),
        "recipe": (str, "study", typer.Option("--recipe", help="study, step or fast.", rich_help_panel="Recipe")),
        "epochs": (Optional[int], None, typer.Option("--epochs", help="Most epochs (default: the recipe's).", rich_help_panel="Recipe")),
        "batch_size": (int, 128, typer.Option("--batch-size", help="Images per step.", rich_help_panel="Recipe")),
        "lr": (Optional[float], None, typer.Option("--lr", help="Peak learning rate (default: the recipe's).", rich_help_panel="Recipe")),
        "weight_decay": (Optional[float], None, typer.Option("--weight-decay", help="On conv and dense weights (default: the recipe's).", rich_help_panel="Recipe")),
        "seed": (int, 0, typer.Option("--seed", help="Seeds the weights, the shuffling and the augmentation.", rich_help_panel="Recipe")),
        "device": (str, "auto", typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel="Speed")),
        "precision": (str, "auto", typer.Option("--precision", help="auto (bf16 on CUDA and AMX CPUs), fp32, bf16 or fp16.", rich_help_panel="Speed")),
        "compile": (bool, False, typer.Option("--compile", help="torch.compile the model.", rich_help_panel="Speed")),
    }
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name != "config"]
    for name, (annotation, default, option) in from_cli.items():
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[annotation, option]))

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .train import TrainConfig

        values = {name: kwargs.pop(name) for name in from_cli if name in kwargs}
        return func(*args, config=TrainConfig(**values), **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _spec_for_training(preset: Optional[str], overrides: dict[str, Any], init: Optional[Path]):
    from .presets import resolve

    if init is None:
        return resolve(preset or "cifar", overrides)
    if preset is not None or overrides:
        raise UsageError("--init takes the network from its file; drop --preset and the network options")
    from .model import load_model

    return load_model(init)[0].spec


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

    def __call__(self, event: str, **info: Any) -> None:
        p = self.progress
        if event == "finished_before":
            out.print(f"{self.label}run {info['run_id']} already finished in {info['out_dir']}; nothing to train")
        elif event == "start":
            r = info["recipe"]
            resumed = f", resuming after epoch {info['start_epoch']}" if info["start_epoch"] else ""
            out.print(
                f"{self.label}run {info['run_id']}: {info['params']:,} parameters on {info['device']} ({info['precision']}), "
                f"{info['n_train']:,} training images, {info['n_test']:,} validation images (the test split, as in the study){resumed}"
            )
            out.print(f"  recipe {r.name}: {r.about}; augment {r.augment}; output {info['out_dir']}")
            p.start()
            self.epochs = p.add_task("epochs", total=info["epochs"], completed=info["start_epoch"])
            self.steps = p.add_task("steps", total=info["steps"])
        elif event == "step":
            p.update(self.steps, completed=info["step"])
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


def _print_result(result) -> None:
    if result.status == "done":
        out.print(
            f"[bold]best val accuracy {result.best_val_acc:.2%}[/bold] (epoch {result.best_epoch} of {result.epochs}), "
            f"final {result.final_val_acc:.2%}; {result.train_time_s:.0f} s training, "
            f"{result.images_per_sec:,.0f} img/s; {result.params:,} parameters, {result.mib:.2f} MiB"
        )
        if result.message:
            out.print(f"  {result.message}")
        out.print(f"  weights, history and checkpoint in {result.out_dir}")


@app.command()
@_train_options
@spec_options
def train(
    preset: Annotated[
        Optional[str], typer.Option("--preset", "-p", help=f"Starting network (default cifar): {', '.join(PRESETS)}.", rich_help_panel="Network")
    ] = None,
    init: Annotated[
        Optional[Path], typer.Option("--init", help="Start from a model file written by 'build --output' (its network too).")
    ] = None,
    out_dir: Annotated[
        Optional[Path], typer.Option("--out", help="Output folder (default runs/RUN_ID); an unfinished run there continues.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Insist on continuing the checkpoint in --out.")] = False,
    *,
    overrides: dict[str, Any],
    config: Any,
) -> None:
    """Train one model and report its best validation accuracy.

    Writes best.pt and last.pt (spec and weights), history.csv (one row per epoch), result.json and
    a checkpoint each epoch; running the same command again continues an interrupted run.

    Examples:

      fireablate train --preset cifar --data synthetic --epochs 3

      fireablate train --preset cifar --data ./cifar10-jpeg --recipe fast --out runs/fast

      fireablate train --preset cifar_optimized --recipe step --device cuda
    """
    import dataclasses

    from .train import train as run_training

    spec = _spec_for_training(preset, overrides, init)
    if init is not None:
        config = dataclasses.replace(config, init=str(init))
    display = _TrainDisplay()
    try:
        result = run_training(spec, config, out_dir=out_dir, progress=display, resume=resume)
    finally:
        display.close()
    _print_result(result)
    if result.status != "done":
        raise FireablateError(f"training {result.status}: {result.message}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
