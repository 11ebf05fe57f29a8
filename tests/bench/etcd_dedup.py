#!/usr/bin/env python3
"""Measure what each hourly etcd snapshot adds to a lifeboat repository.

Starts a real etcd (Debian's `etcd-server`) on free loopback ports, loads it
with KEYS keys of 2-3 KB values (25,000 keys make about 100 MB of database) in batched
transactions, and backs it up once into one fresh repository per page chunk
size (`lifeboat init --page-chunk-kib N`). Then, ROUNDS times — one round
standing for one hour between snapshots:

  1. rewrite CHANGE (default 1 %) of the keys, chosen at random;
  2. compact the keyspace to the current revision (physically), as the
     Kubernetes API server does every 5 minutes;
  3. back the same etcd up into every repository with
     `lifeboatd run --config ... etcd --json`.

For each backup it records `summary.bytes_added` (bytes of chunks the
repository did not have yet, before compression), `summary.bytes_stored`
(the same compressed and encrypted) and the growth of the repository folder
(`du -sb`, which adds packs' headers, the index, the tree and the snapshot
object), each as a share of the database size that etcd reports. The
target is at most 10 % of the database per hourly snapshot. It also counts
the objects each backup adds (one PUT each, R2's class A) and, with
--interval-minutes, what a day of snapshots at that rate adds.

Usage (from the repository root, after `cargo build --release --bins`):

    python3 tests/bench/etcd_dedup.py                      # 25k keys, 5 rounds, 4/8/16 KiB
    python3 tests/bench/etcd_dedup.py --incompressible     # values like encrypted Secrets
    python3 tests/bench/etcd_dedup.py --keys 3000 --rounds 2   # quick check
    python3 tests/bench/etcd_dedup.py --chunks 16 --change 0.0025 --rounds 12 --interval-minutes 15
                                       # a 15-minute schedule: a day's storage and PUTs

Only the standard library is used; etcd is driven through its JSON gateway
(`/v3/kv/txn`, `/v3/kv/compaction`, `/v3/maintenance/status`). Results are
printed as a markdown table and, with --out FILE, written as JSON. The work folder (default: a new folder
under /tmp) is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Etcd:
    """A throw-away etcd member and a JSON-gateway client for it."""

    def __init__(self, work: Path):
        binary = shutil.which("etcd")
        if not binary:
            sys.exit("etcd not found; install it with: apt-get install -y etcd-server etcd-client")
        self.port = free_port()
        peer = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.log = open(work / "etcd.log", "wb")
        self.process = subprocess.Popen(
            [
                binary,
                "--name=bench",
                f"--data-dir={work / 'etcd-data'}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bench={peer_url}",
                "--quota-backend-bytes=4294967296",
                "--logger=zap",
                "--log-level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while True:
            try:
                self.status()
                return
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    sys.exit(f"etcd did not start; see {work / 'etcd.log'}")
                time.sleep(0.2)

    def call(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def status(self) -> dict:
        return self.call("/v3/maintenance/status", {})

    def db_size(self) -> int:
        status = self.status()
        return int(status.get("dbSize", status.get("db_size", 0)))

    def revision(self) -> int:
        return int(self.status()["header"]["revision"])

    def put_many(self, items: list[tuple[bytes, bytes]], batch: int = 100) -> None:
        for start in range(0, len(items), batch):
            ops = [
                {"request_put": {"key": b64(k), "value": b64(v)}}
                for k, v in items[start : start + batch]
            ]
            self.call("/v3/kv/txn", {"success": ops})

    def compact(self) -> None:
        self.call("/v3/kv/compaction", {"revision": str(self.revision()), "physical": True})

    def count(self) -> int:
        answer = self.call(
            "/v3/kv/range", {"key": b64(b"\0"), "range_end": b64(b"\0"), "count_only": True}
        )
        return int(answer.get("count", 0))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Values:
    """Deterministic 2-3 KB values: text from a word pool (compressible about
    like Kubernetes objects), each with a unique header."""

    WORDS = (
        "apiVersion kind metadata name namespace labels annotations spec "
        "template containers image ports env value resources limits requests "
        "cpu memory status conditions type reason message lastTransitionTime "
        "ownerReferences uid resourceVersion generation selector matchLabels "
        "app tier frontend backend database volumeMounts mountPath configMap"
    ).split()

    def __init__(self, seed: int, incompressible: bool = False):
        self.rng = random.Random(seed)
        self.incompressible = incompressible
        pool = []
        size = 0
        while size < 4 * MIB:
            word = self.rng.choice(self.WORDS)
            if self.rng.random() < 0.3:
                word = f"{word}-{self.rng.getrandbits(40):010x}"
            pool.append(word)
            size += len(word) + 1
        self.pool = " ".join(pool).encode()

    def make(self, key: bytes, version: int) -> bytes:
        length = self.rng.randint(2048, 3072)
        start = self.rng.randrange(0, len(self.pool) - length)
        head = b"%s v%d " % (key, version)
        if self.incompressible:
            return (head + self.rng.randbytes(length))[:length]
        return (head + self.pool[start : start + length])[:length]


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stderr}")
    return result


class Repository:
    """One lifeboat repository with a fixed page chunk size, and its config."""

    def __init__(self, work: Path, bins: Path, kib: int, etcd_url: str, pack_mib: int):
        self.kib = kib
        self.bins = bins
        self.dir = work / f"repo-{kib}k"
        self.config = work / f"lifeboat-{kib}k.toml"
        keys = work / f"keys-{kib}k"
        keys.mkdir()
        init = run(
            [
                str(bins / "lifeboat"),
                "init",
                "-r",
                str(self.dir),
                "--restore-identity",
                str(keys / "restore.key"),
                "--service-identity",
                str(keys / "service.key"),
                "--page-chunk-kib",
                str(kib),
                "--pack-size-mib",
                str(pack_mib),
                "--json",
            ]
        )
        recipients = json.loads(init.stdout)["restore_recipients"]
        self.config.write_text(
            f'state_dir = "{work / f"state-{kib}k"}"\n\n'
            "[repository]\n"
            f'url = "{self.dir}"\n'
            f'service_identity = "{keys / "service.key"}"\n'
            f"recipients = {json.dumps(recipients)}\n\n"
            "[[job]]\n"
            'name = "etcd"\n'
            f'source = {{ kind = "etcd", endpoints = ["{etcd_url}"] }}\n'
        )

    def objects(self) -> int:
        """Files in the repository folder: one object (one PUT) each."""
        return sum(len(files) for _, _, files in os.walk(self.dir))

    def backup(self) -> dict:
        before = du(self.dir)
        objects_before = self.objects()
        started = time.time()
        report = json.loads(
            run([str(self.bins / "lifeboatd"), "run", "--config", str(self.config), "etcd", "--json"]).stdout
        )
        seconds = time.time() - started
        summary = report["summary"]
        return {
            "seconds": round(seconds, 2),
            "snapshot_bytes": summary["bytes_total"],
            "blobs_added": summary["blobs_added"],
            "bytes_added": summary["bytes_added"],
            "bytes_stored": summary["bytes_stored"],
            "repo_growth": du(self.dir) - before,
            "objects_added": self.objects() - objects_before,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--change", type=float, default=0.01, help="share of keys rewritten per round")
    parser.add_argument("--chunks", default="4,8,16", help="page chunk sizes in KiB, comma-separated")
    parser.add_argument("--pack-size-mib", type=int, default=16, help="lifeboat init --pack-size-mib")
    parser.add_argument("--bin-dir", default="target/release", help="where lifeboat and lifeboatd are")
    parser.add_argument("--work", help="work folder (default: a new one under /tmp)")
    parser.add_argument("--out", help="write the raw figures to this JSON file")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--interval-minutes",
        type=int,
        default=60,
        help="the schedule one round stands for; the day's cost is extrapolated from it",
    )
    parser.add_argument(
        "--incompressible",
        action="store_true",
        help="random values (like Secrets encrypted at rest) instead of Kubernetes-like text",
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    bins = Path(args.bin_dir).resolve()
    for name in ("lifeboat", "lifeboatd"):
        if not (bins / name).is_file():
            sys.exit(f"{bins / name} missing; run `cargo build --release --bins` first")
    work = Path(args.work or tempfile.mkdtemp(prefix="lifeboat-etcd-dedup-"))
    work.mkdir(parents=True, exist_ok=True)
    etcd = Etcd(work)
    results: dict = {
        "keys": args.keys,
        "change": args.change,
        "incompressible": args.incompressible,
        "rounds": [],
        "chunks": {},
    }
    try:
        values = Values(args.seed, args.incompressible)
        keys = [b"/registry/bench/%06d" % i for i in range(args.keys)]
        started = time.time()
        etcd.put_many([(k, values.make(k, 0)) for k in keys])
        print(
            f"loaded {args.keys} keys in {time.time() - started:.0f} s; "
            f"db {etcd.db_size() / MIB:.1f} MiB",
            file=sys.stderr,
        )
        repos = [Repository(work, bins, int(k), etcd.url, args.pack_size_mib) for k in args.chunks.split(",")]
        changed = max(1, round(args.keys * args.change))
        rng = random.Random(args.seed + 1)
        for round_no in range(args.rounds + 1):
            if round_no > 0:
                chosen = rng.sample(keys, changed)
                etcd.put_many([(k, values.make(k, round_no)) for k in chosen])
                etcd.compact()
            db = etcd.db_size()
            entry = {"round": round_no, "db_size": db, "revision": etcd.revision(), "key_count": etcd.count()}
            for repo in repos:
                figures = repo.backup()
                figures["db_size"] = db
                results["chunks"].setdefault(str(repo.kib), []).append(figures)
                print(
                    f"round {round_no} {repo.kib:>2} KiB: db {db / MIB:.1f} MiB, "
                    f"stored {figures['bytes_stored'] / MIB:.2f} MiB "
                    f"({100 * figures['bytes_stored'] / db:.1f} %), "
                    f"repo +{figures['repo_growth'] / MIB:.2f} MiB "
                    f"({100 * figures['repo_growth'] / db:.1f} %), {figures['seconds']} s",
                    file=sys.stderr,
                )
            results["rounds"].append(entry)
    finally:
        etcd.stop()

    kind = "random" if args.incompressible else "text"
    print(
        f"\n{args.keys} keys ({kind} values), {100 * args.change:g} % rewritten and compacted "
        f"per round, {args.rounds} rounds\n"
    )
    print(
        "| page chunk | chunks per snapshot | first backup stored | new chunks per later snapshot (uncompressed): median (max) "
        "| stored per later snapshot: median (max) | repo growth per later snapshot: median (max) | s per backup |"
    )
    print("|---|---|---|---|---|---|---|")
    for kib, rows in results["chunks"].items():
        first, hourly = rows[0], rows[1:]

        def share(field: str) -> str:
            shares = [100 * r[field] / r["db_size"] for r in hourly]
            if not shares:
                return "-"
            med = statistics.median(shares)
            avg_bytes = statistics.median(r[field] for r in hourly)
            return f"{avg_bytes / MIB:.2f} MiB = {med:.1f} % ({max(shares):.1f} %)"

        chunks = first["snapshot_bytes"] // (int(kib) * 1024) + 1
        seconds = statistics.median(r["seconds"] for r in hourly or rows)
        print(
            f"| {kib} KiB | {chunks} | {first['bytes_stored'] / MIB:.1f} MiB of {first['db_size'] / MIB:.1f} MiB "
            f"| {share('bytes_added')} | {share('bytes_stored')} | {share('repo_growth')} | {seconds:.1f} |"
        )
    per_day = 24 * 60 // max(1, args.interval_minutes)
    print(
        f"\nA day at one snapshot every {args.interval_minutes} min ({per_day} snapshots), "
        "from the median snapshot after the first; objects are PUTs (R2 class A), "
        "kept for as long as the retention keeps the snapshots:\n"
    )
    print("| page chunk | repo growth per day | objects (PUTs) per snapshot | PUTs per day |")
    print("|---|---|---|---|")
    for kib, rows in results["chunks"].items():
        later = rows[1:] or rows
        growth = statistics.median(r["repo_growth"] for r in later)
        objects = statistics.median(r["objects_added"] for r in later)
        print(
            f"| {kib} KiB | {per_day * growth / MIB:.0f} MiB | {objects:g} | {per_day * objects:.0f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"\nraw figures: {args.out}", file=sys.stderr)
    if args.keep:
        print(f"work folder kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
