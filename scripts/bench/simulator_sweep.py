#!/usr/bin/env python3
"""Policy sweep for BENCHMARKS.md's simulator section: for each row, the default policy with the
named keys changed, replayed over every shared trace with `connscale simulate --summary`; prints
the markdown table of how many traces meet every target (the summary's own verdict).

Rows are written against the default policy before 2026-12-03 (lookahead 200 s, scale-in step 2,
a warm pool of 2), which the first row restores. With --cordon, the rows are instead the scale-in
knobs around today's default (since 2026-12-06 a scale-in waits for the cordon to empty its
victims). Usage (after `cargo build --release -p connscale`):
python3 scripts/bench/simulator_sweep.py [--cordon] [TRACES_DIR]
"""

import concurrent.futures
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = ROOT / "target/release/connscale"
CORDON = "--cordon" in sys.argv[1:]
ARGS = [a for a in sys.argv[1:] if a != "--cordon"]
TRACES = pathlib.Path(ARGS[0]) if ARGS else ROOT.parent / "shared/traces"
OUT = ROOT / "target/bench/sweep"

BEFORE = {
    "scale_out.lookahead": "200s",
    "scale_in.step": 2,
    "warm_pool.min_size": 2,
    "warm_pool.max_prepared": 2,
}
NOW = {"scale_in.step": 10, "warm_pool.min_size": 6, "warm_pool.max_prepared": 6,
       "scale_out.lookahead": "120s"}


def pool(n):
    return {"warm_pool.min_size": n, "warm_pool.max_prepared": n}


ROWS = [
    ("none (lookahead 200 s, step 2, pool 2)", {}),
    ("pool 4", pool(4)),
    ("pool 8", pool(8)),
    ("drain_grace 45 m, until_below 500",
     {"scale_in.drain_grace": "45m", "scale_in.drain_grace_until_below": 500}),
    ("step 10", {"scale_in.step": 10}),
    ("step 10, pool 4", {"scale_in.step": 10, **pool(4)}),
    ("step 10, pool 6 (lookahead 200 s)", {"scale_in.step": 10, **pool(6)}),
    ("step 10, pool 6, until_below 1000",
     {"scale_in.step": 10, **pool(6), "scale_in.drain_grace_until_below": 1000}),
    ("step 10, pool 6, grace 45 m", {"scale_in.step": 10, **pool(6), "scale_in.drain_grace": "45m"}),
    ("step 10, pool 5, lookahead 120 s", {**NOW, **pool(5)}),
    ("step 10, pool 6, lookahead 120 s (the default now)", NOW),
    ("step 10, pool 8, lookahead 120 s", {**NOW, **pool(8)}),
    ("step 10, pool 6, lookahead 90 s", {**NOW, "scale_out.lookahead": "90s"}),
    ("step 10, pool 6, lookahead 150 s", {**NOW, "scale_out.lookahead": "150s"}),
    ("step 10, pool 6, lookahead 120 s, grace 45 m", {**NOW, "scale_in.drain_grace": "45m"}),
    ("step 10, pool 6, lookahead 120 s, peak_window 10 m", {**NOW, "scale_in.peak_window": "10m"}),
    ("step 10, pool 6, lookahead 120 s, sustain 10 m", {**NOW, "scale_in.sustain": "10m"}),
    ("step 10, pool 6, lookahead 120 s, scale-in threshold 20,000", {**NOW, "scale_in.threshold": 20000}),
    ("step 10, pool 6, lookahead 120 s, max_after 24,500", {**NOW, "scale_in.max_after": 24500}),
]

# Around today's default (peak_window 15 m, empty_below 1,000, drain_grace 30 m, until_below
# 2,000, cordon_wait 1 h).
CORDON_ROWS = [
    ("none (the default)", {}),
    ("empty_below 0 (every node waits out the window)", {"scale_in.empty_below": 0}),
    ("empty_below 500", {"scale_in.empty_below": 500}),
    ("empty_below 750", {"scale_in.empty_below": 750}),
    ("empty_below 1,250", {"scale_in.empty_below": 1250}),
    ("empty_below 1,500", {"scale_in.empty_below": 1500}),
    ("empty_below 2,000", {"scale_in.empty_below": 2000}),
    ("peak_window 10 m", {"scale_in.peak_window": "10m"}),
    ("peak_window 12 m", {"scale_in.peak_window": "12m"}),
    ("peak_window 20 m", {"scale_in.peak_window": "20m"}),
    ("peak_window 10 m, empty_below 0 (the default before)",
     {"scale_in.peak_window": "10m", "scale_in.empty_below": 0}),
    ("sustain 10 m", {"scale_in.sustain": "10m"}),
    ("until_below 1,500 (empty_below 1,000)", {"scale_in.drain_grace_until_below": 1500}),
    ("until_below 3,000", {"scale_in.drain_grace_until_below": 3000}),
    ("cordon_wait 30 m", {"scale_in.cordon_wait": "30m"}),
    ("cordon_wait 90 m", {"scale_in.cordon_wait": "90m"}),
    ("drain_grace 20 m", {"scale_in.drain_grace": "20m"}),
    ("drain_grace 45 m", {"scale_in.drain_grace": "45m"}),
    ("max_after 24,500", {"scale_in.max_after": 24500}),
]


def policy(changes):
    """The default policy file with `section.key = value` replaced for each change."""
    text = (ROOT / "policies/default.toml").read_text()
    for dotted, value in {**({} if CORDON else BEFORE), **changes}.items():
        section, key = dotted.split(".")
        literal = str(value) if isinstance(value, int) else f'"{value}"'
        pat = re.compile(rf"(^\[{re.escape(section)}\][\s\S]*?^{key}\s*=\s*)[^\n#]+", re.M)
        text, n = pat.subn(lambda m: m.group(1) + literal + " ", text, count=1)
        if n != 1:
            sys.exit(f"{dotted} is not in policies/default.toml")
    return text


def met(i_row):
    i, (_, changes) = i_row
    path = OUT / f"row{i}.toml"
    path.write_text(policy(changes))
    args = [str(BIN), "simulate", "--summary", "--policy", str(path)]
    for t in sorted(TRACES.glob("*.csv")):
        args += ["--trace", str(t)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    m = re.search(r"every target met on (\d+) of (\d+) traces", out)
    return f"{m.group(1)} of {m.group(2)}"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rows = CORDON_ROWS if CORDON else ROWS
    since = "today's default" if CORDON else "the default before 2026-12-03"
    print(f"| change from {since} | every target met |")
    print("|---|---:|")
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        for (label, _), n in zip(rows, ex.map(met, enumerate(rows))):
            print(f"| {label} | {n} |", flush=True)


if __name__ == "__main__":
    main()
