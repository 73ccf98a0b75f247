"""Wall time of the commands that must not import torch, beside torch's own import.

    python benchmarks/startup.py [--repeats 15]

Runs each command in a fresh interpreter, interleaved so that machine noise hits all alike,
and prints the median and the ratio to `import torch`. Target: well under 0.5 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "fireablate --help": [sys.executable, "-m", "fireablate", "--help"],
    "fireablate count-params --preset cifar": [sys.executable, "-m", "fireablate", "count-params", "--preset", "cifar"],
    "fireablate count-params --param sr (5 values)": [
        sys.executable, "-m", "fireablate", "count-params", "--param", "sr", "--values", "0.125,0.25,0.5,0.75,1.0",
    ],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    torch_median = statistics.median(times["python -c 'import torch'"])
    print("| command | median wall time (s) | vs `import torch` |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| `{name}` | {m:.3f} | {m / torch_median:.2f}x |")
    print(f"\n{args.repeats} runs each, interleaved; {shutil.which('python') or sys.executable}")


if __name__ == "__main__":
    main()
