"""Smoke tests of the kvmap-bench command line (kvmap.bench).

Only presence and sanity of the figures are checked, never their values.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from kvmap import bench

ALL_BACKENDS = list(bench.BACKENDS)
# procs: one run of 1 reader process, a short window (its readers' counts: test_procs_*)
TINY = ["-n", "300", "--repeat", "1", "--growth-mib", "8", "--procs-readers", "1", "--procs-seconds", "0.05",
        "--quiet"]

RESULT_KEYS = {"workload", "store", "throughput", "latency_us", "faults", "peak_rss", "file_size",
               "allocated", "mapped_rss", "extra"}
MACHINE_KEYS = {"kernel", "python", "filesystem", "page_size", "cpu_count", "kvmap_version",
                "lmdb_version", "sqlite_version"}
PARAM_KEYS = {"backends", "peers", "workloads", "n", "key_size", "value_size", "repeat", "seed",
              "growth_mib", "procs_readers", "procs_seconds", "space_mib", "space_txns"}
LATENCY_WORKLOADS = {"get_cold", "range", "procs", "txn_nosync", "txn_sync"}
PROCS_EXTRA = {"readers", "gets_per_snapshot", "window_s", "latency_per", "reads_per_s_per_reader",
               "writer_commits", "writer_commits_per_s", "writer_commit_us", "reader_cpu_us_per_get",
               "writer_cpu_us_per_commit", "puts_per_txn"}


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_procs(r, readers):
    """A procs result of `readers` reader processes has its figures."""
    e = r["extra"]
    assert PROCS_EXTRA <= set(e), (r["store"], set(e))
    assert e["readers"] == readers
    assert len(e["reads_per_s_per_reader"]) == readers
    assert all(_positive(x) for x in e["reads_per_s_per_reader"])
    assert e["writer_commits"] >= 1
    for k in ("writer_commits_per_s", "reader_cpu_us_per_get", "writer_cpu_us_per_commit"):
        assert _positive(e[k]), (k, e)
    for lat in (r["latency_us"], e["writer_commit_us"]):
        assert _positive(lat["p50"]) and _positive(lat["p99"]) and lat["p50"] <= lat["p99"]
    assert r["faults"]["minor"] >= 0 and _positive(r["peak_rss"])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One tiny run over every kvmap backend and every default workload (all
    but space: test_space_*), with --json."""
    d = tmp_path_factory.mktemp("bench")
    out = d / "out.json"
    rc = bench.main(TINY + ["--backends", ",".join(ALL_BACKENDS), "--dir", str(d / "stores"),
                            "--json", str(out)])
    return rc, json.loads(out.read_text()), d


def test_json_has_every_workload_and_backend(full_run):
    rc, doc, d = full_run
    assert rc == 0
    assert doc["schema"] == 1
    assert MACHINE_KEYS <= set(doc["machine"])
    assert doc["machine"]["page_size"] > 0 and doc["machine"]["cpu_count"] >= 1
    assert doc["machine"]["filesystem"] and doc["machine"]["filesystem"] != "unknown"
    assert PARAM_KEYS <= set(doc["params"])
    assert doc["params"]["backends"] == ALL_BACKENDS
    assert doc["params"]["workloads"] == bench.DEFAULT_WORKLOADS
    assert bench.DEFAULT_WORKLOADS == [w for w in bench.WORKLOADS if w != "space"]
    assert doc["params"]["procs_readers"] == [1]
    results = {(r["workload"], r["store"]): r for r in doc["results"]}
    assert len(results) == len(doc["results"])   # procs: one reader count, one result
    for w in bench.DEFAULT_WORKLOADS:
        for b in ALL_BACKENDS:
            r = results.get((w, b))
            assert r is not None, f"missing {w} x {b}"
            assert RESULT_KEYS <= set(r), (w, b, set(r))
            assert "error" not in r, r.get("error")
            tp = r["throughput"]
            assert tp["unit"] == bench.UNITS[w]
            for k in ("median", "min", "max"):
                assert _positive(tp[k]), (w, b, tp)
            assert tp["min"] <= tp["median"] <= tp["max"]
            if w in LATENCY_WORKLOADS:
                lat = r["latency_us"]
                assert _positive(lat["p50"]) and _positive(lat["p99"]) and lat["p50"] <= lat["p99"]
            assert r["faults"]["minor"] >= 0 and r["faults"]["major"] >= 0
            assert _positive(r["peak_rss"])
            assert _positive(r["file_size"]) and r["allocated"] >= 0 and r["mapped_rss"] >= 0
            assert "syscalls" in r["extra"]
    for b in ALL_BACKENDS:
        g = results["growth", b]["extra"]
        assert g["growth_steps"] >= 1 and g["steps"]
        assert g["first_read_minflt"] >= 0 and g["reread_minflt"] >= 0
        assert results["txn_sync", b]["extra"]["fdatasync_per_commit"] > 0
        assert _positive(results["mixed", b]["extra"]["writer_commits_per_s"])
        _check_procs(results["procs", b], 1)
        ch = results["churn", b]["extra"]
        assert _positive(ch["before"]["file_size"]) and _positive(ch["after"]["rss"])
        # every get read through the mapping: some of it is resident after
        assert (results["get", b]["mapped_rss"] > 0) == (b != "pread"), (b, results["get", b]["mapped_rss"])
    # the temporary stores are removed
    assert not os.listdir(d / "stores")


def test_table_renders(tmp_path, capsys):
    rc = bench.main(TINY + ["--backends", "mmap:reserve,pread", "--dir", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    for w in bench.DEFAULT_WORKLOADS:
        assert w in out
    for row in ("procs 1r ", "procs 1r/reader ", "procs 1r:writer ", "procs 1r p50/p99 us per snapshot",
                "procs 1r:writer p50/p99 us per commit", "after the workload: file / allocated / mapped RSS",
                "  growth "):
        assert row in out, row
    assert "mmap:reserve" in out and "pread" in out
    assert "*" in out
    assert "best kvmap / " not in out  # no peers, no ratio columns


def test_plot_writes_png(tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    png = tmp_path / "out.png"
    rc = bench.main(TINY + ["--backends", "mmap:reserve,mmap:remap", "--workloads", "get,growth",
                            "--dir", str(tmp_path), "--plot", str(png)])
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    rc = bench.main(TINY + ["--workloads", "get", "--plot", str(tmp_path / "x.png")])
    assert rc == 2
    assert "matplotlib" in capsys.readouterr().err


def test_peers_add_rows(tmp_path, capsys):
    if importlib.util.find_spec("lmdb") is None:
        pytest.skip("py-lmdb not installed (pip install lmdb)")
    out = tmp_path / "peers.json"
    rc = bench.main(TINY + ["--backends", "mmap:reserve", "--peers", "lmdb,sqlite3",
                            "--dir", str(tmp_path), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "best kvmap / lmdb" in text and "best kvmap / sqlite3" in text
    doc = json.loads(out.read_text())
    assert doc["params"]["peers"] == ["lmdb", "sqlite3"]
    stores = {(r["workload"], r["store"]) for r in doc["results"] if "error" not in r}
    for peer in ("lmdb", "sqlite3"):
        for w in bench.DEFAULT_WORKLOADS:
            if w in bench.KVMAP_ONLY:
                assert (w, peer) not in stores
            else:
                assert (w, peer) in stores, (w, peer)
    for r in doc["results"]:
        assert _positive(r["throughput"]["median"]), r


def test_procs_reader_counts_with_lmdb(tmp_path, capsys):
    """procs runs once per reader count, for kvmap and py-lmdb alike, each
    process with its own handle."""
    if importlib.util.find_spec("lmdb") is None:
        pytest.skip("py-lmdb not installed (pip install lmdb)")
    out = tmp_path / "procs.json"
    rc = bench.main(TINY + ["--workloads", "procs", "--procs-readers", "1,2", "--backends", "mmap:reserve",
                            "--peers", "lmdb", "--dir", str(tmp_path / "stores"), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for row in ("procs 1r ", "procs 2r ", "procs 2r/reader ", "procs 2r:writer "):
        assert row in text, row
    assert "best kvmap / lmdb" in text
    doc = json.loads(out.read_text())
    assert doc["params"]["procs_readers"] == [1, 2] and doc["params"]["procs_seconds"] == 0.05
    got = {(r["store"], r["extra"]["readers"]): r for r in doc["results"]}
    assert sorted(got) == [("lmdb", 1), ("lmdb", 2), ("mmap:reserve", 1), ("mmap:reserve", 2)]
    for (store, readers), r in got.items():
        assert r["workload"] == "procs" and "error" not in r, r.get("error")
        assert r["throughput"]["unit"] == "get/s" and _positive(r["throughput"]["median"])
        _check_procs(r, readers)
    assert "syscalls" in got["mmap:reserve", 2]["extra"] and "syscalls" not in got["lmdb", 2]["extra"]


def test_procs_without_lmdb(tmp_path, monkeypatch, capsys):
    """Peers are optional: without py-lmdb, --peers lmdb is skipped and
    procs runs on kvmap alone."""
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import raises ImportError
    out = tmp_path / "procs.json"
    rc = bench.main(TINY + ["--workloads", "procs", "--backends", "pread", "--peers", "lmdb",
                            "--dir", str(tmp_path), "--json", str(out)])
    assert rc == 0
    assert "peer lmdb skipped" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert [(r["store"], r["workload"]) for r in doc["results"]] == [("pread", "procs")]
    _check_procs(doc["results"][0], 1)


@pytest.mark.parametrize("readers", ["0", "1,x", ""])
def test_procs_readers_must_be_positive(readers):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--procs-readers", readers])
    assert exc.value.code == 2


def test_bad_option_and_module_entry(tmp_path):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--backends", "mmap:nope"])
    assert exc.value.code == 2
    p = subprocess.run([sys.executable, "-m", "kvmap.bench", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "--growth-mib" in p.stdout


SPACE_FIGURES = {"file_size", "allocated", "mapped_rss", "rss"}


def test_space_workload_reports_both_cases(tmp_path, capsys):
    """space at a tiny size, beside the peers: case 1 (90% deleted) and case
    3 (a snapshot held over overwrites) have their figures, in the JSON and
    in the tables."""
    peers = ["sqlite3"] + (["lmdb"] if importlib.util.find_spec("lmdb") else [])
    out = tmp_path / "space.json"
    rc = bench.main(TINY + ["--workloads", "space", "--space-mib", "1", "--space-txns", "50",
                            "--backends", "mmap:reserve,pread", "--peers", ",".join(peers),
                            "--dir", str(tmp_path / "stores"), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for row in ("space ", "del/s", "before: file ", "before: allocated ", "before: mapped RSS ",
                "after: file (fall/deleted)", "after: allocated (fall/deleted)", "after: mapped RSS (fall/deleted)",
                "at the snapshot: file", "held: file (growth/file)", "held: allocated (growth/file)",
                "released, 10 commits: allocated (growth/file)", "after the workload: file / allocated / mapped RSS"):
        assert row in text, row
    doc = json.loads(out.read_text())
    assert doc["params"]["workloads"] == ["space"]
    assert doc["params"]["space_mib"] == 1 and doc["params"]["space_txns"] == 50
    results = {r["store"]: r for r in doc["results"]}
    assert sorted(results) == sorted(["mmap:reserve", "pread"] + peers)
    for store, r in results.items():
        assert r["workload"] == "space" and "error" not in r, (store, r.get("error"))
        assert r["throughput"]["unit"] == "del/s" and _positive(r["throughput"]["median"])
        g, h = r["extra"]["giveback"], r["extra"]["held_snapshot"]
        assert g["entries"] > 0 and g["deleted"] == int(0.9 * g["entries"])
        for figures in (g["before"], g["after"], h["at_snapshot"], h["held"], h["after_release"]):
            assert set(figures) == SPACE_FIGURES, (store, figures)
            assert _positive(figures["file_size"]) and _positive(figures["rss"])
            assert figures["allocated"] >= 0 and figures["mapped_rss"] >= 0
        assert set(g["fall_per_deleted"]) == SPACE_FIGURES
        assert set(h["growth_held"]) == set(h["growth_after_release"]) == SPACE_FIGURES
        assert h["txns"] == 50 and h["keys"] == 10000
        # a held snapshot keeps what it sees: nothing of the file is given back under it
        assert h["held"]["file_size"] >= h["at_snapshot"]["file_size"]
    assert not os.listdir(tmp_path / "stores")


def test_space_option_must_be_positive(capsys):
    assert bench.main(["--workloads", "space", "--space-mib", "0"]) == 2
    assert "--space-mib" in capsys.readouterr().err
