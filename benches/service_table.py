#!/usr/bin/env python3
"""Renders `tokengate bench service --json` as the Markdown tables of docs/benchmarks.md.

    target/release/tokengate -q bench service --json > service.json
    python3 benches/service_table.py service.json
"""
import json
import sys


def cell(v, digits=2):
    if not v:
        return "–"
    return f"{v['median']:.{digits}f} ({v['min']:.{digits}f}–{v['max']:.{digits}f})"


def main(path):
    report = json.load(open(path))
    print(
        f"{report['cores']} cores; cheap call {report['cheap_us']:.1f} µs, expensive mean "
        f"{report['expensive_mean_ms']:.2f} ms; {report['rounds']} interleaved rounds of "
        f"{report['secs']:g} s after a {report['warmup_s']:g} s warm-up; seed {report['seed']}; "
        "median (min–max) over the rounds; ratios are per round, to `spawn_blocking` in the "
        "same round; every round's results checked equal across executors. Longest cheap "
        "stall: the longest span of a round in which a cheap call waited and none finished; "
        "dispatcher late: the latest a request was handed to the runtime after its scheduled "
        "arrival (latencies count from the arrival, so a late dispatcher shows as a cheap "
        "stall too: a stall about as long as the lateness was the generator's, a much "
        "longer one the executor's)"
        + {
            None: ".",
            "realtime": "; machine froze: the longest span of a round in which nothing in the "
            "machine ran, at least (a watch thread at real-time priority woke 10 ms or more "
            "late; 0: none seen), a stall no executor can help.",
            "normal": "; machine froze: the longest a watch thread at normal priority "
            "(real-time was refused) woke 10 ms or more late: a frozen machine or a busy core.",
            "none": "; machine froze: not watched (the watch thread did not start).",
        }[report.get("freeze_watch")]
        + "\n"
    )
    froze = "freeze_watch" in report
    for load in report["loads"]:
        print(f"**{load['load'] * 100:.0f}% of both cores busy** ({load['rate_per_s']:.0f} requests/s)\n")
        print(
            "| executor | cheap p50 ms | cheap p99 ms | cheap p99.9 ms | expensive p50 ms | "
            "expensive p99 ms | cheap p99 ÷ spawn_blocking | expensive p50 ÷ spawn_blocking | "
            "requests/s | CPU (cores) | longest cheap stall ms | dispatcher late ms |"
            + (" machine froze ms |" if froze else "")
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if froze else ""))
        for row in load["executors"]:
            print(
                f"| {row['executor']} | {cell(row['cheap_p50_ms'], 3)} | {cell(row['cheap_p99_ms'])} | "
                f"{cell(row['cheap_p999_ms'])} | {cell(row['expensive_p50_ms'])} | "
                f"{cell(row['expensive_p99_ms'], 1)} | {cell(row['cheap_p99_vs_spawn_blocking'])} | "
                f"{cell(row['expensive_p50_vs_spawn_blocking'])} | "
                f"{row['throughput_per_s']['median']:.0f} | {row['cpu_cores']['median']:.2f} | "
                f"{cell(row.get('cheap_stall_max_ms'), 1)} | {cell(row.get('dispatch_late_max_ms'), 1)} |"
                + (f" {cell(row.get('freeze_max_ms'), 0)} |" if froze else "")
            )
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin")
