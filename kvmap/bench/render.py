"""What kvmap-bench prints and draws: the comparison table (a row per
workload, a column per store, the best kvmap backend marked), the details
(latency, get_cold's page-cache proof, growth, churn, space, and what each
store's files held after each workload) and the PNG chart."""

from __future__ import annotations

from typing import Any, Callable, Optional

from .figures import MIB
from .workloads import UNITS, Result

def fmt_rate(x: Optional[float]) -> str:
    if x is None:
        return "-"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{suf}"
    return f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def fmt_bytes(x: Optional[int]) -> str:
    if x is None:
        return "-"
    return f"{x / MIB:.1f}M"


def row_label(r: Result) -> str:
    """A result's row in the tables: its workload, and procs's reader processes."""
    readers = r["extra"].get("readers") if r["workload"] == "procs" else None
    return f"procs {readers}r" if readers else str(r["workload"])


def row_labels(results: list[Result], workloads: list[str]) -> list[tuple[str, str]]:
    """(row label, workload) of the results, in the order of workloads."""
    return list(dict.fromkeys((row_label(r), w) for w in workloads for r in results if r["workload"] == w))


def render_table(results: list[Result], stores: list[str], workloads: list[str], kvmap_stores: list[str],
                 peers: list[str]) -> str:
    """The comparison table (rows workloads, columns stores, best kvmap marked '*')."""
    by = {(row_label(r), r["store"]): r for r in results}
    rows: list[tuple[str, str, Callable[[Result], Optional[float]], str]] = []
    for label, w in row_labels(results, workloads):
        rows.append((label, label, lambda r: r["throughput"]["median"] if r.get("throughput") else None,
                     UNITS[w]))
        if w == "procs":
            rows.append((f"{label}/reader", label,
                         lambda r: r["throughput"]["median"] / r["extra"]["readers"] if r.get("throughput") else None,
                         UNITS[w]))
        if w in ("mixed", "procs"):
            rows.append((f"{label}:writer", label,
                         lambda r: r["extra"].get("writer_commits_per_s") if r.get("throughput") else None,
                         "commit/s"))
    header = ["workload"] + list(stores) + [f"best kvmap / {p}" for p in peers]
    lines = []
    for label, w, get, unit in rows:
        vals: dict[str, Any] = {}
        for s in stores:
            r = by.get((w, s))
            vals[s] = get(r) if r is not None else None
        kv = [(vals[s], s) for s in kvmap_stores if vals.get(s) is not None]
        best = max(kv)[1] if kv else None
        cells = [label]
        for s in stores:
            v = vals[s]
            if v is None:
                r = by.get((w, s))
                cells.append("error" if r is not None and r.get("error") else "n/a")
            else:
                cells.append(f"{fmt_rate(v)} {unit}" + (" *" if s == best else "  "))
        for peer in peers:
            pv = vals.get(peer)
            cells.append(f"{vals[best] / pv:.2f}x" if best and pv else "-")
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    out = []
    fmt: Callable[[list[str]], str] = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out.append(fmt(header))
    out.append("  ".join("-" * w for w in widths))
    out.extend(fmt(c) for c in lines)
    out.append("* = best kvmap backend per row (median of repetitions; higher is better)")
    return "\n".join(out)


def render_details(results: list[Result]) -> str:
    """Latency, get_cold, growth, churn and space details, and what the stores' files held
    after each workload (the secondary tables)."""
    out = []
    stores = list(dict.fromkeys(r["store"] for r in results))
    lat_w = list(dict.fromkeys((row_label(r), r["extra"].get("latency_per")) for r in results if r.get("latency_us")))
    if lat_w:
        by = {(row_label(r), r["store"]): r for r in results}
        rows = []
        for w, per in lat_w:
            # procs: the readers' latency per snapshot, then the writer's per commit
            lat_rows: list[tuple[str, Callable[[Result], Any]]] = [
                (f"{w} p50/p99 us" + (f" per {per}" if per else ""), lambda r: r.get("latency_us")),
                (f"{w}:writer p50/p99 us per commit", lambda r: r["extra"].get("writer_commit_us"))]
            for label, lat_of in lat_rows:
                lats = {s: lat_of(by[w, s]) if (w, s) in by else None for s in stores}
                if any(lats.values()):
                    rows.append([label] + [f"{lu['p50']:.1f}/{lu['p99']:.1f}" if lu else "-"
                                           for lu in lats.values()])
            # what a commit costs in system calls and bytes (the stores that count them)
            for key, what in (("fdatasync_per_commit", "fdatasync/commit"), ("pwrite_per_commit", "pwrite/commit"),
                              ("kib_written_per_commit", "KiB written/commit")):
                if any(key in (by.get((w, s)) or {}).get("extra", {}) for s in stores):
                    cells = [f"{w} {what}"]
                    for s in stores:
                        e = (by.get((w, s)) or {}).get("extra") or {}
                        cells.append(f"{e[key]:.2f}" if key in e else "-")
                    rows.append(cells)
        header = ["latency"] + stores
        widths = [max(len(c) for c in col) for col in zip(header, *rows)]
        for cells in [header] + rows:
            out.append("  ".join(c.rjust(wd) if i else c.ljust(wd)
                                 for i, (c, wd) in enumerate(zip(cells, widths))))
        out.append("")
    cold = [r for r in results if r["workload"] == "get_cold" and r.get("throughput")]
    if cold:
        out.append("get_cold (last repetition)  resident pages: evicted  at start  after gets"
                   "  of file  read MiB  readahead")
        for r in cold:
            e = r["extra"]
            res = e["resident"]
            out.append(f"  {r['store']:<25} {res['dropped']['pages']:>15}  {res['start']['pages']:>8}"
                       f"  {res['end']['pages']:>10}  {res['end']['of']:>7}  {e['read_mib'] or 0:>8.1f}"
                       f"  {e['readahead']}")
        out.append("")
    gr = [r for r in results if r["workload"] == "growth" and r.get("throughput")]
    if gr:
        out.append("growth                 steps  step ms med  step ms max  commit ms  "
                   "first-read minflt  re-read minflt after growth")
        for r in gr:
            e = r["extra"]
            out.append(f"  {r['store']:<20} {e['growth_steps']:>5}  {e['step_ms_median'] or 0:>11.2f}  "
                       f"{e['step_ms_max'] or 0:>11.2f}  {e['plain_commit_ms_median'] or 0:>9.2f}  "
                       f"{e['first_read_minflt']:>17}  {e['reread_minflt']:>14}")
    ch = [r for r in results if r["workload"] == "churn" and r.get("throughput")]
    if ch:
        out.append("")
        out.append("churn                  file before->after   allocated before->after   "
                   "RSS before->after")
        for r in ch:
            b, a = r["extra"]["before"], r["extra"]["after"]
            out.append(f"  {r['store']:<20} {fmt_bytes(b['file_size']):>8} -> {fmt_bytes(a['file_size']):<8}"
                       f"  {fmt_bytes(b['allocated']):>8} -> {fmt_bytes(a['allocated']):<8}"
                       f"         {fmt_bytes(b['rss']):>8} -> {fmt_bytes(a['rss'])}")
    out.extend(_render_space(results, stores))
    out.extend(_render_space_after(results, stores))
    return "\n".join(out)


def _columns(rows: list[list[str]]) -> list[str]:
    """rows of cells as lines: the first column left-aligned, the others right."""
    widths = [max(len(c) for c in col) for col in zip(*rows)]
    return ["  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()
            for cells in rows]


def _share(x: Optional[float], fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


SPACE_FIGURES = (("file_size", "file"), ("allocated", "allocated"), ("mapped_rss", "mapped RSS"),
                 ("rss", "process RSS"))


def _render_space(results: list[Result], stores: list[str]) -> list[str]:
    """The space workload's two cases, a table each: a column per store, a
    row per figure and moment."""
    sp = {r["store"]: r["extra"] for r in results if r["workload"] == "space" and r.get("throughput")}
    if not sp:
        return []
    cols = [s for s in stores if s in sp]
    g = {s: sp[s]["giveback"] for s in cols}
    h = {s: sp[s]["held_snapshot"] for s in cols}
    g0, h0 = g[cols[0]], h[cols[0]]
    giveback = [[f"space: {g0['entries']:,} entries, {g0['deleted']:,} deleted, 10 commits"] + cols]
    for k, what in SPACE_FIGURES:
        giveback.append([f"  before: {what}"] + [fmt_bytes(g[s]["before"][k]) for s in cols])
    for k, what in SPACE_FIGURES:
        giveback.append([f"  after: {what} (fall/deleted)"]
                        + [f"{fmt_bytes(g[s]['after'][k])} ({_share(g[s]['fall_per_deleted'][k], '.2f')})"
                           for s in cols])
    held = [[f"space: a snapshot held over {h0['txns']:,} txns of {h0['puts_per_txn']} puts"] + cols,
            ["  at the snapshot: file"] + [fmt_bytes(h[s]["at_snapshot"]["file_size"]) for s in cols]]
    for moment, figures, growth in (("held", "held", "growth_held"),
                                    ("released, 10 commits", "after_release", "growth_after_release")):
        for k, what in SPACE_FIGURES[:3]:
            held.append([f"  {moment}: {what} (growth/file)"]
                        + [f"{fmt_bytes(h[s][figures][k])} ({_share(h[s][growth][k], '+.0%')})" for s in cols])
    return ["", *_columns(giveback), "", *_columns(held)]


def _render_space_after(results: list[Result], stores: list[str]) -> list[str]:
    """What each store's files held after each workload (rows) on each store (columns)."""
    done = [r for r in results if r.get("file_size") is not None]
    if not done:
        return []
    by = {(row_label(r), r["store"]): r for r in done}
    rows = [["after the workload: file / allocated / mapped RSS"] + stores]
    for label in dict.fromkeys(row_label(r) for r in done):
        cells = [f"  {label}"]
        for s in stores:
            r = by.get((label, s))
            cells.append("-" if r is None else
                         f"{fmt_bytes(r['file_size'])} / {fmt_bytes(r['allocated'])} / {fmt_bytes(r['mapped_rss'])}")
        rows.append(cells)
    return ["", *_columns(rows)]


def write_plot(path: str, results: list[Result], stores: list[str], workloads: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(row_label(r), r["store"]): r for r in results if r.get("throughput")}
    labels = [label for label, _ in row_labels(results, workloads)]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.2 * len(labels)), 9))
    width = 0.8 / max(1, len(stores))
    for j, s in enumerate(stores):
        ys = []
        for w in labels:
            best = max((by[w, t]["throughput"]["median"] for t in stores if (w, t) in by), default=0)
            r = by.get((w, s))
            ys.append(r["throughput"]["median"] / best if r and best else 0)
        ax1.bar([i + j * width for i in range(len(labels))], ys, width, label=s)
    ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax1.set_xticklabels(labels, rotation=20)
    ax1.set_ylabel("throughput / best in workload")
    ax1.set_title("kvmap-bench: throughput per store, normalised per workload")
    ax1.legend(fontsize=8)
    any_growth = False
    for s in stores:
        r = by.get(("growth", s))
        if r and r["extra"].get("steps"):
            xs = [st[0] for st in r["extra"]["steps"]]
            ys = [st[1] for st in r["extra"]["steps"]]
            ax2.plot(xs, ys, marker="o", label=s)
            any_growth = True
    ax2.set_xlabel("file size after the growth step (MiB)")
    ax2.set_ylabel("growth-step commit (ms)")
    ax2.set_title("growth step latency (last repetition)")
    if any_growth:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
