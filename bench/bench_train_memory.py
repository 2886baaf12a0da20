"""Peak memory and wall time of ``recfeast train --no-ablation`` at two data sizes, against an anchor.

Each run is ``/usr/bin/time -v <recfeast> train --data-dir D --repo-path R --no-ablation --out-dir O``
in its own process; peak RSS is time's "Maximum resident set size". ``--anchor`` names another
``recfeast`` executable (e.g. the main branch's ``.venv/bin/recfeast`` in its own checkout) run on the
same data and repository copy, interleaved with ours. The smaller size is a data folder holding only
the ratings of the even user ids (``--half-data``: every other file linked from the full folder),
so the split dates and the tables stay those of the full data and only the labelled rows halve.

Needs a materialized repository (``recfeast materialize``); it is copied per executable (train adds
an MLflow run to its repository), never written.
Run: .venv/bin/python -m bench.bench_train_memory --data-dir ../shared/data/movielens-100k \\
        --repo-path feature_repo [--anchor ../main/.venv/bin/recfeast] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, machine


def half_data(full: Path, out: Path) -> Path:
    """A data folder with the ratings (u.data) of even user ids only; other files linked."""
    out.mkdir(parents=True, exist_ok=True)
    for f in full.iterdir():
        link = out / f.name
        if f.name != "u.data" and not link.exists():
            link.symlink_to(f.resolve())
    with open(full / "u.data") as src, open(out / "u.data", "w") as dst:
        dst.writelines(line for line in src if int(line.split("\t", 1)[0]) % 2 == 0)
    return out


def run(exe: str, data: Path, repo: Path, out: Path) -> dict:
    """One ``/usr/bin/time -v`` train run: peak RSS (GB), wall seconds, rows, test metrics, load."""
    shutil.rmtree(out, ignore_errors=True)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", exe, "train", "--data-dir", str(data), "--repo-path", str(repo),
                        "--no-ablation", "--out-dir", str(out)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{exe} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    m = json.loads((out / "metrics.json").read_text())
    return {"peak_rss_gb": round(rss_kb * 1024 / 1e9, 3), "wall_s": round(wall, 1),
            "rows": m["training_set"]["rows"], "auc": m["test"]["auc"], "ndcg@10": m["test"]["ndcg@10"],
            "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2),
            "out_files_mb": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--repo-path", required=True, type=Path)
    ap.add_argument("--anchor", default=None, help="another recfeast executable (e.g. main's)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--anchor-runs", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-train-memory"))
    args = ap.parse_args()
    ours = str(Path(sys.executable).with_name("recfeast"))
    sizes = {"full": args.data_dir, "half users": half_data(args.data_dir, args.work / "data-half")}
    exes = {"this branch": (ours, args.runs)}
    if args.anchor:
        exes["anchor"] = (args.anchor, args.anchor_runs)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cases": []}
    for label, (exe, runs) in exes.items():
        repo = args.work / f"repo-{label.replace(' ', '-')}"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(args.repo_path, repo, symlinks=True)
        for size, data in sizes.items():
            rs = [run(exe, data, repo, args.work / "out") for _ in range(runs)]
            case = {"exe": label, "size": size, "runs": rs,
                    "median_peak_rss_gb": statistics.median(r["peak_rss_gb"] for r in rs),
                    "median_wall_s": statistics.median(r["wall_s"] for r in rs)}
            results["cases"].append(case)
            print(json.dumps(case), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_memory.json").write_text(json.dumps(results, indent=2))
    print("| executable | size | rows | peak RSS (median) | wall (median) | runs |")
    print("|---|---|--:|--:|--:|--:|")
    for c in results["cases"]:
        print(f"| {c['exe']} | {c['size']} | {c['runs'][0]['rows']:,} | {c['median_peak_rss_gb']:.2f} GB | "
              f"{c['median_wall_s']:.0f} s | {len(c['runs'])} |")


if __name__ == "__main__":
    main()
