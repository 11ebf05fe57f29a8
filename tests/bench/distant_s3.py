#!/usr/bin/env python3
"""Restore from a distant S3: lifeboat against restic through a delaying proxy.

Starts a Garage server on loopback and, in front of it, a TCP proxy of this
script's own that holds every answer for a fixed delay before its first
byte goes back (40 ms by default: roughly what Cloudflare R2 takes to
answer a request from a home) and can cap the bandwidth of all answers
together. Each tool backs the data sets up straight into Garage, then
restores each of them, fresh and cold (page cache dropped, restic with a new
empty cache, as on a new machine), under these conditions:

  direct       straight to Garage
  proxy        through the proxy, no delay (the proxy's own cost)
  delay        through the proxy, DELAY ms before each answer
  delay+cap    the same, with all answers sharing CAP Mbit/s

Every restore is checked with `diff -r` against its data, and the proxy
counts the requests each restore made. Data sets (seeded,
incompressible, so bytes on the wire equal bytes restored):

  small     SMALL MiB of 16–256 KiB files in nested folders
  large     LARGE MiB as three files
  one-file  one file of HUGE MiB   } the same size, to compare a restore of
  many      HUGE MiB of 1–8 MiB files } one file against one of many

Usage (from the repository root, after `cargo build --release --bins`):

    python3 tests/bench/distant_s3.py                 # default sizes, 1 repetition
    python3 tests/bench/distant_s3.py --small-mib 64 --large-mib 64 --huge-mib 128  # quick

Only the standard library is used, plus `garage`, `restic` and
`/usr/bin/time` on the PATH. Throughput is restored bytes over wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (MIB, Runner, fmt_s, lifeboat_config, log, median,  # noqa: E402
                     verify, write_random)

RESTIC_PASSWORD = "lifeboat-bench"
BUCKET = "bench"
REGION = "garage"
RELAY_PIECE = 1024 * 1024


# --------------------------------------------------------------------------
# The delaying proxy
# --------------------------------------------------------------------------


class DelayProxy:
    """Relays TCP connections to `upstream`. On each connection, the first
    bytes of an answer (upstream bytes after the client spoke) are held for
    `delay` seconds; with `cap_bps`, all answer bytes together leave at
    most that fast. HTTP/1.1 clients send one request at a time on a
    connection, so this is a delay per request."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.delay = 0.0
        self.cap_bps = 0.0
        self.next_free = 0.0
        self.answers = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait()

    def configure(self, delay_ms: float, cap_mbit: float) -> None:
        self.delay, self.cap_bps = delay_ms / 1000, cap_mbit * 1e6 / 8

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _serve(self, client_r, client_w) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        asked = asyncio.Event()
        await asyncio.gather(self._requests(client_r, up_w, asked),
                             self._answers(up_r, client_w, asked), return_exceptions=True)

    async def _requests(self, src, dst, asked: asyncio.Event) -> None:
        try:
            while piece := await src.read(RELAY_PIECE):
                asked.set()
                dst.write(piece)
                await dst.drain()
        finally:
            dst.close()

    async def _answers(self, src, dst, asked: asyncio.Event) -> None:
        try:
            while piece := await src.read(RELAY_PIECE):
                if asked.is_set():
                    asked.clear()
                    self.answers += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                if self.cap_bps:
                    now = self.loop.time()
                    start = max(now, self.next_free)
                    self.next_free = start + len(piece) / self.cap_bps
                    if start > now:
                        await asyncio.sleep(start - now)
                dst.write(piece)
                await dst.drain()
        finally:
            dst.close()


# --------------------------------------------------------------------------
# Garage
# --------------------------------------------------------------------------


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Garage:
    """One Garage node on loopback with a bucket and a key allowed on it."""

    def __init__(self, work: Path):
        self.dir = work / "garage"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.config = self.dir / "garage.toml"
        rpc, self.port, admin = free_port(), free_port(), free_port()
        self.config.write_text(
            f'metadata_dir = "{self.dir}/meta"\ndata_dir = "{self.dir}/data"\n'
            'db_engine = "sqlite"\nreplication_factor = 1\n'
            f'rpc_bind_addr = "127.0.0.1:{rpc}"\nrpc_public_addr = "127.0.0.1:{rpc}"\n'
            f'rpc_secret = "{os.urandom(32).hex()}"\n'
            f'[s3_api]\ns3_region = "{REGION}"\napi_bind_addr = "127.0.0.1:{self.port}"\n'
            f'[admin]\napi_bind_addr = "127.0.0.1:{admin}"\nadmin_token = "{os.urandom(16).hex()}"\n')
        log_file = open(self.dir / "garage.log", "wb")
        self.process = subprocess.Popen(
            ["garage", "-c", str(self.config), "server"], stdout=log_file, stderr=log_file,
            env={**os.environ, "RUST_LOG": "garage=warn"})
        self._wait(lambda: self.cli("status"))
        node = self.cli("node", "id", "-q").split("@")[0].strip()
        self.cli("layout", "assign", "-z", "dc1", "-c", "20G", node)
        self.cli("layout", "apply", "--version", "1")
        self._wait(self._healthy)
        key = json.loads(self.cli("json-api", "CreateKey", '{"name":"bench"}'))
        self.key_id, self.secret = key["accessKeyId"], key["secretAccessKey"]
        self.cli("bucket", "create", BUCKET)
        self.cli("bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", self.key_id)

    def cli(self, *args: str) -> str:
        out = subprocess.run(["garage", "-c", str(self.config), *args], capture_output=True,
                             text=True, env={**os.environ, "RUST_LOG": "warn"})
        if out.returncode != 0:
            raise RuntimeError(f"garage {' '.join(args)}: {out.stdout}{out.stderr}")
        return out.stdout

    def _healthy(self) -> None:
        status = json.loads(self.cli("json-api", "GetClusterHealth"))["status"]
        if status != "healthy":
            raise RuntimeError(f"garage cluster status {status}")

    @staticmethod
    def _wait(ready) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def env(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_REGION": REGION}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# --------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------


def generate(root: Path, kind: str, size_mib: int, seed: int) -> int:
    """Writes one data set; returns its size in bytes."""
    r = random.Random(f"{seed}-{kind}-{size_mib}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    total, budget, n = 0, size_mib * MIB, 0
    while total < budget:
        if kind == "small":
            size = r.randint(16, 256) * 1024
            path = root / f"d{n % 17:02d}" / f"e{n % 5}" / f"f{n:06d}.bin"
        elif kind == "large":
            size = -(-budget // 3)
            path = root / f"large-{n}.bin"
        elif kind == "one-file":
            size = budget
            path = root / "one.bin"
        else:
            size = r.randint(1, 8) * MIB
            path = root / f"d{n % 8}" / f"f{n:04d}.bin"
        size = min(size, budget - total)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_random(path, r, size, None)
        total, n = total + size, n + 1
    return total


# --------------------------------------------------------------------------
# The tools
# --------------------------------------------------------------------------


class Lifeboat:
    name = "lifeboat"

    def __init__(self, bindir: Path, runner: Runner, work: Path, garage: Garage):
        self.bin, self.daemon = str(bindir / "lifeboat"), str(bindir / "lifeboatd")
        self.runner, self.work, self.garage = runner, work, garage
        self.env = {"RUST_LOG": "warn", **garage.env()}

    def s3_flags(self, port: int) -> list[str]:
        return ["--s3-endpoint", f"http://127.0.0.1:{port}", "--s3-region", REGION,
                "--s3-path-style"]

    def backup(self, name: str, data: Path) -> None:
        repo = f"s3://{BUCKET}/lifeboat-{name}"
        keys = self.work / f"lifeboat-keys-{name}"
        shutil.rmtree(keys, ignore_errors=True)
        keys.mkdir()
        out = self.runner.run(f"lifeboat-init-{name}", [
            self.bin, "init", "--repo", repo, *self.s3_flags(self.garage.port),
            "--restore-identity", str(keys / "restore.key"),
            "--service-identity", str(keys / "service.key"), "--json"], self.env, timed=False)
        recipients = json.loads(out["stdout"])["restore_recipients"]
        config = keys / "lifeboat.toml"
        s3 = (f's3 = {{ endpoint = "http://127.0.0.1:{self.garage.port}", region = "{REGION}", '
              "path_style = true }\n")
        config.write_text(lifeboat_config(keys / "state", repo, keys / "service.key", recipients,
                                          data, s3))
        self.runner.run(f"lifeboat-backup-{name}", [self.daemon, "run", "--config", str(config),
                                                      "bench", "--json"], self.env, timed=False)

    def restore(self, name: str, data: Path, port: int, target: Path) -> dict:
        keys = self.work / f"lifeboat-keys-{name}"
        return self.runner.run(f"lifeboat-restore-{name}", [
            self.bin, "restore", "-r", f"s3://{BUCKET}/lifeboat-{name}", *self.s3_flags(port),
            "-i", str(keys / "restore.key"), f"latest:{data}", "--target", str(target)], self.env)


class Restic:
    name = "restic"

    def __init__(self, runner: Runner, work: Path, garage: Garage):
        self.runner, self.work = runner, work
        self.env = {"RESTIC_PASSWORD": RESTIC_PASSWORD, **garage.env()}
        self.garage = garage

    def repo(self, name: str, port: int) -> list[str]:
        return ["--repo", f"s3:http://127.0.0.1:{port}/{BUCKET}/restic-{name}",
                "-o", f"s3.region={REGION}"]

    def backup(self, name: str, data: Path) -> None:
        cache = self.work / "restic-cache-backup"
        self.runner.run(f"restic-init-{name}", ["restic", *self.repo(name, self.garage.port),
                                                "--cache-dir", str(cache), "init"],
                        self.env, timed=False)
        self.runner.run(f"restic-backup-{name}", ["restic", *self.repo(name, self.garage.port),
                                                  "--cache-dir", str(cache), "backup", "-q",
                                                  str(data)], self.env, timed=False)

    def restore(self, name: str, data: Path, port: int, target: Path) -> dict:
        cache = self.work / "restic-cache-restore"
        shutil.rmtree(cache, ignore_errors=True)
        result = self.runner.run(f"restic-restore-{name}", [
            "restic", *self.repo(name, port), "--cache-dir", str(cache), "restore", "latest",
            "--target", str(target)], self.env)
        # restic recreates the absolute path below the target.
        shutil.move(str(target / str(data).lstrip("/")), str(target.with_name(target.name + "-x")))
        shutil.rmtree(target)
        shutil.move(str(target.with_name(target.name + "-x")), str(target))
        return result


# --------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_bins = Path("target/release")
    p.add_argument("--bin-dir", type=Path, default=default_bins)
    p.add_argument("--small-mib", type=int, default=400)
    p.add_argument("--large-mib", type=int, default=300)
    p.add_argument("--huge-mib", type=int, default=2048)
    p.add_argument("--delay-ms", type=float, default=40)
    p.add_argument("--cap-mbit", type=float, default=400)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json-out", type=Path)
    p.add_argument("--markdown-out", type=Path)
    args = p.parse_args()
    for program in ("garage", "restic", "/usr/bin/time"):
        if not shutil.which(program):
            sys.exit(f"{program} is missing (see README: tests/run installs garage and restic)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lifeboat-distant-"))
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, drop_caches=True)
    bins = work / "bin"
    bins.mkdir(exist_ok=True)
    for name in ("lifeboat", "lifeboatd"):
        shutil.copy2(args.bin_dir / name, bins / name)

    sets = {"small": args.small_mib, "large": args.large_mib,
            "one-file": args.huge_mib, "many": args.huge_mib}
    data, sizes = {}, {}
    for name, mib in sets.items():
        data[name] = work / "data" / name
        log(f"generating {name} ({mib} MiB)")
        sizes[name] = generate(data[name], name, mib, args.seed)

    garage = Garage(work)
    proxy = DelayProxy(garage.port)
    tools = [Lifeboat(bins, runner, work, garage), Restic(runner, work, garage)]
    conditions = [("direct", None, 0, 0), ("proxy", proxy, 0, 0),
                  ("delay", proxy, args.delay_ms, 0), ("delay+cap", proxy, args.delay_ms, args.cap_mbit)]
    results = []
    try:
        for tool in tools:
            for name in sets:
                log(f"{tool.name}: backing up {name}")
                tool.backup(name, data[name])
        for rep in range(args.reps):
            order = tools if rep % 2 == 0 else tools[::-1]
            for cond, via, delay, cap in conditions:
                if via is not None:
                    via.configure(delay, cap)
                port = via.port if via is not None else garage.port
                for name in sets:
                    if cap and name in ("one-file", "many"):
                        continue  # the capped run measures the uplink, not the tool
                    for tool in order:
                        target = work / f"restore-{tool.name}"
                        shutil.rmtree(target, ignore_errors=True)
                        log(f"rep {rep + 1}: {tool.name} restores {name} ({cond})")
                        answers = via.answers if via is not None else 0
                        measured = tool.restore(name, data[name], port, target)
                        requests = via.answers - answers if via is not None else None
                        verify(data[name], target)
                        shutil.rmtree(target)
                        results.append({"rep": rep + 1, "tool": tool.name, "set": name,
                                        "condition": cond, "bytes": sizes[name],
                                        "requests": requests,
                                        **{k: measured[k] for k in ("wall", "cpu", "rss_kib")}})
    finally:
        garage.stop()

    text = report(results, args, sets)
    print(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))
    if args.markdown_out:
        args.markdown_out.write_text(text)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: list[dict], args, sets: dict) -> str:
    def cell(tool, name, cond):
        rows = [r for r in results if (r["tool"], r["set"], r["condition"]) == (tool, name, cond)]
        if not rows:
            return None
        wall = median([r["wall"] for r in rows])
        return {"wall": wall, "mbps": rows[0]["bytes"] / MIB / wall,
                "rss": median([r["rss_kib"] for r in rows]) / 1024,
                "requests": rows[0]["requests"] if rows[0]["requests"] is not None else "-"}

    lines = [f"Restore from Garage, {args.reps} repetition(s), medians; delay {args.delay_ms:g} ms "
             f"before each answer, cap {args.cap_mbit:g} Mbit/s for all answers together.", "",
             "| data set | condition | lifeboat s | lifeboat MiB/s | restic s | restic MiB/s "
             "| throughput lifeboat/restic | lifeboat vs its proxy time | lifeboat RSS MiB | restic RSS MiB "
             "| requests lifeboat / restic |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in sets:
        base = cell("lifeboat", name, "proxy")
        for cond in ("direct", "proxy", "delay", "delay+cap"):
            lb, rs = cell("lifeboat", name, cond), cell("restic", name, cond)
            if not lb or not rs:
                continue
            own = f"{lb['wall'] / base['wall']:.2f}x" if base else "-"
            lines.append(f"| {name} ({sets[name]} MiB) | {cond} | {fmt_s(lb['wall'])} | {lb['mbps']:.0f} "
                         f"| {fmt_s(rs['wall'])} | {rs['mbps']:.0f} | {lb['mbps'] / rs['mbps']:.2f}x "
                         f"| {own} | {lb['rss']:.0f} | {rs['rss']:.0f} | {lb['requests']} / {rs['requests']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
