#!/usr/bin/env python3
"""The reference homelab's RTO: a full drill from a distant S3 and from a mirror.

Backs up what the reference homelab holds — an etcd of about ETCD MiB
(a real etcd member, keys of 2–3 KB text), VOLUME GiB of volume data (the
mixed data set of compare.py: text, random, small files) and a PostgreSQL
database of about DB GiB (real PostgreSQL, `pgbench -i`) — with
`lifeboatd run` into a Garage server on loopback, lets `lifeboatd serve`
copy the repository into a mirror folder (`[[mirror]]`), then times
`lifeboat drill` of every job, which restores and verifies everything
(volumes restored and hashed, etcd restored and started, the database
restored into a scratch database and its rows counted):

  proxy    from Garage through a proxy that holds each answer DELAY ms and
           caps all answers together at CAP Mbit/s (R2 over a good uplink)
  mirror   from the mirror folder (`--mirror unraid`)

Kubernetes objects are not in it: no API server runs here (the drill of a
`kubernetes` job restores and parses YAML, seconds for ~350 objects).

Usage (from the repository root, after `cargo build --release --bins`):

    python3 tests/bench/homelab_rto.py                            # 20 GiB, 2 GiB, 100 MiB
    python3 tests/bench/homelab_rto.py --volume-gib 1 --db-gib 0.2 --etcd-mib 20   # quick
    python3 tests/bench/homelab_rto.py --image-allocator   # glibc set as in the image

Needs `garage`, `etcd`, PostgreSQL's server programs (Debian's
`postgresql`), `/usr/bin/time`, and disk for the data about three times
over (source, then Garage, mirror and drill scratch; the source is deleted
once backed up). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import MIB, Runner, du_bytes, fmt_s, generate, log  # noqa: E402
from distant_s3 import BUCKET, REGION, DelayProxy, Garage, free_port  # noqa: E402
from etcd_dedup import Etcd, Values  # noqa: E402

PG_PORT_USER = "postgres"
# What deploy/Dockerfile sets for glibc's allocator (--image-allocator).
IMAGE_ALLOCATOR = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576"}


class Postgres:
    """A throw-away PostgreSQL cluster trusting local connections, run as
    the `postgres` user when this script runs as root."""

    def __init__(self, work: Path):
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not versions:
            sys.exit("PostgreSQL is missing: apt-get install -y postgresql")
        self.bin = versions[-1].parent
        self.dir = work / "pg"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] \
            if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self._run([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                   "-A", "trust", "--no-sync"])
        self.log = open(self.dir / "postgres.log", "wb")
        self.process = subprocess.Popen(
            self.as_user + [str(self.bin / "postgres"), "-D", str(self.dir / "data"),
                            "-p", str(self.port), "-k", str(self.dir),
                            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                            "-c", "max_wal_size=4GB"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                              str(self.port)], capture_output=True).returncode != 0:
            if time.time() > deadline:
                sys.exit(f"postgres did not start; see {self.dir / 'postgres.log'}")
            time.sleep(0.2)

    def _run(self, cmd: list[str]) -> str:
        out = subprocess.run(self.as_user + cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stdout}{out.stderr}")
        return out.stdout

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def fill(self, gib: float) -> int:
        """Creates the database `bench` with pgbench tables of about `gib`
        GiB (scale 1 is about 15 MiB); returns its size in bytes."""
        self._run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", "postgres", "bench"])
        scale = max(1, round(gib * 1024 / 15))
        self._run([str(self.bin / "pgbench"), "-i", "-I", "dtGvp", "-q", "-s", str(scale),
                   "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "bench"])
        size = self._run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                          "-U", "postgres", "-Atc", "SELECT pg_database_size('bench')",
                          "bench"])
        return int(size.strip())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def fill_etcd(etcd: Etcd, mib: int, seed: int) -> int:
    """Puts keys until the member's database holds about `mib` MiB."""
    values = Values(seed)
    n = 0
    while etcd.db_size() < mib * MIB:
        keys = [f"/registry/bench/{n + i:08d}".encode() for i in range(1000)]
        etcd.put_many([(k, values.make(k, 0)) for k in keys])
        n += 1000
    return etcd.db_size()


def config_text(work: Path, port: int, recipients: list[str], etcd_url: str, pg: Postgres,
                volumes: Path, mirror: Path) -> str:
    return f"""state_dir = {json.dumps(str(work / "state"))}

[repository]
url = "s3://{BUCKET}/homelab"
service_identity = {json.dumps(str(work / "keys" / "service.key"))}
recipients = {json.dumps(recipients)}
s3 = {{ endpoint = "http://127.0.0.1:{port}", region = "{REGION}", path_style = true }}

[[mirror]]
name = "unraid"
url = {json.dumps(str(mirror))}
schedule = "0 0 0 1 1 *"

[[job]]
name = "etcd"
source = {{ kind = "etcd", endpoints = [{json.dumps(etcd_url)}] }}

[[job]]
name = "volumes"
source = {{ kind = "directory", paths = [{json.dumps(str(volumes))}] }}

[[job]]
name = "postgres"
source = {{ kind = "postgres", dsn = {json.dumps(pg.dsn("postgres"))}, databases = ["bench"], pg_dump = {json.dumps(str(pg.bin / "pg_dump"))} }}
"""


def sync_mirror(daemon: str, config: Path, env: dict, work: Path) -> float:
    """Runs `lifeboatd serve` until the mirror task has copied everything;
    returns the seconds it took."""
    port = free_port()
    log_file = open(work / "serve.log", "wb")
    process = subprocess.Popen([daemon, "serve", "--config", str(config), "--listen",
                                f"127.0.0.1:{port}"], stdout=log_file, stderr=log_file,
                               env={**os.environ, **env})
    started = time.monotonic()
    try:
        token = None
        while time.monotonic() - started < 60 and token is None:
            try:
                token = (work / "state" / "api-token").read_text().strip()
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except OSError:
                token = None
                time.sleep(0.3)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/jobs/mirror/run",
                                         method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        urllib.request.urlopen(request, timeout=30)
        while True:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                             timeout=30).read().decode()
            done = [line for line in metrics.splitlines()
                    if line.startswith('lifeboat_mirror_pending_objects{mirror="unraid"}')]
            if done and done[0].endswith(" 0"):
                return time.monotonic() - started
            if time.monotonic() - started > 3600:
                raise RuntimeError("the mirror did not catch up within an hour")
            time.sleep(1)
    finally:
        process.terminate()
        process.wait(timeout=120)
        log_file.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin-dir", type=Path, default=Path("target/release"))
    p.add_argument("--volume-gib", type=float, default=20)
    p.add_argument("--db-gib", type=float, default=2)
    p.add_argument("--etcd-mib", type=int, default=100)
    p.add_argument("--delay-ms", type=float, default=40)
    p.add_argument("--cap-mbit", type=float, default=1000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--markdown-out", type=Path)
    p.add_argument("--image-allocator", action="store_true",
                   help="run lifeboat with the container image's glibc allocator settings")
    args = p.parse_args()
    for program in ("garage", "etcd", "/usr/bin/time"):
        if not shutil.which(program):
            sys.exit(f"{program} is missing (see README: tests/run installs them)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lifeboat-rto-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the postgres user reaches its folder below
    runner = Runner(work, drop_caches=True)
    bins = work / "bin"
    bins.mkdir(exist_ok=True)
    for name in ("lifeboat", "lifeboatd"):
        shutil.copy2(args.bin_dir / name, bins / name)
    lifeboat, daemon = str(bins / "lifeboat"), str(bins / "lifeboatd")

    volumes = work / "volumes"
    log(f"generating {args.volume_gib:g} GiB of volume data")
    generate(volumes, int(args.volume_gib * 1024), args.seed)
    volume_bytes = du_bytes(volumes)
    garage = Garage(work)
    proxy = DelayProxy(garage.port)
    proxy.configure(args.delay_ms, args.cap_mbit)
    etcd = Etcd(work)
    pg = Postgres(work)
    results = {}
    try:
        log(f"filling etcd to {args.etcd_mib} MiB")
        etcd_bytes = fill_etcd(etcd, args.etcd_mib, args.seed)
        log(f"filling PostgreSQL with about {args.db_gib:g} GiB (pgbench -i)")
        db_bytes = pg.fill(args.db_gib)
        keys = work / "keys"
        shutil.rmtree(keys, ignore_errors=True)
        keys.mkdir()
        env = {"RUST_LOG": "warn", **garage.env()}
        if args.image_allocator:
            env.update(IMAGE_ALLOCATOR)
        init = runner.run("init", [lifeboat, "init", "--repo", f"s3://{BUCKET}/homelab",
                                   "--s3-endpoint", f"http://127.0.0.1:{garage.port}",
                                   "--s3-region", REGION, "--s3-path-style",
                                   "--restore-identity", str(keys / "restore.key"),
                                   "--service-identity", str(keys / "service.key"), "--json"],
                          env, timed=False)
        recipients = json.loads(init["stdout"])["restore_recipients"]
        mirror = work / "mirror"
        direct = work / "direct.toml"
        direct.write_text(config_text(work, garage.port, recipients, etcd.url, pg, volumes,
                                      mirror))
        via_proxy = work / "proxy.toml"
        via_proxy.write_text(config_text(work, proxy.port, recipients, etcd.url, pg, volumes,
                                         mirror))
        for job in ("etcd", "volumes", "postgres"):
            log(f"backing up {job}")
            measured = runner.run(f"backup-{job}", [daemon, "run", "--config", str(direct), job,
                                                    "--json"], env)
            results[f"backup-{job}"] = measured
        # The drill checks restored data against the snapshots' hashes, not
        # the source: it goes, as in a real disaster, and frees its disk.
        shutil.rmtree(volumes)
        log("copying the repository into the mirror")
        results["mirror-sync-seconds"] = sync_mirror(daemon, direct, env, work)
        pg_flags = ["--pg-url", pg.dsn("postgres"), "--pg-bin", str(pg.bin)]
        for condition, flags in (("proxy", ["--config", str(via_proxy)]),
                                 ("mirror", ["--config", str(direct), "--mirror", "unraid"])):
            scratch = work / "scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            report = work / f"drill-{condition}.json"
            log(f"drilling every job ({condition})")
            answers = proxy.answers
            measured = runner.run(f"drill-{condition}", [
                lifeboat, "drill", *flags, "-i", str(keys / "restore.key"), *pg_flags,
                "--scratch", str(scratch), "--report", str(report)], env)
            measured["requests"] = proxy.answers - answers if condition == "proxy" else None
            measured["report"] = json.loads(report.read_text())
            results[f"drill-{condition}"] = measured
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        pg.stop()
        etcd.stop()
        garage.stop()

    sizes = {"volumes": volume_bytes, "etcd": etcd_bytes, "postgres": db_bytes}
    text = render(results, sizes, args)
    print(text)
    if args.markdown_out:
        args.markdown_out.write_text(text)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def render(results: dict, sizes: dict, args) -> str:
    allocator = "the image's settings" if args.image_allocator else "glibc's defaults"
    lines = [
        f"Data: volumes {sizes['volumes'] / 2**30:.1f} GiB, etcd {sizes['etcd'] / MIB:.0f} MiB, "
        f"PostgreSQL database {sizes['postgres'] / 2**30:.2f} GiB on disk. Proxy: "
        f"{args.delay_ms:g} ms before each answer, {args.cap_mbit:g} Mbit/s for all answers. "
        f"Allocator: {allocator}.",
        "",
        "| step | wall | peak RSS |",
        "|---|---|---|",
    ]
    # The drill's peak RSS from /usr/bin/time is the largest of lifeboat and
    # the etcd, postgres and pg_restore it starts; the report's
    # peak_rss_bytes is lifeboat's own, per job.
    for job in ("etcd", "volumes", "postgres"):
        r = results[f"backup-{job}"]
        lines.append(f"| backup {job} | {fmt_s(r['wall'])} | {r['rss_kib'] / 1024:.0f} MiB |")
    lines.append(f"| mirror sync (lifeboatd serve, start to done) | "
                 f"{fmt_s(results['mirror-sync-seconds'])} | - |")
    for condition in ("proxy", "mirror"):
        r = results[f"drill-{condition}"]
        jobs = {j["job"]: j for j in r["report"]["jobs"]}
        per_job = ", ".join(f"{name} {fmt_s(j['rto_seconds'])}"
                            + (f" at {j['peak_rss_bytes'] / MIB:.0f} MiB"
                               if j.get("peak_rss_bytes") else "")
                            + ("" if not j["failures"] else " FAILED")
                            for name, j in jobs.items())
        requests = f", {r['requests']} requests" if r["requests"] is not None else ""
        lines.append(f"| **drill from {condition}** ({per_job}{requests}) | "
                     f"**{fmt_s(r['wall'])}** | {r['rss_kib'] / 1024:.0f} MiB (any process) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
