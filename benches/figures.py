#!/usr/bin/env python3
"""Regenerates the tables of docs/benchmarks.md: one command.

    python3 benches/figures.py run              # measure everything, then rewrite the tables
    python3 benches/figures.py run text drift   # measure some sections, rewrite all tables
    python3 benches/figures.py                  # rewrite the tables from the saved reports

`run` builds the release binaries, runs each section's command (the commands are below,
and each table in docs/benchmarks.md names its own) and saves the raw reports under
benches/results/. Rendering reads those reports and replaces, in docs/benchmarks.md,
everything between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->` with the table
made from them; the prose around the tables is written by hand. Needs only python3
(and, for `run`, cargo, valgrind for `instructions`, nats-server for `faults`).

Sections and their measurements (2-core machine: expect about an hour for all):
  service       tokengate bench service at 40, 66 and 80% load, 3 rounds   (~12 min)
  text          tokengate compare text --repeat 5, then 8 more fits             (~7 min)
  drift         tokengate compare drift --repeat 5, seeds 1, 11, 7, 2, 5, 42 (~15 min)
  leibniz       tokengate run leibniz --terms 60000000, 5 runs              (~1 min)
  instructions  cargo bench --bench instructions, 3 runs                    (~5 min)
  faults        tests/bench/remote_faults.sh 3                              (~8 min)
  strangers     tokengate run drift beside busy loops on every core, 3 rounds (~4 min)
  streams       tokengate compare mixed and mislabeled --repeat 5             (~4 min)
"""
import json
import os
import statistics
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benches", "results")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
TOKENGATE = os.path.join(ROOT, "target", "release", "tokengate")
DRIFT_SEEDS = [1, 11, 7, 2, 5, 42]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def sh(args, **kw):
    print("+", " ".join(args), file=sys.stderr)
    return subprocess.run(args, cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE, **kw).stdout


def save(name, text):
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name), "w") as f:
        f.write(text)


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def spread(values, digits=2):
    values = sorted(values)
    return f"{statistics.median(values):.{digits}f} ({values[0]:.{digits}f}–{values[-1]:.{digits}f})"


# ---- measuring ---------------------------------------------------------------------------

def run_service():
    # Not `-q`: each round's line on stderr (its stall, lateness, freeze, rescues) stays in the log.
    out = sh([TOKENGATE, "bench", "service", "--loads", "0.4,0.66,0.8", "--rounds", "3",
              "--secs", "6", "--warmup", "2", "--json"])
    save("service.json", out)


def run_text():
    main = sh([TOKENGATE, "-q", "compare", "text", "--repeat", "5", "--json"])
    save("text.json", main)
    # Each `compare text` fits its models once: eight more fits give the accuracy's spread.
    fits = [json.loads(main)] + [
        json.loads(sh([TOKENGATE, "-q", "compare", "text", "--repeat", "1", "--json"]))
        for _ in range(8)]
    save("text-fits.json", json.dumps([{"models": f["models"], "labels": f["labels"]} for f in fits]))


def run_drift():
    for seed in DRIFT_SEEDS:
        out = sh([TOKENGATE, "-q", "compare", "drift", "--seed", str(seed), "--repeat", "5", "--json"])
        save(f"drift-{seed}.json", out)


def run_leibniz():
    runs = [json.loads(sh([TOKENGATE, "-q", "run", "leibniz", "--terms", "60000000", "--json"]))
            for _ in range(5)]
    save("leibniz.json", json.dumps(runs))


def run_instructions():
    outs = [sh(["cargo", "bench", "--bench", "instructions"]) for _ in range(3)]
    save("instructions.txt", "\n".join(outs))


# Busy loops at normal priority on every core, for at most this long (a run whose heavy
# lanes get no rescue waits for them to end).
STRANGER_SECS = 30
STRANGER_RUNS = [
    ("alone, defaults", [], False),
    ("beside busy loops, defaults (rescue)", [], True),
    ("beside busy loops, `--isolate-heavy` (no rescue)", ["--isolate-heavy"], True),
    ("beside busy loops, `--split pinned`", ["--split", "pinned"], True),
]


def run_strangers():
    cores = len(os.sched_getaffinity(0))
    rounds = []
    for _ in range(3):
        for name, flags, busy in STRANGER_RUNS:
            # The shell runs the loop itself: killing it ends the loop.
            loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
                     for _ in range(cores if busy else 0)]
            timers = [threading.Timer(STRANGER_SECS, loop.kill) for loop in loops]
            for timer in timers:
                timer.start()
            try:
                out = json.loads(sh([TOKENGATE, "-q", "run", "drift", "--json", *flags]))
            finally:
                for timer, loop in zip(timers, loops):
                    timer.cancel()
                    loop.kill()
                    loop.wait()
            rounds.append({"run": name, "loops": len(loops), "report": out})
    save("strangers.json", json.dumps({"stranger_secs": STRANGER_SECS, "rounds": rounds}))


STREAMS = ["mixed", "mislabeled"]


def run_streams():
    for stream in STREAMS:
        save(f"{stream}.json", sh([TOKENGATE, "-q", "compare", stream, "--repeat", "5", "--json"]))


def run_faults():
    save("faults.txt", sh(["bash", "tests/bench/remote_faults.sh", "3"]))


# ---- rendering ---------------------------------------------------------------------------

def render_service():
    text = load("service.json")
    if text is None:
        return None
    import io
    import contextlib
    import service_table
    out = io.StringIO()
    path = os.path.join(RESULTS, "service.json")
    with contextlib.redirect_stdout(out):
        service_table.main(path)
    return out.getvalue().strip()


def render_text():
    text = load("text.json")
    if text is None:
        return None
    r = json.loads(text)
    names = [("tags", "tags"), ("learned_size", "learned, size hint only"),
             ("learned", "**learned, with cost features**"), ("oracle", "oracle (each call's measured cost)")]
    lines = [f"{r['tokens']:,} calls, {r['repeat']} interleaved runs per router, seed {r['seed']}, "
             f"{r['rate']:,.0f} calls/s ({r['load'] * 100:.0f}% load); medians (range).", "",
             "| router | light p99 ms | light p50 ms | makespan s | heavy calls on a heavy lane |",
             "|---|---|---|---|---|"]
    for key, label in names:
        x = r["routers"][key]
        p99 = x["light_p99_ms_runs"]
        ms = x["makespan_s_range"]
        lines.append(f"| {label} | {spread(p99)} | {x['light_p50_ms']:.3f} | "
                     f"{x['makespan_s']:.3f} ({ms[0]:.3f}–{ms[1]:.3f}) | {x['heavy_on_heavy_lane'] * 100:.0f}% |")
    rt = r["routers"]
    lines += ["", f"Ratios of the medians: with features ÷ size only "
              f"**{rt['learned']['light_p99_ms'] / rt['learned_size']['light_p99_ms']:.2f}×**; "
              f"÷ oracle **{rt['learned']['light_p99_ms'] / rt['oracle']['light_p99_ms']:.2f}×**; "
              f"makespan ÷ oracle **{rt['learned']['makespan_s'] / rt['oracle']['makespan_s']:.2f}×**. "
              f"Held-out accuracy: size only {r['models']['learned_size']['accuracy'] * 100:.1f}%, "
              f"with features **{r['models']['learned']['accuracy'] * 100:.1f}%**."]
    fits_text = load("text-fits.json")
    if fits_text is not None:
        fits = json.loads(fits_text)
        pct = lambda xs: spread([x * 100 for x in xs], 1)
        size = [f["models"]["learned_size"]["accuracy"] for f in fits]
        feat = [f["models"]["learned"]["accuracy"] for f in fits]
        agree = [f["labels"]["agreement"] for f in fits]
        ceiling = [f["labels"]["ceiling"] for f in fits]
        share = [a / c for a, c in zip(feat, ceiling)]
        runs = fits[0]["labels"]["runs"]
        lines += ["", f"Over {len(fits)} fits (each `compare text` fits once), median (range) in %: "
                  f"held-out accuracy size only {pct(size)}, **with features {pct(feat)}**; "
                  f"the labels' own repeatability ({runs} logged runs of the training documents): "
                  f"pairs agreeing {pct(agree)}, **ceiling {pct(ceiling)}** (each run's class predicted "
                  f"by the other runs' majority); accuracy ÷ ceiling {spread(share, 3)}."]
        lines += ["", f"Per operation over the {len(fits)} fits, median (range) in %, and each input's "
                  "share of the row-weighted Gini decrease in the first fit's tree "
                  "(`trainer inspect` prints the same):", "",
                  "| operation | size only | with features | label ceiling | importance with features |",
                  "|---|---|---|---|---|"]
        for op in sorted(fits[0]["models"]["learned"]["per_op_accuracy"]):
            per = lambda key: pct([f["models"][key]["per_op_accuracy"][op] for f in fits])
            ceil = pct([f["labels"]["per_op"][op]["ceiling"] for f in fits])
            imp = sorted(fits[0]["models"]["learned"]["importance"][op].items(), key=lambda kv: -kv[1])
            imp = ", ".join(f"{name} {share:.2f}" for name, share in imp)
            lines.append(f"| `{op}` | {per('learned_size')} | {per('learned')} | {ceil} | {imp} |")
    return "\n".join(lines)


def render_drift():
    reports = [(seed, json.loads(text)["routers"]) for seed in DRIFT_SEEDS
               if (text := load(f"drift-{seed}.json")) is not None]
    if not reports:
        return None
    # Reports from before the freeze watch have no column for it.
    watched = all("freeze_after_shift_ms_runs" in r["adaptive"] for _, r in reports)
    rows = []
    for seed, r in reports:
        a, l, o = r["adaptive"], r["learned"], r["oracle"]
        runs = ", ".join("never" if x is None else f"{x:g}" for x in a["recovery_s_runs"])
        rec = "never" if a["recovery_s"] is None else f"{a['recovery_s']:g}"
        lo, hi = a["light_p99_after_shift_ms_range"]
        froze = (" " + ", ".join(f"{x:.0f}" for x in a["freeze_after_shift_ms_runs"]) + " |"
                 if watched else "")
        rows.append(
            f"| {seed} | {a['recovered_runs']} of {len(a['recovery_s_runs'])} | {rec} ({runs}) | "
            f"{a['light_p99_after_shift_ms']:.2f} ({lo:.2f}–{hi:.2f}) | "
            f"{l['light_p99_after_shift_ms']:.2f} | {o['light_p99_after_shift_ms']:.2f} | "
            f"{a['light_p99_after_shift_ms'] / l['light_p99_after_shift_ms']:.2f} | "
            f"{a['light_p99_after_shift_ms'] / o['light_p99_after_shift_ms']:.2f} |{froze}")
    return "\n".join([
        "| seed | runs recovered | `recovery_s` (per run) | after-shift light p99 ms, adaptive (range) "
        "| static learned | oracle | adaptive ÷ learned | adaptive ÷ oracle |"
        + (" machine froze after the shift, adaptive, ms (per run) |" if watched else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if watched else "")] + rows)


def render_leibniz():
    text = load("leibniz.json")
    if text is None:
        return None
    runs = json.loads(text)
    rates = [r["tokens_per_s"] / 1e6 for r in runs]
    return (f"60,000,000-term Leibniz (`tokengate -q run leibniz --terms 60000000 --json`), "
            f"{len(runs)} runs: **{spread(rates, 1)} M tokens/s**.")


def render_instructions():
    text = load("instructions.txt")
    if text is None:
        return None
    per = {}
    for line in text.splitlines():
        if line.startswith("instructions/") and " per token" in line:
            mode = line.split("/")[1].split(":")[0]
            per.setdefault(mode, []).append(float(line.split(": ")[1].split(" ")[0]))
    if not per:
        return None
    lines = ["| path | instructions per token (runs) |", "|---|---|"]
    for mode, values in per.items():
        lines.append(f"| {mode} | {', '.join(f'{v:,.0f}' for v in values)} |")
    return "\n".join(lines)


def render_faults():
    text = load("faults.txt")
    if text is None:
        return None
    by = {}
    for line in text.splitlines():
        # "<fault>   +  0.04 s  lost 0  twice 0  digest equal  remote …  overhead p50 9650 us"
        parts = line.split()
        if len(parts) > 3 and parts[1] == "+":
            by.setdefault(parts[0], []).append(line)
    lines = ["| fault, 2 s into the run | added wall time (runs) | tokens fell back to local lanes "
             "| lost | twice | digest | remote overhead p50 ms (runs) |",
             "|---|---|---|---|---|---|---|"]
    for fault, runs in by.items():
        added = ", ".join(f"+{float(r.split()[2]):.2f}" for r in runs) + " s"
        fell = ", ".join(r.split("fell back ")[1].split()[0] for r in runs)
        lost = sum(int(r.split("lost ")[1].split()[0]) for r in runs)
        twice = sum(int(r.split("twice ")[1].split()[0]) for r in runs)
        digest = "equal" if all("digest equal" in r for r in runs) else "**DIFFERENT**"
        overhead = ", ".join(f"{int(r.split('overhead p50 ')[1].split()[0]) / 1000:.1f}" for r in runs)
        lines.append(f"| {fault} | {added} | {fell} | {lost} | {twice} | {digest} | {overhead} |")
    return "\n".join(lines)


def render_strangers():
    text = load("strangers.json")
    if text is None:
        return None
    data = json.loads(text)
    lines = [f"`run drift` (40,000 calls at 8,000/s, the shipped model), 3 interleaved rounds; "
             f"busy loops: one `sh` loop per core at normal priority, ended after "
             f"{data['stranger_secs']} s at the latest; medians (range).", "",
             "| run | wall s | light p99 ms | heavy p50 ms | heavy p99 ms | rescues |",
             "|---|---|---|---|---|---|"]
    for name, _, _ in STRANGER_RUNS:
        reports = [r["report"] for r in data["rounds"] if r["run"] == name]
        col = lambda f, d=2: spread([f(r) for r in reports], d)
        lines.append(f"| {name} | {col(lambda r: r['wall_s'], 1)} | {col(lambda r: r['light']['p99_ms'])} "
                     f"| {col(lambda r: r['heavy']['p50_ms'])} | {col(lambda r: r['heavy']['p99_ms'], 0)} "
                     f"| {', '.join(str(r.get('rescues', 0)) for r in reports)} |")
    return "\n".join(lines)


def render_streams():
    reports = [(stream, json.loads(text)) for stream in STREAMS
               if (text := load(f"{stream}.json")) is not None]
    if not reports:
        return None
    first = reports[0][1]
    lines = [f"{first['tokens']:,} calls at {first['rate']:,.0f} calls/s, seed {first['seed']}, "
             f"{first['repeat']} interleaved runs per router, model {first['model_version']}; "
             "medians (range).", "",
             "| stream | router | light p99 ms | light p50 ms | makespan s | heavy calls on a heavy lane "
             "| runs the machine froze in | rescues |",
             "|---|---|---|---|---|---|---|---|"]
    for stream, r in reports:
        for name in [n for n in ("tags", "ewma", "learned", "oracle") if n in r["routers"]]:
            x = r["routers"][name]
            lo, hi = x["makespan_s_range"]
            froze = sum(1 for ms in x["freeze_max_ms_runs"] if ms > 0)
            lines.append(f"| {stream} | {name} | {spread(x['light_p99_ms_runs'])} | "
                         f"{x['light_p50_ms']:.3f} | {x['makespan_s']:.3f} ({lo:.3f}–{hi:.3f}) | "
                         f"{x['heavy_on_heavy_lane'] * 100:.0f}% | {froze} of {len(x['freeze_max_ms_runs'])} | "
                         f"{sum(x.get('rescues_runs', []))} |")
    return "\n".join(lines)


SECTIONS = {
    "service": (run_service, render_service),
    "text": (run_text, render_text),
    "drift": (run_drift, render_drift),
    "leibniz": (run_leibniz, render_leibniz),
    "instructions": (run_instructions, render_instructions),
    "faults": (run_faults, render_faults),
    "strangers": (run_strangers, render_strangers),
    "streams": (run_streams, render_streams),
}


def rewrite_doc():
    with open(DOC) as f:
        doc = f.read()
    for name, (_, render) in SECTIONS.items():
        begin, end = f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"
        if begin not in doc:
            continue
        table = render()
        if table is None:
            print(f"{name}: no saved report in benches/results/, table left as it was", file=sys.stderr)
            continue
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{table}\n{end}{tail}"
    with open(DOC, "w") as f:
        f.write(doc)


def main(argv):
    if argv and argv[0] == "run":
        names = argv[1:] or list(SECTIONS)
        unknown = [n for n in names if n not in SECTIONS]
        if unknown:
            sys.exit(f"unknown section(s) {unknown}; sections: {', '.join(SECTIONS)}")
        sh(["cargo", "build", "--release", "--workspace"])
        for name in names:
            SECTIONS[name][0]()
    elif argv:
        sys.exit(__doc__)
    rewrite_doc()


if __name__ == "__main__":
    main(sys.argv[1:])
