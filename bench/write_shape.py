"""How kvmap's commit should shape its writes on this machine: one pwrite per
4 KiB page (what native/txn.c does) or one pwritev per contiguous run.

    python bench/write_shape.py [--rounds 5] [--seed 1] [--dir DIR]

Pure Python on scratch files (no kvmap import).  Every figure is the median
over --rounds rounds; the variants compared alternate their order round by
round.  A write shape "runs<=K" groups a commit's ascending pages into
contiguous runs and splits them at multiples of K pages: one pwritev per piece
(pwrite for a single page); K = IOV_MAX is "one pwritev per run"; "pages" is
one pwrite per page.  The write calls are planned before the clock starts, as
C would build its iovecs for free.  Four measurements:

1. bulk    A bulk-load commit of 16 and 64 MiB of 4 KiB pages in mostly
           contiguous runs, into a file grown with posix_fallocate as kvmap
           grows it, in each shape, then fdatasync: time and system calls.
2. small   Small commits of 3-5 pages (one run, two runs, or scattered) plus
           the 128-byte meta write, with an fdatasync after the pages and
           after the meta (sync=True: the metas alternate between offsets 0
           and 4096) or none (sync=False: the commits between two flushes
           share one meta slot): us per commit, one pwrite per page against
           one pwritev per run.
3. folios  The large-folio effect.  A 64 MiB fallocated file whose first
           48 MiB were written in one of the shapes or by 1 MiB pwrites, or
           written page by page and evicted from the page cache ("cold", a
           database opened cold), then read once in page order ("scan") or
           not.  Reads: none, os.pread, or a MAP_SHARED PROT_READ mapping
           (made before the writes, like kvmap's) with default advice or with
           MADV_RANDOM; 4 random page reads per commit.  Each commit is a
           4 KiB pwrite + fdatasync over written data ("overwrite"), one into
           the never-written, fallocated tail ("hole"), and a 4 KiB store
           through a MAP_SHARED read-write mapping with MADV_RANDOM +
           fdatasync ("mapped", kvmap's writemap).
           "dirtied KiB" is the growth of write_bytes in /proc/self/io, which
           the kernel charges a whole folio at a time when a clean folio turns
           dirty: the size of the folio written into.  "device KiB" is the
           growth of the sectors written by the file's block device
           (/sys/dev/block/M:m/stat): what the fdatasync really wrote, journal
           included (other writers on the disk add noise; medians hide most
           of it).  "read KiB" is read_bytes of /proc/self/io: the read-ahead.
4. fstat   os.fstat on the open file against a no-op call and two bare system
           calls: the cost of the fstat kvmap makes at each transaction begin.

The scratch directory is a temporary directory made under --dir, by default
next to this script on the repository's file system (/tmp may be tmpfs); the
header names the kernel, the file system, the block device and its
read-ahead.  posix_fadvise(DONTNEED) evicts only the scratch file's own pages.
Python adds some 100 ns to every system call, which "pages" pays once per
page.  About half a minute with the defaults.
"""

import argparse
import contextlib
import mmap
import os
import random
import statistics
import tempfile
import time

PAGE = 4096
META = 128
META_PAGES = 3                  # kvmap's meta pages 0, 1 and 2: the others from page 3
MIB = 1 << 20
IOV_MAX = os.sysconf("SC_IOV_MAX")

BULK_MIB = (16, 64)
BULK_CAPS = (1, 4, 16, IOV_MAX)
SMALL_FILE = 16 * MIB
SMALL_LOW = 256                 # small commits take pages among the file's lowest
SMALL_COMMITS = {False: 2000, True: 400}
SMALL_PATTERNS = ("one run", "two runs", "scattered")
FOLIO_FILE = 64 * MIB
FOLIO_WRITTEN = 48 * MIB        # the rest stays fallocated and never written
FOLIO_COMMITS = 64
FOLIO_READS = 4                 # random page reads per commit
# (how the written part was written, how it is read, scanned once in order)
FOLIO_SCENARIOS = (
    ("pages", "-", False),
    ("runs4", "-", False),
    ("runs16", "-", False),
    (f"runs{IOV_MAX}", "-", False),
    (f"runs{IOV_MAX}", "mmap+RANDOM", False),
    ("1MiB", "-", False),
    ("cold", "-", False),
    ("cold", "mmap", False),
    ("cold", "mmap+RANDOM", False),
    ("cold", "pread", True),
    ("cold", "mmap", True),
    ("cold", "mmap+RANDOM", True),
)


def now():
    return time.perf_counter()


def med(values):
    return statistics.median(values)


def ordered(items, r):
    return items if r % 2 == 0 else items[::-1]


def shape_name(cap):
    return "pages" if cap == 1 else f"runs{cap}"


# ---------------------------------------------------------------- environment

def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return "?"


def mount_of(path):
    """(fstype, source, mount point, options) of the mount holding path."""
    path = os.path.realpath(path)
    best = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields = left.split()
            point = fields[4].replace("\\040", " ")
            fstype, source, superopts = right.split()[:3]
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and (best is None or len(point) >= len(best[2])):
                options = ",".join(dict.fromkeys(f"{fields[5]},{superopts}".split(",")))
                best = (fstype, source, point, options)
    return best


class Counters:
    """Bytes this process dirtied and read (/proc/self/io) and bytes the block
    device under `path` wrote (nan when the file system has no such device)."""

    def __init__(self, path):
        st = os.stat(path)
        self.devno = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        stat = f"/sys/dev/block/{self.devno}/stat"
        self.dev_stat = stat if os.path.exists(stat) else None

    def read_ahead_kb(self):
        queue = f"/sys/dev/block/{self.devno}/queue/read_ahead_kb"
        if not os.path.exists(queue):      # a partition: its disk's queue
            queue = f"/sys/dev/block/{self.devno}/../queue/read_ahead_kb"
        return read_text(queue)

    def snap(self):
        io = {}
        with open("/proc/self/io") as f:
            for line in f:
                k, v = line.split(":")
                io[k] = int(v)
        device = float("nan")
        if self.dev_stat:
            with open(self.dev_stat) as f:
                device = int(f.read().split()[6]) * 512
        return io["write_bytes"], io["read_bytes"], device

    @staticmethod
    def delta(before, after):
        """(dirtied, read, device-written) bytes between two snaps."""
        return tuple(b - a for a, b in zip(before, after))


@contextlib.contextmanager
def scratch_file(d, size):
    """A new file of `size` bytes, allocated by posix_fallocate; removed after."""
    fd, path = tempfile.mkstemp(dir=d, suffix=".db")
    try:
        os.posix_fallocate(fd, 0, size)
        yield fd
    finally:
        os.close(fd)
        os.unlink(path)


# --------------------------------------------------------------- write shapes

def runs_of(pages):
    """Ascending page numbers -> [first, count] of each contiguous run."""
    runs = []
    for p in pages:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1][1] += 1
        else:
            runs.append([p, 1])
    return runs


def plan(pages, views, cap):
    """The write calls of a commit in shape runs<=cap, as (function, data,
    offset, length): runs split at multiples of cap pages, pwritev for a piece
    of several pages, pwrite for one."""
    nv, calls = len(views), []
    for first, count in runs_of(pages):
        at, end = first, first + count
        while at < end:
            stop = min(end, (at // cap + 1) * cap)
            if stop - at == 1:
                calls.append((os.pwrite, views[at % nv], at * PAGE, PAGE))
            else:
                calls.append((os.pwritev, [views[p % nv] for p in range(at, stop)],
                              at * PAGE, (stop - at) * PAGE))
            at = stop
    return calls


def execute(fd, calls):
    for fn, data, off, n in calls:
        if fn(fd, data, off) != n:
            raise OSError(f"short write at {off}")
    return len(calls)


# ----------------------------------------------------------- 1. bulk commits

def bulk_layout(rng, npages):
    """Pages of a bulk-load commit, from the first after the metas: runs of
    64-512 pages (1-8 for one run in ten: pages reused from the free list),
    1-3 pages apart."""
    pages, p = [], META_PAGES
    while len(pages) < npages:
        n = rng.randint(1, 8) if rng.random() < 0.1 else rng.randint(64, 512)
        n = min(n, npages - len(pages))
        pages.extend(range(p, p + n))
        p += n + rng.randint(1, 3)
    return pages


def measure_bulk(d, rng, rounds, counters, views):
    print(f"\n1. Bulk commit into a posix_fallocate'd file, then fdatasync "
          f"(median of {rounds}; ratios against pages)")
    print(f"{'size':>5} {'shape':9} {'calls':>6} {'write ms':>9} {'sync ms':>8} "
          f"{'total ms':>9} {'device MiB':>11} | {'write':>6} {'sync':>6} {'total':>6}")
    for mib in BULK_MIB:
        pages = bulk_layout(rng, mib * MIB // PAGE)
        plans = {cap: plan(pages, views, cap) for cap in BULK_CAPS}
        res = {cap: [] for cap in BULK_CAPS}
        for r in range(rounds):
            for cap in ordered(BULK_CAPS, r):
                with scratch_file(d, (pages[-1] + 1) * PAGE) as fd:
                    c0 = counters.snap()
                    t0 = now()
                    execute(fd, plans[cap])
                    t1 = now()
                    os.fdatasync(fd)
                    t2 = now()
                    device = counters.delta(c0, counters.snap())[2]
                res[cap].append((t1 - t0, t2 - t1, t2 - t0, device))
        print(f"{mib:>3}Mi: {len(pages)} pages in {len(runs_of(pages))} runs")
        base = [med(c) for c in zip(*res[1])]
        for cap in BULK_CAPS:
            w, s, t, dev = [med(c) for c in zip(*res[cap])]
            print(f"{'':5} {shape_name(cap):9} {len(plans[cap]):>6} {w * 1e3:>9.1f} "
                  f"{s * 1e3:>8.1f} {t * 1e3:>9.1f} {dev / MIB:>11.1f} | {w / base[0]:>6.2f} "
                  f"{s / base[1]:>6.2f} {t / base[2]:>6.2f}")


# ---------------------------------------------------------- 2. small commits

def small_commit_pages(rng, pattern):
    """3-5 ascending pages among the lowest SMALL_LOW data pages."""
    k = rng.randint(3, 5)
    lo = META_PAGES
    if pattern == "one run":
        s = rng.randrange(lo, lo + SMALL_LOW - k)
        return list(range(s, s + k))
    if pattern == "two runs":
        a = rng.randint(1, k - 1)
        s1 = rng.randrange(lo, SMALL_LOW // 2 - a)
        s2 = rng.randrange(lo + SMALL_LOW // 2, lo + SMALL_LOW - (k - a))
        return list(range(s1, s1 + a)) + list(range(s2, s2 + k - a))
    return sorted(rng.sample(range(lo, lo + SMALL_LOW, 2), k))     # none adjacent


def commit(fd, calls, sync, txnid, meta):
    """kvmap's commit: the pages, (fdatasync), the meta page, (fdatasync).
    The meta goes to a slot other than the durable commit's: with sync=True
    slots 0 and 1 in turn; with sync=False (no flush here) one slot."""
    n = execute(fd, calls)
    if sync:
        os.fdatasync(fd)
    if os.pwrite(fd, meta, (txnid & 1 if sync else 0) * PAGE) != META:
        raise OSError("short meta write")
    if sync:
        os.fdatasync(fd)
    return n + 1


def measure_small(d, rng, rounds, views):
    """Prints the table; returns {(pattern, sync): seconds per commit, shape pages}."""
    caps = (1, IOV_MAX)
    res = {}
    meta = rng.randbytes(META)
    with scratch_file(d, SMALL_FILE) as fd:
        execute(fd, plan(range(SMALL_FILE // PAGE), views, 1))
        os.fdatasync(fd)
        txnid = 0
        for r in range(rounds):
            for pattern in SMALL_PATTERNS:
                for sync in (False, True):
                    commits = [small_commit_pages(rng, pattern) for _ in range(SMALL_COMMITS[sync])]
                    for cap in ordered(caps, r):
                        plans = [plan(pages, views, cap) for pages in commits]
                        times, calls = [], 0
                        for calls_of_commit in plans:
                            txnid += 1
                            t0 = now()
                            calls += commit(fd, calls_of_commit, sync, txnid, meta)
                            times.append(now() - t0)
                        os.fdatasync(fd)     # the next block starts with a clean cache
                        res.setdefault((pattern, sync, cap), []).append(
                            (med(times), calls / len(plans)))
    print(f"\n2. Small commits: 3-5 pages + 128-byte meta, us per commit "
          f"(median of {rounds})")
    print(f"{'pattern':10} {'sync':>5} {'pages us':>9} {'runs us':>8} {'runs/pages':>11} "
          f"{'write calls pages/runs':>23}")
    out = {}
    for pattern in SMALL_PATTERNS:
        for sync in (False, True):
            (tp, cp), (tr, cr) = ([med(c) for c in zip(*res[(pattern, sync, cap)])]
                                  for cap in caps)
            out[(pattern, sync)] = tp
            print(f"{pattern:10} {str(sync):>5} {tp * 1e6:>9.1f} {tr * 1e6:>8.1f} "
                  f"{tr / tp:>11.2f} {cp:>15.1f} / {cr:.1f}")
    return out


# ------------------------------------------------------ 3. large-folio effect

def prepare(fd, prep, pool, views):
    """Write the first FOLIO_WRITTEN bytes as `prep` says; make them durable."""
    pages = range(FOLIO_WRITTEN // PAGE)
    if prep == "1MiB":
        for off in range(0, FOLIO_WRITTEN, MIB):
            if os.pwrite(fd, pool[:MIB], off) != MIB:
                raise OSError("short write")
    else:
        execute(fd, plan(pages, views, 1 if prep in ("pages", "cold") else int(prep[4:])))
    os.fdatasync(fd)
    if prep == "cold":
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def read_page(fd, m, off):
    if m is None:
        os.pread(fd, PAGE, off)
    else:
        m[off]


def page_commit(fd, page, buf, counters):
    """4 KiB pwrite + fdatasync: (pwrite s, fdatasync s, dirtied B, device B)."""
    c0 = counters.snap()
    t0 = now()
    if os.pwrite(fd, buf, page * PAGE) != PAGE:
        raise OSError("short write")
    t1 = now()
    os.fdatasync(fd)
    t2 = now()
    dirtied, _, device = counters.delta(c0, counters.snap())
    return t1 - t0, t2 - t1, dirtied, device


def mapped_commit(fd, wm, page, buf, counters):
    """4 KiB store through the read-write mapping + fdatasync: (s, device B)."""
    c0 = counters.snap()
    t0 = now()
    wm[page * PAGE:(page + 1) * PAGE] = buf
    os.fdatasync(fd)
    t1 = now()
    return t1 - t0, counters.delta(c0, counters.snap())[2]


def folio_scenario(d, rng, scenario, counters, pool, views):
    """One file.  Returns [scan s, scan read B, then per commit: reads s and
    read B (means); overwrite and hole page_commit, mapped_commit (medians)]."""
    prep, reads, scan = scenario
    written = FOLIO_WRITTEN // PAGE
    holes = rng.sample(range(written, FOLIO_FILE // PAGE), FOLIO_COMMITS)
    read_at = [[rng.randrange(written) * PAGE for _ in range(FOLIO_READS)]
               for _ in range(FOLIO_COMMITS)]
    targets = [(rng.randrange(META_PAGES, written), rng.randrange(META_PAGES, written))
               for _ in range(FOLIO_COMMITS)]
    rows = []
    with scratch_file(d, FOLIO_FILE) as fd, contextlib.ExitStack() as maps:
        m = None
        if reads.startswith("mmap"):
            m = maps.enter_context(mmap.mmap(fd, FOLIO_FILE, flags=mmap.MAP_SHARED,
                                             prot=mmap.PROT_READ))
            if reads == "mmap+RANDOM":
                m.madvise(mmap.MADV_RANDOM)
        wm = maps.enter_context(mmap.mmap(fd, FOLIO_FILE, flags=mmap.MAP_SHARED,
                                          prot=mmap.PROT_READ | mmap.PROT_WRITE))
        wm.madvise(mmap.MADV_RANDOM)
        prepare(fd, prep, pool, views)
        c0 = counters.snap()
        t0 = now()
        if scan:
            for off in range(0, FOLIO_WRITTEN, PAGE):
                read_page(fd, m, off)
        head = [now() - t0, counters.delta(c0, counters.snap())[1]]
        for i in range(FOLIO_COMMITS):
            c0 = counters.snap()
            t0 = now()
            if reads != "-":
                for off in read_at[i]:
                    read_page(fd, m, off)
            t1 = now()
            read_bytes = counters.delta(c0, counters.snap())[1]
            buf = views[i % len(views)]
            rows.append((t1 - t0, read_bytes)
                        + page_commit(fd, targets[i][0], buf, counters)
                        + page_commit(fd, holes[i], buf, counters)
                        + mapped_commit(fd, wm, targets[i][1], buf, counters))
    cols = list(zip(*rows))
    return head + [statistics.fmean(c) for c in cols[:2]] + [med(c) for c in cols[2:]]


def measure_folios(d, rng, rounds, counters, pool, views):
    res = {s: [] for s in FOLIO_SCENARIOS}
    for r in range(rounds):
        for s in ordered(FOLIO_SCENARIOS, r):
            res[s].append(folio_scenario(d, rng, s, counters, pool, views))
    cols = {s: [med(v) for v in zip(*rows)] for s, rows in res.items()}
    base = cols[FOLIO_SCENARIOS[0]]

    def label(s):
        return f"{s[0]:9} {s[1]:11} {'scan' if s[2] else '':4}"

    print(f"\n3. Large folios: 4 KiB commits after the file was written or read in a given "
          f"way (median of {rounds}, {FOLIO_COMMITS} commits a round; KiB per commit; "
          f"ratio = time against the first row)")
    print(f"{'written':9} {'reads':11} {'':4} | {'overwrite: pwrite 4 KiB + fdatasync':^38} | "
          f"{'hole: pwrite 4 KiB + fdatasync':^38}")
    print(f"{'':26} | " + " | ".join(
        [f"{'write us':>8} {'sync us':>7} {'dirtied':>7} {'device':>6} {'ratio':>5}"] * 2))
    for s in FOLIO_SCENARIOS:
        c, line = cols[s], label(s)
        for at in (4, 8):
            ratio = (c[at] + c[at + 1]) / (base[at] + base[at + 1])
            line += (f" | {c[at] * 1e6:>8.1f} {c[at + 1] * 1e6:>7.0f} {c[at + 2] / 1024:>7.0f} "
                     f"{c[at + 3] / 1024:>6.0f} {ratio:>5.2f}")
        print(line)
    print(f"\n{'written':9} {'reads':11} {'':4} | {'scan once':^16} | {'reads per commit':^15} | "
          f"{'mapped: store 4 KiB + fdatasync':^25}")
    print(f"{'':26} | {'ms':>7} {'read MiB':>8} | {'us':>7} {'read KiB':>7} | "
          f"{'us':>7} {'device':>7} {'ratio':>7}")
    for s in FOLIO_SCENARIOS:
        c = cols[s]
        scan = f"{c[0] * 1e3:>7.1f} {c[1] / MIB:>8.1f}" if s[2] else f"{'':>16}"
        print(f"{label(s)} | {scan} | {c[2] * 1e6:>7.0f} {c[3] / 1024:>8.0f} | "
              f"{c[12] * 1e6:>7.0f} {c[13] / 1024:>7.0f} {c[12] / base[12]:>7.2f}")


# --------------------------------------------------------------- 4. fstat

def measure_fstat(d, rounds, small):
    n = 200_000
    res = {}
    with scratch_file(d, PAGE) as fd:
        cases = (("no-op call: id(fd)", id, (fd,)),
                 ("os.getppid(): bare syscall", os.getppid, ()),
                 ("os.lseek(fd, 0, SEEK_CUR)", os.lseek, (fd, 0, os.SEEK_CUR)),
                 ("os.fstat(fd)", os.fstat, (fd,)))
        for r in range(rounds):
            for name, fn, args in ordered(cases, r):
                t = now()
                for _ in range(n):
                    fn(*args)
                res.setdefault(name, []).append((now() - t) / n)
    ns = {name: med(v) * 1e9 for name, v in res.items()}
    print(f"\n4. fstat at each transaction begin (median of {rounds}, {n} calls each)")
    for name in res:
        print(f"{name:30} {ns[name]:>6.0f} ns/call")
    extra = ns["os.fstat(fd)"] - ns["no-op call: id(fd)"]
    print(f"{'fstat - no-op':30} {extra:>6.0f} ns, an upper bound: it includes building "
          f"Python's stat_result")
    for sync in (False, True):
        commit_us = small[("one run", sync)] * 1e6
        print(f"  = {extra / 10 / commit_us:.2f}% of a small sync={sync} commit "
              f"({commit_us:.1f} us)")


# --------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)),
                    help="where to make the scratch directory (default: next to this script)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    d = tempfile.mkdtemp(prefix="write_shape-", dir=args.dir)
    try:
        counters = Counters(d)
        fstype, source, point, options = mount_of(d)
        print(f"kernel {os.uname().release}; {fstype} on {source} (device {counters.devno}, "
              f"read_ahead_kb {counters.read_ahead_kb()}) at {point} [{options}]")
        print(f"THP {read_text('/sys/kernel/mm/transparent_hugepage/enabled')}; "
              f"IOV_MAX {IOV_MAX}; {os.cpu_count()} CPUs; dir {d}; rounds {args.rounds}, "
              f"seed {args.seed}")
        if fstype in ("tmpfs", "ramfs"):
            print(f"warning: {fstype} has no disk: point --dir at the file system to measure")
        pool = memoryview(bytearray(rng.randbytes(max(BULK_MIB) * MIB)))
        views = [pool[i:i + PAGE] for i in range(0, len(pool), PAGE)]
        t0 = now()
        measure_bulk(d, rng, args.rounds, counters, views)
        small = measure_small(d, rng, args.rounds, views)
        measure_folios(d, rng, args.rounds, counters, pool, views)
        measure_fstat(d, args.rounds, small)
        print(f"\n{now() - t0:.0f} s")
    finally:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)


if __name__ == "__main__":
    main()
