"""Run every benchmark and print a table: figure, reference (measured in the same run), ratio."""
from __future__ import annotations

import importlib
import sys
import time

MODULES = ["bench.planner", "bench.analysis", "bench.decode", "bench.loader", "bench.tokenizer", "bench.dit"]


def main(argv: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    wanted = argv or MODULES
    rows = []
    for name in wanted:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        t0 = time.time()
        print(f"running {name} ...", flush=True)
        rows += mod.run()
        print(f"  {name}: {time.time() - t0:.1f}s", flush=True)
    t = Table(title="make bench")
    for col in ("bench", "value", "reference", "ratio", "ok"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["bench"]), str(r["value"]), str(r["reference"]), str(r["ratio"]),
                  {True: "yes", False: "NO", None: "-"}[r.get("ok")])
    Console(width=200).print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
