"""Summarise a pytest-benchmark JSON from bench/ as throughput and ratios to py-lmdb and sqlite3.

Usage (from the repository root):

    python -m pytest bench --benchmark-json /tmp/b.json -q && python bench/report.py /tmp/b.json

Options:
    --markdown        print GitHub-flavoured markdown tables instead of plain text
    --stat STAT       timing statistic per round to use: median (default), min or mean
    --sort            sort rows within a group by throughput (fastest first)

For every workload group (``benchmark.group``) each row shows:

    ops/s     extra_info['ops'] / <stat> round time   (ops = operations per round)
    ns/op     the inverse, in nanoseconds per operation
    vs lmdb   ops/s divided by the py-lmdb baseline row's ops/s in the same group
    vs sqlite ops/s divided by the sqlite3 baseline row's ops/s in the same group
    iqr%      interquartile range of the round times as a % of the median (noise)

Ratios are throughput ratios: > 1.00 means faster than the baseline, < 1.00 slower
(a time multiple "x lmdb" as in docs/research is 1 / "vs lmdb").  The baseline rows
are the ones marked extra_info['baseline'] = 'lmdb' / 'sqlite' (lmdb txn.get / txn.put
/ cursor iteration; sqlite3 with one statement per key, executemany for bulk load).
Only rows from the same JSON (same run, same machine) are compared.
"""

import argparse
import json
import sys


def _param_id(bench):
    name = bench.get("name", "")
    if "[" in name and name.endswith("]"):
        return name[name.index("[") + 1 : -1]
    return name


def _baseline_ops(rows, which):
    for r in rows:
        if r["baseline"] == which:
            return r["ops_s"]
    for r in rows:  # fallback: first row of that store
        if r["store"] == which:
            return r["ops_s"]
    return None


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}"


def _fmt_ops(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def load_groups(data, stat="median"):
    groups = {}
    for b in data.get("benchmarks", []):
        st = b.get("stats") or {}
        info = b.get("extra_info") or {}
        t = st.get(stat)
        ops = info.get("ops")
        if not t or not ops:
            continue
        iqr = st.get("iqr")
        med = st.get("median")
        groups.setdefault(b.get("group") or "(no group)", []).append(
            dict(
                name=_param_id(b),
                store=info.get("store", ""),
                baseline=info.get("baseline"),
                unit=info.get("unit", "op"),
                ops=ops,
                rounds=st.get("rounds"),
                ops_s=ops / t,
                ns_op=t / ops * 1e9,
                iqr_pct=(100.0 * iqr / med) if (iqr is not None and med) else None,
            )
        )
    return groups


def render(groups, markdown=False, sort=False):
    out = []
    for group, rows in groups.items():
        lmdb_ops = _baseline_ops(rows, "lmdb")
        sqlite_ops = _baseline_ops(rows, "sqlite")
        if sort:
            rows = sorted(rows, key=lambda r: -r["ops_s"])
        unit = rows[0]["unit"] if rows else "op"
        header = ["row", f"{unit}s/s", f"ns/{unit}", "vs lmdb", "vs sqlite", "iqr%"]
        table = []
        for r in rows:
            table.append([
                r["name"],
                _fmt_ops(r["ops_s"]),
                f"{r['ns_op']:.0f}",
                _fmt_ratio(r["ops_s"] / lmdb_ops if lmdb_ops else None),
                _fmt_ratio(r["ops_s"] / sqlite_ops if sqlite_ops else None),
                "-" if r["iqr_pct"] is None else f"{r['iqr_pct']:.1f}",
            ])
        ops = rows[0]["ops"] if rows else 0
        title = f"{group}  ({ops} {unit}s per round)"
        if markdown:
            out.append(f"### {title}\n")
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
            for t in table:
                out.append("| " + " | ".join(t) + " |")
        else:
            widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
            out.append(title)
            line = lambda cells: "  " + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            out.append(line(header))
            out.append("  " + "  ".join("-" * w for w in widths))
            out.extend(line(t) for t in table)
        out.append("")
    return "\n".join(out)


def machine_line(data):
    m = data.get("machine_info") or {}
    cpu = (m.get("cpu") or {}).get("brand_raw") or m.get("processor") or "?"
    ci = data.get("commit_info") or {}
    return (f"# {data.get('datetime', '?')}  python {m.get('python_version', '?')}  "
            f"{m.get('system', '?')} {m.get('release', '')}  cpu: {cpu}  "
            f"commit: {str(ci.get('id') or '?')[:12]}{' (dirty)' if ci.get('dirty') else ''}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="file written by pytest --benchmark-json")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--stat", default="median", choices=["median", "min", "mean"])
    ap.add_argument("--sort", action="store_true", help="sort rows by throughput")
    a = ap.parse_args(argv)
    with open(a.json) as f:
        data = json.load(f)
    groups = load_groups(data, a.stat)
    if not groups:
        print("no benchmark results with stats and extra_info['ops'] in", a.json, file=sys.stderr)
        return 1
    print(machine_line(data))
    print(f"# throughput = ops / {a.stat} round time; 'vs' columns are throughput ratios "
          f"(>1 = faster than the baseline)\n")
    print(render(groups, markdown=a.markdown, sort=a.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
