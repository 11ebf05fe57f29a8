#!/usr/bin/env python3
"""Benchmark lifeboat against restic on a tree of a million small files.

Generates a seeded tree of FILES small files (default 1,000,000; 1,000
folders of 1,000 files of 64 B to 2 KiB of random data), then for each tool,
on a fresh local repository, times under `/usr/bin/time -v` (wall time,
CPU, peak RSS):

  1. first backup
  2. no-change backup          (the file cache: what each tool reads again)
  3. listing one folder        (`lifeboat ls` / `restic ls`)
  4. restoring one file        (`lifeboat restore SNAP:PATH` / `restic restore --include`)
  5. full restore              (checked: the same number of files and bytes,
                                and a sample of files compared byte for byte)
  6. check and prune           (the repository holds about a million blobs:
                                what the index costs the maintenance tasks;
                                lifeboat's with the service key, as lifeboatd
                                runs them)

The tools alternate which goes first in each repetition. Medians and the
ratios lifeboat/restic are printed as a markdown table.

Usage (from the repository root, after `cargo build --release --bins`):

    python3 tests/bench/million_files.py --bin-dir target/release
    python3 tests/bench/million_files.py --files 20000 --bin-dir target/release   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Lifeboat, Restic, Runner, fmt_s, log, median  # noqa: E402

PER_FOLDER = 1000


def generate(root: Path, files: int, seed: int) -> tuple[int, int]:
    """Writes `files` small random files under `root`; returns (files, bytes)."""
    rng = random.Random(seed)
    total = 0
    for n in range(files):
        folder = root / f"d{n // PER_FOLDER:04d}"
        if n % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(64, 2048)
        (folder / f"f{n % PER_FOLDER:04d}.bin").write_bytes(rng.randbytes(size))
        total += size
        if n and n % 100_000 == 0:
            log(f"  {n} files written")
    return files, total


def count(root: Path) -> tuple[int, int]:
    files = total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            total += os.lstat(os.path.join(folder, name)).st_size
    return files, total


def check_restore(data: Path, restored: Path, expected: tuple[int, int], seed: int) -> None:
    found = count(restored)
    if found != expected:
        raise RuntimeError(f"restored {found[0]} files of {found[1]} bytes, expected {expected}")
    rng = random.Random(seed)
    for _ in range(200):
        n = rng.randrange(expected[0])
        relative = Path(f"d{n // PER_FOLDER:04d}") / f"f{n % PER_FOLDER:04d}.bin"
        if (data / relative).read_bytes() != (restored / relative).read_bytes():
            raise RuntimeError(f"{relative} differs after the restore")


def one_path(files: int) -> tuple[str, str]:
    """A folder in the middle of the tree and a file in it."""
    n = files // 2
    folder = f"d{n // PER_FOLDER:04d}"
    return folder, f"{folder}/f{n % PER_FOLDER:04d}.bin"


def run_lifeboat(tool: Lifeboat, repo: Path, data: Path, work: Path, expected, seed: int) -> dict:
    tool.init(repo, data)
    steps = {"first backup": tool.backup("first"), "no-change backup": tool.backup("nochange")}
    folder, file = one_path(expected[0])
    steps["ls one folder"] = tool.runner.run("lifeboat-ls", [
        tool.bin, "ls", "-r", str(repo), "-i", str(tool.restore_key), "latest",
        str(data / folder)], tool.env)
    target = work / "restore-one"
    shutil.rmtree(target, ignore_errors=True)
    steps["restore one file"] = tool.runner.run("lifeboat-restore-one", [
        tool.bin, "restore", "-r", str(repo), "-i", str(tool.restore_key),
        f"latest:{data / file}", "--target", str(target)], tool.env)
    target = work / "restore-all"
    shutil.rmtree(target, ignore_errors=True)
    steps["full restore"], restored = tool.restore(repo, data, target)
    check_restore(data, restored, expected, seed)
    shutil.rmtree(target, ignore_errors=True)
    service_key = tool.restore_key.with_name("service.key")
    steps["check"] = tool.runner.run("lifeboat-check", [
        tool.bin, "check", "-r", str(repo), "-i", str(service_key)], tool.env)
    steps["prune"] = tool.runner.run("lifeboat-prune", [
        tool.bin, "prune", "-r", str(repo), "-i", str(service_key)], tool.env)
    return steps


def run_restic(tool: Restic, repo: Path, data: Path, work: Path, expected, seed: int) -> dict:
    tool.data = data
    tool.init(repo, data)
    steps = {"first backup": tool.backup("first"), "no-change backup": tool.backup("nochange")}
    folder, file = one_path(expected[0])
    base = ["restic", "--repo", str(repo), "--cache-dir", str(tool.cache)]
    steps["ls one folder"] = tool.runner.run(
        "restic-ls", base + ["ls", "latest", str(data / folder)], tool.env)
    target = work / "restore-one"
    shutil.rmtree(target, ignore_errors=True)
    steps["restore one file"] = tool.runner.run("restic-restore-one", base + [
        "restore", "latest", "--include", str(data / file), "--target", str(target)], tool.env)
    target = work / "restore-all"
    shutil.rmtree(target, ignore_errors=True)
    steps["full restore"], restored = tool.restore(repo, data, target)
    check_restore(data, restored, expected, seed)
    shutil.rmtree(target, ignore_errors=True)
    steps["check"] = tool.runner.run("restic-check", base + ["check"], tool.env)
    steps["prune"] = tool.runner.run("restic-prune", base + ["prune"], tool.env)
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bin-dir", type=Path, default=Path("target/release"))
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--tools", default="lifeboat,restic",
                        help="which tools to run (lifeboat alone for a quick look; the table needs both)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="lifeboat-million-"))
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(work, drop_caches=False)
    data = work / "data"
    if not data.exists():
        log(f"writing {args.files} files into {data}")
        generate(data, args.files, args.seed)
    expected = count(data)
    log(f"{expected[0]} files, {expected[1]} bytes")
    lifeboat = Lifeboat(args.bin_dir.resolve(), runner, work)
    restic = Restic(runner, work)
    results = {"lifeboat": [], "restic": []}
    for rep in range(args.reps):
        order = [(name, run, tool) for name, run, tool in
                 [("lifeboat", run_lifeboat, lifeboat), ("restic", run_restic, restic)]
                 if name in args.tools.split(",")]
        if rep % 2:
            order.reverse()
        for name, run, tool in order:
            repo = work / f"repo-{name}"
            shutil.rmtree(repo, ignore_errors=True)
            log(f"rep {rep}: {name}")
            steps = run(tool, repo, data, work, expected, args.seed)
            for step, figures in steps.items():
                log(f"  {step}: {figures['wall']:.2f} s, {figures['rss_kib'] // 1024} MiB")
            steps["repository bytes"] = {"bytes": int(subprocess.run(
                ["du", "-sb", str(repo)], check=True, capture_output=True, text=True).stdout.split()[0])}
            results[name].append(steps)
            tool.cleanup()
            shutil.rmtree(repo, ignore_errors=True)
    if len(order) < 2:
        return 0
    print(f"\n{expected[0]} files ({expected[1] / 2**20:.0f} MiB), {args.reps} repetition(s); "
          f"{lifeboat.version()}, {restic.version()}\n")
    print("| step | lifeboat | restic | ratio | lifeboat RSS | restic RSS |")
    print("|---|---|---|---|---|---|")
    for step in ["first backup", "no-change backup", "ls one folder", "restore one file", "full restore",
                 "check", "prune"]:
        a = median([r[step]["wall"] for r in results["lifeboat"]])
        b = median([r[step]["wall"] for r in results["restic"]])
        ra = median([r[step]["rss_kib"] for r in results["lifeboat"]]) / 1024
        rb = median([r[step]["rss_kib"] for r in results["restic"]]) / 1024
        print(f"| {step} | {fmt_s(a)} | {fmt_s(b)} | {a / b:.2f}× | {ra:.0f} MiB | {rb:.0f} MiB |")
    sizes = [median([r["repository bytes"]["bytes"] for r in results[t]]) / 2**20 for t in ("lifeboat", "restic")]
    print(f"| repository size | {sizes[0]:.0f} MiB | {sizes[1]:.0f} MiB | {sizes[0] / sizes[1]:.2f}× | | |")
    (work / "million_files.json").write_text(json.dumps(results, indent=1))
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
