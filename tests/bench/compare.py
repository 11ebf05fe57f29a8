#!/usr/bin/env python3
"""Benchmark lifeboat against restic on the same deterministic data set.

Generates a seeded mixed data set (compressible text, incompressible random
files, thousands of small files in nested folders), then for each tool and
each repetition, on a fresh repository:

  1. first backup            (timed)
  2. no-change backup        (timed)
  3. change ~5 % of the data (deterministic: in-place edits in the middle of
     large files, insertions into text files, appends, new files, rewritten
     and deleted small files)
  4. backup after the change (timed)
  5. repository size         (du -sb)
  6. full restore            (timed), verified with `diff -r` against the data;
     with --fresh-restore-fs into a file system made for it (see below)

Every timed step runs under `/usr/bin/time -v` (wall time, CPU time, peak
RSS); the page cache is dropped before each one when possible (root). The
tools alternate which goes first in each repetition. Medians and the ratios
lifeboat/restic are printed as a markdown table; raw figures go to JSON.

Usage (from the repository root, after `cargo build --release --bins`):

    python3 tests/bench/compare.py                  # 1 GiB, 3 repetitions
    python3 tests/bench/compare.py --size-mib 64 --reps 1   # quick check

With --fresh-restore-fs (root, mkfs.ext4, loop devices), each restore goes
into a new ext4 file system (mkfs defaults, so with a journal) in an image
file, mounted on a loop device, as a restore onto a new volume would. On a
file system without a journal (this project's test machines), ext4 skips
inodes deleted in the last minutes when it makes a file, looking each up,
and the benchmark deletes thousands of files before every restore: that
kernel time lands in the restore and moves with how recently the files
went.

Only the standard library is used. The work directory (default: a new
folder under /tmp) is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

MIB = 1024 * 1024
KIB = 1024
# Fixed file times so the generated tree is identical on every run.
BASE_TIME_NS = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
RESTIC_PASSWORD = "lifeboat-bench"
# Bump when generate() or apply_change() change what they write.
GENERATOR_VERSION = 1


# --------------------------------------------------------------------------
# Deterministic data generation
# --------------------------------------------------------------------------

SYLLABLES = [
    "ka", "ro", "mi", "tes", "lan", "dor", "vi", "ne", "qu", "sta", "pel", "or",
    "an", "ux", "tri", "bo", "cel", "fa", "gen", "hy", "io", "jun", "ke", "lo",
    "mar", "nor", "pi", "ra", "sen", "tor", "ul", "ve", "wi", "xe", "yo", "zu",
]
LEVELS = ["DEBUG", "INFO", "INFO", "INFO", "INFO", "WARN", "ERROR"]
METHODS = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"]
STATUSES = [200, 200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 500, 503]
KEYWORDS = ["if", "for", "while", "return", "let", "match", "else", "fn", "const"]


class TextGen:
    """Log lines, JSON lines and source-like text from a seeded PRNG: a
    Zipf-weighted vocabulary, timestamps, counters, hex ids and numbers, so
    that it compresses like real text (three to four times with zstd, not a
    hundred times). Random numbers come in bulk from `randbytes` to keep
    generation fast."""

    def __init__(self, rng: random.Random):
        self.r = rng
        words = set()
        while len(words) < 6000:
            n = rng.choice((1, 2, 2, 3, 3, 4))
            words.add("".join(rng.choice(SYLLABLES) for _ in range(n)))
        self.vocab = sorted(words)
        rng.shuffle(self.vocab)
        weights = [1.0 / (i + 1) ** 1.05 for i in range(len(self.vocab))]
        total = sum(weights)
        # A 64 Ki-entry table: a uniform 16-bit value picks a Zipf-distributed word.
        self.ztab, acc, i = [], 0.0, 0
        for slot in range(65536):
            while i < len(weights) - 1 and (acc + weights[i]) / total * 65536 <= slot:
                acc += weights[i]
                i += 1
            self.ztab.append(self.vocab[i])
        self.services = [f"{w}-svc" for w in self.vocab[:40]]
        self.hosts = [f"node-{i:02d}" for i in range(24)]
        self.clock_ms = 1_704_067_200_000
        self._day, self._date = -1, ""
        self.next = self._values().__next__

    def _values(self):
        while True:
            a = array("I")
            a.frombytes(self.r.randbytes(4 * 65536))
            yield from a

    def _ts(self, step: int) -> str:
        self.clock_ms += step
        day, ms = divmod(self.clock_ms, 86_400_000)
        if day != self._day:
            self._day = day
            self._date = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
        s, ms = divmod(ms, 1000)
        m, s = divmod(s, 60)
        h, m = divmod(m, 60)
        return f"{self._date}T{h:02d}:{m:02d}:{s:02d}.{ms:03d}Z"

    def log(self, size: int) -> bytes:
        nx, z, out, n = self.next, self.ztab, [], 0
        svc, nl, nm, ns = self.services, len(LEVELS), len(METHODS), len(STATUSES)
        while n < size:
            a, b, c = nx(), nx(), nx()
            words = " ".join(z[nx() & 0xFFFF] for _ in range(2 + a % 5))
            line = (
                f"{self._ts(b % 400 + 1)} {LEVELS[a % nl]:5} [{svc[b % 40]}] "
                f"req={nx():08x}{nx():08x} user={z[c & 0xFFFF]}{c % 500} "
                f"{METHODS[b % nm]} /api/v{a % 3 + 1}/{z[nx() & 0xFFFF]}/{z[nx() & 0xFFFF]}/{c % 100000} "
                f"status={STATUSES[c % ns]} latency_ms={nx() % 250000 / 1000:.2f} "
                f"bytes={a % 90000 + 20} msg=\"{words}\"\n"
            )
            out.append(line)
            n += len(line)
        return "".join(out).encode()[:size]

    def jsonl(self, size: int) -> bytes:
        nx, z, out, n = self.next, self.ztab, [], 0
        hosts, nl = self.hosts, len(LEVELS)
        while n < size:
            a, b, c = nx(), nx(), nx()
            tags = ",".join(f'"{z[nx() & 0xFFFF]}"' for _ in range(1 + a % 3))
            self.clock_ms += b % 300 + 1
            line = (
                f'{{"ts":{self.clock_ms},"host":"{hosts[a % 24]}","level":"{LEVELS[b % nl].lower()}",'
                f'"event":"{z[a & 0xFFFF]}_{z[b & 0xFFFF]}","id":{c % 10**9},"trace":"{nx():08x}{nx():08x}{nx():08x}",'
                f'"fields":{{"name":"{z[c & 0xFFFF]} {z[nx() & 0xFFFF]}","count":{nx() % 10000},'
                f'"ratio":{nx() % 10000 / 10000},"tags":[{tags}],"ok":{"true" if c % 10 else "false"}}}}}\n'
            )
            out.append(line)
            n += len(line)
        return "".join(out).encode()[:size]

    def source(self, size: int) -> bytes:
        nx, z, out, n = self.next, self.ztab, [], 0
        w = lambda: z[nx() & 0xFFFF]  # noqa: E731
        while n < size:
            a = nx()
            body = [f"// {w()} {w()} {w()} {w()}\n",
                    f"fn {w()}_{w()}({w()}: &{w().capitalize()}, n: u{(8, 16, 32, 64)[a % 4]}) -> Result<{w().capitalize()}> {{\n"]
            for _ in range(2 + a % 7):
                b = nx()
                depth = "    " * (1 + b % 3)
                kind = (b >> 8) % 4
                if kind == 0:
                    body.append(f"{depth}let {w()} = {w()}.{w()}({b % 1000})?;\n")
                elif kind == 1:
                    body.append(f"{depth}{KEYWORDS[b % 9]} {w()} > {b % 64} {{ {w()}.push({w()}_{w()}); }}\n")
                elif kind == 2:
                    body.append(f"{depth}// {w()} {w()} {w()} {w()} {nx() % 10**6}\n")
                else:
                    body.append(f"{depth}self.{w()}.insert(\"{w()}\", {nx() % 10**6 / 10**6});\n")
            body.append(f"    Ok({w()}::{w()}(n))\n}}\n\n")
            text = "".join(body)
            out.append(text)
            n += len(text)
        return "".join(out).encode()[:size]

    def any(self, size: int) -> bytes:
        return (self.log, self.jsonl, self.source)[self.next() % 3](size)


def log_uniform(r: random.Random, lo: int, hi: int) -> int:
    return int(lo * (hi / lo) ** r.random())


def write_file(path: Path, data: bytes, mtime_ns: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def write_random(path: Path, r: random.Random, size: int, mtime_ns: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MIB)
            f.write(r.randbytes(n))
            left -= n
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def generate(root: Path, size_mib: int, seed: int) -> dict:
    """Writes the data set under `root`; returns what it holds."""
    r = random.Random(seed)
    text = TextGen(random.Random(seed + 1))
    total = size_mib * MIB
    budget = {"text": int(total * 0.40), "random": int(total * 0.45)}
    budget["small"] = total - budget["text"] - budget["random"]
    stats = {"files": 0, "bytes": 0, "text_bytes": 0, "random_bytes": 0,
             "small_files": 0, "small_bytes": 0, "dirs": set()}
    clock = [BASE_TIME_NS]

    def stamp() -> int:
        clock[0] += 37 * 10**9
        return clock[0]

    # Compressible text: logs, JSON lines, source files, 256 KiB – 32 MiB.
    left, i = budget["text"], 0
    while left > 0:
        kind = r.choice(("log", "log", "jsonl", "src"))
        hi = 4 * MIB if kind == "src" else 32 * MIB
        size = min(left, log_uniform(r, 256 * KIB, hi))
        if left - size < 64 * KIB:
            size = left
        sub = {"log": "logs", "jsonl": "events", "src": f"src/{text.vocab[i % 50]}"}[kind]
        ext = {"log": "log", "jsonl": "jsonl", "src": "rs"}[kind]
        gen = {"log": text.log, "jsonl": text.jsonl, "src": text.source}[kind]
        write_file(root / "text" / sub / f"{kind}-{i:04d}.{ext}", gen(size), stamp())
        stats["text_bytes"] += size
        stats["files"] += 1
        left -= size
        i += 1

    # Incompressible random files, 1 – 64 MiB.
    left, i = budget["random"], 0
    while left > 0:
        size = min(left, log_uniform(r, 1 * MIB, 64 * MIB))
        if left - size < 256 * KIB:
            size = left
        sub = r.choice(("media", "images", "archives", "vm"))
        write_random(root / "blobs" / sub / f"blob-{i:04d}.bin", r, size, stamp())
        stats["random_bytes"] += size
        stats["files"] += 1
        left -= size
        i += 1

    # Thousands of small files, 1 – 64 KiB, in nested folders; about half
    # text-like (configs, sources), half random (thumbnails, compressed).
    left, i = budget["small"], 0
    while left > 0:
        size = log_uniform(r, KIB, 64 * KIB) if r.random() < 0.5 else r.randrange(KIB, 64 * KIB)
        size = min(left, size)
        depth = r.choice((1, 2, 2, 3))
        parts = [f"d{r.randrange(12):02d}", f"e{r.randrange(10):02d}", f"f{r.randrange(4)}"][:depth]
        folder = root.joinpath("small", *parts)
        stats["dirs"].add(str(folder))
        if r.random() < 0.5:
            write_file(folder / f"doc-{i:05d}.txt", text.any(size), stamp())
        else:
            write_random(folder / f"pic-{i:05d}.dat", r, size, stamp())
        stats["small_files"] += 1
        stats["small_bytes"] += size
        stats["files"] += 1
        left -= size
        i += 1

    # Fixed directory times too, deepest first.
    for dirpath, _, _ in sorted(os.walk(root), key=lambda w: -w[0].count(os.sep)):
        os.utime(dirpath, ns=(BASE_TIME_NS, BASE_TIME_NS))
    stats["dirs"] = sum(1 for _ in os.walk(root))
    stats["bytes"] = stats["text_bytes"] + stats["random_bytes"] + stats["small_bytes"]
    return stats


def list_files(root: Path) -> list[tuple[str, int]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            files.append((os.path.relpath(path, root), os.path.getsize(path)))
    return sorted(files)


def apply_change(root: Path, seed: int, fraction: float = 0.05) -> dict:
    """Changes about `fraction` of the data set's bytes, deterministically:
    in-place overwrites in the middle of random files (30 %), insertions in
    the middle of text files (20 %), appends to logs (10 %), new files
    (25 %), rewritten small files (15 %); also deletes 2 % of the small
    files and the smallest untouched random file. Returns the figures."""
    r = random.Random(seed * 7919 + 5)
    text = TextGen(random.Random(seed * 7919 + 6))
    files = list_files(root)
    total = sum(size for _, size in files)
    target = int(total * fraction)
    blobs = [f for f in files if f[0].startswith("blobs/") and f[1] >= 2 * MIB]
    texts = [f for f in files if f[0].startswith("text/")]
    logs = [f for f in texts if f[0].endswith(".log")]
    smalls = [f for f in files if f[0].startswith("small/")]
    stats = {"bytes_before": total, "overwritten": 0, "inserted": 0, "appended": 0,
             "new_bytes": 0, "rewritten_small": 0, "files_modified": 0,
             "files_new": 0, "files_deleted": 0, "bytes_deleted": 0}
    touched = set()

    # In-place overwrites in the middle of large random files.
    left = int(target * 0.30)
    for name, size in r.sample(blobs, len(blobs)):
        if left <= 0:
            break
        length = min(left, r.randrange(256 * KIB, 2 * MIB), size // 3)
        offset = r.randrange(size // 3, size - length)
        with open(root / name, "r+b") as f:
            f.seek(offset)
            f.write(r.randbytes(length))
        stats["overwritten"] += length
        stats["files_modified"] += 1
        touched.add(name)
        left -= length

    # Insertions in the middle of text files (shifting everything after).
    left = int(target * 0.20)
    for name, size in r.sample(texts, len(texts)):
        if left <= 0:
            break
        path = root / name
        data = path.read_bytes()
        cut = data.find(b"\n", r.randrange(len(data) // 4, 3 * len(data) // 4) if len(data) > 8 else 0) + 1
        length = min(left, r.randrange(16 * KIB, 512 * KIB))
        path.write_bytes(data[:cut] + text.any(length) + data[cut:])
        stats["inserted"] += length
        stats["files_modified"] += 1
        touched.add(name)
        left -= length

    # Appends to logs.
    left = int(target * 0.10)
    for name, size in r.sample(logs, len(logs)):
        if left <= 0:
            break
        length = min(left, r.randrange(64 * KIB, 1 * MIB))
        with open(root / name, "ab") as f:
            f.write(text.log(length))
        stats["appended"] += length
        if name not in touched:
            stats["files_modified"] += 1
        touched.add(name)
        left -= length

    # New files: a random one, a text one, and a folder of small ones.
    left = int(target * 0.25)
    big = left * 2 // 5
    write_random(root / "blobs" / "new" / "incoming-000.bin", r, big, None)
    write_file(root / "text" / "logs" / "new-today.log", text.log(big // 2), None)
    stats["new_bytes"] += big + big // 2
    stats["files_new"] += 2
    left -= big + big // 2
    i = 0
    while left > 0:
        size = min(left, r.randrange(KIB, 64 * KIB))
        folder = root / "small" / "new" / f"n{i % 8}"
        if r.random() < 0.5:
            write_file(folder / f"doc-new-{i:05d}.txt", text.any(size), None)
        else:
            write_random(folder / f"pic-new-{i:05d}.dat", r, size, None)
        stats["new_bytes"] += size
        stats["files_new"] += 1
        left -= size
        i += 1

    # Rewritten small files.
    left = int(target * 0.15)
    order = r.sample(smalls, len(smalls))
    for name, size in order:
        if left <= 0:
            break
        path = root / name
        size = min(left, max(size, KIB))
        if name.endswith(".txt"):
            path.write_bytes(text.any(size))
        else:
            path.write_bytes(r.randbytes(size))
        stats["rewritten_small"] += size
        stats["files_modified"] += 1
        touched.add(name)
        left -= size

    # Deletions: 2 % of the small files and one random file.
    untouched = [f for f in order if f[0] not in touched]
    for name, size in untouched[: max(1, len(smalls) // 50)]:
        (root / name).unlink()
        stats["files_deleted"] += 1
        stats["bytes_deleted"] += size
    spare = sorted((f for f in blobs if f[0] not in touched), key=lambda f: (f[1], f[0]))
    if spare:
        (root / spare[0][0]).unlink()
        stats["files_deleted"] += 1
        stats["bytes_deleted"] += spare[0][1]

    stats["bytes_changed"] = (stats["overwritten"] + stats["inserted"] + stats["appended"]
                              + stats["new_bytes"] + stats["rewritten_small"])
    stats["bytes_after"] = sum(size for _, size in list_files(root))
    return stats


# --------------------------------------------------------------------------
# Running and measuring
# --------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


class Runner:
    def __init__(self, work: Path, drop_caches: bool):
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.drop = drop_caches
        self.count = 0

    def drop_caches(self) -> bool:
        subprocess.run(["sync"], check=True)
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return True
        except OSError:
            return False

    def run(self, label: str, cmd: list[str], env: dict | None = None, timed: bool = True) -> dict:
        """Runs `cmd`, under /usr/bin/time -v when timed; fails loudly."""
        self.count += 1
        stem = self.logs / f"{self.count:03d}-{label}"
        full_env = dict(os.environ)
        full_env.update(env or {})
        if timed and self.drop:
            self.drop_caches()
        load = load1()
        time_file = Path(f"{stem}.time")
        argv = (["/usr/bin/time", "-v", "-o", str(time_file)] + cmd) if timed else cmd
        with open(f"{stem}.out", "wb") as out, open(f"{stem}.err", "wb") as err:
            started = time.monotonic()
            proc = subprocess.run(argv, stdout=out, stderr=err, env=full_env)
            wall = time.monotonic() - started
        if proc.returncode != 0:
            tail = Path(f"{stem}.err").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{label} failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
        result = {"stdout": Path(f"{stem}.out").read_text(errors="replace"), "load1": load}
        if timed:
            result.update(parse_time(time_file.read_text()))
            result["wall_outer"] = wall
        return result


def parse_time(text: str) -> dict:
    fields = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    elapsed = fields["Elapsed (wall clock) time (h:mm:ss or m:ss)"]
    seconds = 0.0
    for part in elapsed.split(":"):
        seconds = seconds * 60 + float(part)
    return {
        "wall": seconds,
        "user": float(fields["User time (seconds)"]),
        "sys": float(fields["System time (seconds)"]),
        "cpu": float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]),
        "rss_kib": int(fields["Maximum resident set size (kbytes)"]),
    }


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def verify(data: Path, restored: Path) -> None:
    proc = subprocess.run(["diff", "-r", "-q", "--no-dereference", str(data), str(restored)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"restored data differs from the source:\n{proc.stdout[-3000:]}{proc.stderr[-1000:]}")


def lifeboat_config(state: Path, url: str, service_key: Path, recipients: list[str], data: Path,
                    repository_extra: str = "") -> str:
    """A lifeboat.toml with one directory job `bench` backing up `data`;
    `repository_extra` is added to the [repository] table (e.g. `s3 = {…}`)."""
    return ("state_dir = " + json.dumps(str(state)) + "\n"
            "[repository]\n"
            f"url = {json.dumps(url)}\n"
            f"service_identity = {json.dumps(str(service_key))}\n"
            f"recipients = {json.dumps(recipients)}\n"
            + repository_extra +
            "[[job]]\n"
            'name = "bench"\n'
            f'source = {{ kind = "directory", paths = [{json.dumps(str(data))}] }}\n')


class Lifeboat:
    name = "lifeboat"

    def __init__(self, bindir: Path, runner: Runner, work: Path):
        self.bin, self.daemon = str(bindir / "lifeboat"), str(bindir / "lifeboatd")
        self.runner, self.work = runner, work
        self.env = {"RUST_LOG": "warn"}

    def version(self) -> str:
        out = subprocess.run([self.bin, "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def init(self, repo: Path, data: Path) -> None:
        keys = self.work / "lifeboat-keys"
        shutil.rmtree(keys, ignore_errors=True)
        keys.mkdir()
        self.restore_key = keys / "restore.key"
        out = self.runner.run("lifeboat-init", [
            self.bin, "init", "--repo", str(repo), "--restore-identity", str(self.restore_key),
            "--service-identity", str(keys / "service.key"), "--json"], self.env, timed=False)
        recipients = json.loads(out["stdout"])["restore_recipients"]
        self.state = self.work / "lifeboat-state"
        shutil.rmtree(self.state, ignore_errors=True)
        self.config = self.work / "lifeboat.toml"
        self.config.write_text(lifeboat_config(self.state, str(repo), keys / "service.key",
                                               recipients, data))

    def backup(self, label: str) -> dict:
        result = self.runner.run(f"lifeboat-{label}", [
            self.daemon, "run", "--config", str(self.config), "bench", "--json"], self.env)
        result["summary"] = json.loads(result["stdout"])["summary"]
        return result

    def restore(self, repo: Path, data: Path, target: Path) -> tuple[dict, Path]:
        result = self.runner.run("lifeboat-restore", [
            self.bin, "restore", "-r", str(repo), "-i", str(self.restore_key),
            f"latest:{data}", "--target", str(target)], self.env)
        return result, target

    def local_state(self) -> int:
        return du_bytes(self.state) if self.state.exists() else 0

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


class Restic:
    name = "restic"

    def __init__(self, runner: Runner, work: Path):
        self.runner, self.work = runner, work
        self.cache = work / "restic-cache"
        self.env = {"RESTIC_PASSWORD": RESTIC_PASSWORD}

    def version(self) -> str:
        out = subprocess.run(["restic", "version"], capture_output=True, text=True)
        return out.stdout.strip()

    def init(self, repo: Path, data: Path) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.repo = repo
        self.runner.run("restic-init", ["restic", "--repo", str(repo), "--cache-dir", str(self.cache),
                                        "init"], self.env, timed=False)
        out = self.runner.run("restic-config", ["restic", "--repo", str(repo), "--cache-dir", str(self.cache),
                                                "cat", "config"], self.env, timed=False)
        self.repo_config = json.loads(out["stdout"])

    def backup(self, label: str) -> dict:
        return self.runner.run(f"restic-{label}", [
            "restic", "--repo", str(self.repo), "--cache-dir", str(self.cache), "backup",
            str(self.data)], self.env)

    def restore(self, repo: Path, data: Path, target: Path) -> tuple[dict, Path]:
        result = self.runner.run("restic-restore", [
            "restic", "--repo", str(repo), "--cache-dir", str(self.cache), "restore", "latest",
            "--target", str(target)], self.env)
        # restic restores the absolute path below the target.
        return result, target / data.relative_to("/")

    def local_state(self) -> int:
        return du_bytes(self.cache) if self.cache.exists() else 0

    def cleanup(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


class FreshFs:
    """A new ext4 file system in an image file, loop-mounted at `mount`."""

    def __init__(self, work: Path, name: str, size_bytes: int):
        self.image, self.mount = work / f"{name}.img", work / name
        self.image.unlink(missing_ok=True)
        with open(self.image, "wb") as image:
            image.truncate(size_bytes)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image)],
                       check=True)
        self.mount.mkdir(exist_ok=True)
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.mount)], check=True)

    def remove(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=True)
        self.mount.rmdir()
        self.image.unlink()


def run_tool(tool, base: Path, data: Path, work: Path, seed: int, verify_restore: bool,
             fresh_fs: bool = False) -> dict:
    repo = work / f"repo-{tool.name}"
    target = work / f"restore-{tool.name}"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    copy_tree(base, data)
    tool.data = data
    tool.init(repo, data)
    out = {"tool": tool.name}
    log(f"{tool.name}: first backup")
    out["first"] = tool.backup("first")
    out["size_first"] = du_bytes(repo)
    log(f"{tool.name}: no-change backup")
    out["nochange"] = tool.backup("nochange")
    out["size_nochange"] = du_bytes(repo)
    out["change_stats"] = apply_change(data, seed)
    log(f"{tool.name}: backup after the change")
    out["change"] = tool.backup("change")
    out["size"] = du_bytes(repo)
    out["local_state"] = tool.local_state()
    log(f"{tool.name}: restore")
    volume = FreshFs(work, f"volume-{tool.name}", du_bytes(data) * 3 // 2 + 256 * MIB) if fresh_fs else None
    if volume:
        target = volume.mount / "restore"
    out["restore"], restored = tool.restore(repo, data, target)
    if verify_restore:
        verify(data, restored)
        out["verified"] = True
    for key in ("first", "nochange", "change", "restore"):
        out[key].pop("stdout", None)
    shutil.rmtree(repo, ignore_errors=True)
    if volume:
        volume.remove()
    else:
        shutil.rmtree(target, ignore_errors=True)
    tool.cleanup()
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

STEPS = [("first", "first backup"), ("nochange", "no-change backup"),
         ("change", "backup after 5 % change"), ("restore", "full restore")]
TARGETS = {"first": 0.5, "nochange": 0.5, "restore": 0.5}


def median(values):
    return statistics.median(values) if values else float("nan")


def fmt_s(x: float) -> str:
    return f"{x:.2f} s"


def fmt_mib(b: float) -> str:
    return f"{b / MIB:,.1f} MiB"


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return "–"
    return "met" if ratio <= target else "**missed**"


def report(results: list[dict], meta: dict) -> str:
    by_tool = {name: [r for r in results if r["tool"] == name] for name in ("lifeboat", "restic")}
    lb, rs = by_tool["lifeboat"], by_tool["restic"]
    lines = []
    add = lines.append
    add(f"Data set: {meta['dataset']['bytes'] / MIB:,.0f} MiB in {meta['dataset']['files']:,} files "
        f"({meta['dataset']['dirs']:,} folders), seed {meta['seed']}; "
        f"{len(lb)} repetition(s); page cache {'dropped before each step' if meta['cold'] else 'warm'}; "
        f"{'restores into a new ext4 file system each; ' if meta.get('fresh_restore_fs') else ''}"
        f"1-minute load average {meta['load1_range'][0]:.2f}–{meta['load1_range'][1]:.2f} at the step starts "
        f"on {meta['nproc']} CPUs.")
    add("")
    add("| measurement (median) | lifeboat | restic | lifeboat/restic | target | |")
    add("|---|---:|---:|---:|---:|---|")

    def m(rows, step, field):
        return median([r[step][field] for r in rows])

    for step, title in STEPS:
        a, b = m(lb, step, "wall"), m(rs, step, "wall")
        target = TARGETS.get(step)
        add(f"| {title}: wall time | {fmt_s(a)} | {fmt_s(b)} | {a / b:.2f}× | "
            f"{f'≤ {target}×' if target else '–'} | {verdict(a / b, target)} |")
    for step, title in STEPS:
        a, b = m(lb, step, "cpu"), m(rs, step, "cpu")
        add(f"| {title}: CPU time (user+sys) | {fmt_s(a)} | {fmt_s(b)} | {a / b:.2f}× | – | |")
    for field, title in (("size_first", "repository after first backup"),
                         ("size", "repository after all three backups")):
        a, b = median([r[field] for r in lb]), median([r[field] for r in rs])
        target = 1.0 if field == "size" else None
        add(f"| {title} | {fmt_mib(a)} | {fmt_mib(b)} | {a / b:.3f}× | "
            f"{'≤ 1×' if target else '–'} | {verdict(a / b, target)} |")
    a = median([r["size"] - r["size_nochange"] for r in lb])
    b = median([r["size"] - r["size_nochange"] for r in rs])
    add(f"| repository growth from the 5 % change | {fmt_mib(a)} | {fmt_mib(b)} | "
        f"{a / b if b else float('nan'):.2f}× | – | |")
    a, b = median([r["local_state"] for r in lb]), median([r["local_state"] for r in rs])
    add(f"| local state (lifeboat state_dir / restic cache) | {fmt_mib(a)} | {fmt_mib(b)} | "
        f"{a / b if b else float('nan'):.2f}× | – | |")
    for step, title in STEPS:
        a, b = m(lb, step, "rss_kib") * KIB, m(rs, step, "rss_kib") * KIB
        add(f"| {title}: peak RSS | {fmt_mib(a)} | {fmt_mib(b)} | {a / b:.2f}× | ≤ 1× | {verdict(a / b, 1.0)} |")
    a = median([max(r[s]["rss_kib"] for s, _ in STEPS) for r in lb]) * KIB
    b = median([max(r[s]["rss_kib"] for s, _ in STEPS) for r in rs]) * KIB
    add(f"| peak RSS over all steps | {fmt_mib(a)} | {fmt_mib(b)} | {a / b:.2f}× | ≤ 1× | {verdict(a / b, 1.0)} |")
    add("")
    change = results[0]["change_stats"]
    add(f"5 % change: {change['bytes_changed'] / MIB:,.1f} MiB written "
        f"({change['bytes_changed'] / change['bytes_before'] * 100:.1f} % of the data: "
        f"{change['overwritten'] / MIB:.1f} MiB overwritten in place, {change['inserted'] / MIB:.1f} MiB inserted, "
        f"{change['appended'] / MIB:.1f} MiB appended, {change['new_bytes'] / MIB:.1f} MiB in {change['files_new']} new files, "
        f"{change['rewritten_small'] / MIB:.1f} MiB of small files rewritten; {change['files_modified']} files modified), "
        f"{change['files_deleted']} files ({change['bytes_deleted'] / MIB:.1f} MiB) deleted.")
    add("")
    add("Per repetition (wall seconds first/no-change/change/restore; load average at each start):")
    add("")
    for r in results:
        add(f"- rep {r['rep']} {r['tool']:8}: " + " / ".join(f"{r[s]['wall']:.2f}" for s, _ in STEPS)
            + "  (load " + " / ".join(f"{r[s]['load1']:.2f}" for s, _ in STEPS) + ")")
    return "\n".join(lines)


# --------------------------------------------------------------------------


def git_rev(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> int:
    here = Path(__file__).resolve().parent
    default_bins = here.parent.parent / "target" / "release"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="data set size (default 1024)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per tool (default 3)")
    p.add_argument("--seed", type=int, default=20240601, help="PRNG seed of the data set")
    p.add_argument("--workdir", type=Path, help="work folder (default: new folder under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--bin-dir", type=Path, default=default_bins,
                   help=f"where lifeboat and lifeboatd are (default {default_bins})")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache before each step")
    p.add_argument("--no-verify", action="store_true", help="skip diffing restored data")
    p.add_argument("--fresh-restore-fs", action="store_true",
                   help="restore into a new loop-mounted ext4 file system each time (root)")
    p.add_argument("--json-out", type=Path, help="write raw results as JSON here")
    p.add_argument("--markdown-out", type=Path, help="write the table here too")
    p.add_argument("--only", choices=("lifeboat", "restic"), help="run one tool only (no table)")
    p.add_argument("--generate-only", action="store_true",
                   help="only generate the data set into --workdir and keep it; a later run with the same\n"
                        "--workdir, --size-mib and --seed reuses it")
    p.add_argument("--lifeboat-rev", default="",
                   help="label for the lifeboat build in the report (default: git describe of this checkout)")
    args = p.parse_args()

    needed = [Path("/usr/bin/time")]
    if args.only != "lifeboat":
        needed.append(Path(shutil.which("restic") or "restic"))
    if args.only != "restic":
        needed += [args.bin_dir / "lifeboat", args.bin_dir / "lifeboatd"]
    for tool in needed:
        if not tool.exists():
            print(f"missing {tool}", file=sys.stderr)
            return 2

    created = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-")) if created else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        # Copy the binaries so that a rebuild during the run cannot swap them.
        bins = work / "bin"
        bins.mkdir(exist_ok=True)
        for name in ("lifeboat", "lifeboatd"):
            if args.only != "restic":
                shutil.copy2(args.bin_dir / name, bins / name)
        runner = Runner(work, drop_caches=not args.warm)
        cold = not args.warm and runner.drop_caches()
        if not args.warm and not cold:
            log("cannot drop the page cache (not root?): measuring with a warm cache")
            runner.drop = False
        tools = [Lifeboat(bins, runner, work), Restic(runner, work)]
        if args.only:
            tools = [t for t in tools if t.name == args.only]

        base, marker = work / "base", work / "base.json"
        wanted = {"seed": args.seed, "size_mib": args.size_mib, "generator": GENERATOR_VERSION}
        previous = json.loads(marker.read_text()) if marker.exists() else {}
        if base.exists() and {k: previous.get(k) for k in wanted} == wanted:
            dataset = previous["dataset"]
            log(f"reusing the data set in {base} (from an earlier --keep run)")
        else:
            shutil.rmtree(base, ignore_errors=True)
            marker.unlink(missing_ok=True)
            log(f"generating {args.size_mib} MiB (seed {args.seed}) in {base}")
            started = time.monotonic()
            dataset = generate(base, args.size_mib, args.seed)
            marker.write_text(json.dumps({**wanted, "dataset": dataset}))
            log(f"generated {dataset['bytes'] / MIB:.0f} MiB, {dataset['files']} files in "
                f"{time.monotonic() - started:.0f} s")
        if args.generate_only:
            return 0
        data = work / "data"
        results = []
        for rep in range(1, args.reps + 1):
            order = tools if rep % 2 else list(reversed(tools))
            for tool in order:
                log(f"rep {rep}/{args.reps}: {tool.name} (load {load1():.2f})")
                result = run_tool(tool, base, data, work, args.seed, not args.no_verify,
                                  args.fresh_restore_fs)
                result["rep"] = rep
                results.append(result)
                if tool.name == "restic":
                    result["repo_config"] = tool.repo_config
        meta = {
            "seed": args.seed, "size_mib": args.size_mib, "reps": args.reps, "cold": cold,
            "fresh_restore_fs": args.fresh_restore_fs,
            "dataset": dataset, "data_path": str(data), "workdir": str(work),
            "versions": {t.name: t.version() for t in tools},
            "lifeboat_rev": args.lifeboat_rev or git_rev(here.parent.parent),
            "load1_range": [min(r[s]["load1"] for r in results for s, _ in STEPS),
                            max(r[s]["load1"] for r in results for s, _ in STEPS)],
            "nproc": os.cpu_count(), "uname": " ".join(os.uname()),
            "command": " ".join(["python3"] + sys.argv),
        }
        if args.json_out:
            args.json_out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        if args.only:
            print(json.dumps(results, indent=1))
            return 0
        table = report(results, meta)
        restic_cfg = next(r["repo_config"] for r in results if "repo_config" in r)
        text = (
            f"{table}\n\nVersions:\n\n"
            f"- {meta['versions']['lifeboat']} (build {meta['lifeboat_rev']}), repository defaults: "
            "FastCDC 512 KiB/1 MiB/8 MiB, zstd level 3, 16 MiB packs\n"
            f"- {meta['versions']['restic'].splitlines()[0]}, repository version {restic_cfg.get('version')}, "
            "default settings (compression auto)\n\n"
            f"Command: `{meta['command']}`\n")
        print(text)
        if args.markdown_out:
            args.markdown_out.write_text(text)
        return 0
    finally:
        if args.keep or args.generate_only:
            log(f"kept {work}")
        elif created:
            shutil.rmtree(work, ignore_errors=True)
        else:
            # A given work folder: remove only what this script puts there.
            for name in ("bin", "logs", "base", "base.json", "data", "repo-lifeboat", "repo-restic",
                         "restore-lifeboat", "restore-restic", "lifeboat-keys", "lifeboat-state",
                         "lifeboat.toml", "restic-cache"):
                path = work / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            try:
                work.rmdir()
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
