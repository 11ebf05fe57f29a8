#!/usr/bin/env python3
"""How long listing the snapshots of a repository takes from a distant S3.

Backs a small folder up COUNT times straight into a Garage server on
loopback, then times `lifeboat snapshots` (one listing, every snapshot
object read) through the delaying proxy of `distant_s3.py` — DELAY ms
before each answer, roughly R2 from a home — and reports the median wall
time of REPS listings and the requests each made. With the 15-minute
schedules a repository holds well over a thousand snapshots, and a
volumes run with movers lists several times.

Usage (from the repository root, after `cargo build --release --bins`):

    python3 tests/bench/snapshot_listing.py                    # 200 snapshots, 40 ms
    python3 tests/bench/snapshot_listing.py --bin-dir OTHER    # another build, same setup

Only the standard library is used, plus `garage` on the PATH.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distant_s3 import BUCKET, REGION, DelayProxy, Garage  # noqa: E402


def run(command: list[str], env: dict) -> str:
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="snapshots in the repository")
    parser.add_argument("--delay-ms", type=float, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--bin-dir", default="target/release")
    args = parser.parse_args()
    bins = Path(args.bin_dir).resolve()
    work = Path(tempfile.mkdtemp(prefix="lifeboat-listing-"))
    garage = Garage(work)
    try:
        env = {"PATH": "/usr/bin:/bin", "RUST_LOG": "warn", **garage.env()}
        repo = f"s3://{BUCKET}/listing"
        s3 = ["--s3-endpoint", f"http://127.0.0.1:{garage.port}", "--s3-region", REGION, "--s3-path-style"]
        keys = work / "keys"
        keys.mkdir()
        init = json.loads(run([str(bins / "lifeboat"), "init", "--repo", repo, *s3,
                               "--restore-identity", str(keys / "restore.key"),
                               "--service-identity", str(keys / "service.key"), "--json"], env))
        data = work / "data"
        data.mkdir()
        config = work / "lifeboat.toml"
        config.write_text(
            f'state_dir = "{work / "state"}"\n\n[repository]\nurl = "{repo}"\n'
            f'service_identity = "{keys / "service.key"}"\n'
            f'recipients = {json.dumps(init["restore_recipients"])}\n'
            f's3 = {{ endpoint = "http://127.0.0.1:{garage.port}", region = "{REGION}", path_style = true }}\n\n'
            f'[[job]]\nname = "bench"\nsource = {{ kind = "directory", paths = ["{data}"] }}\n')
        for i in range(args.count):
            (data / "file").write_text(f"version {i}\n")
            run([str(bins / "lifeboatd"), "run", "--config", str(config), "bench", "--json"], env)
        proxy = DelayProxy(garage.port)
        proxy.configure(args.delay_ms, 0)
        through = ["--s3-endpoint", f"http://127.0.0.1:{proxy.port}", "--s3-region", REGION, "--s3-path-style"]
        times, requests = [], []
        for _ in range(args.reps):
            before = proxy.answers
            started = time.monotonic()
            listed = json.loads(run([str(bins / "lifeboat"), "snapshots", "--repo", repo, *through,
                                     "-i", str(keys / "service.key"), "--json"], env))
            times.append(time.monotonic() - started)
            requests.append(proxy.answers - before)
            if len(listed) != args.count:
                sys.exit(f"listed {len(listed)} snapshots, expected {args.count}")
        print(f"| binaries | snapshots | delay | listing: median of {args.reps} | requests |")
        print("|---|---|---|---|---|")
        print(f"| {bins} | {args.count} | {args.delay_ms:g} ms | {statistics.median(times):.2f} s "
              f"| {statistics.median(requests):g} |")
    finally:
        garage.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
