#!/usr/bin/env python3
"""Restore a lifeboat snapshot with nothing but `age`, `zstd` and this script.

It follows service/FORMAT.md and shares no code with lifeboat, so the test
suite runs it to prove that the format document is enough to get data back.

    lifeboat_extract.py --repo DIR --identity restore.key --out DIR [--snapshot ID-PREFIX]

Restores file contents, modes, directories, symlinks and hard links (not
owners or times) of a
repository in a local directory.
"""
import argparse
import json
import os
import subprocess
import sys


def age_decrypt(identity, path):
    return subprocess.run(["age", "-d", "-i", identity, path], check=True, capture_output=True).stdout


def zstd_decompress(data):
    return subprocess.run(["zstd", "-d", "-c", "-q"], input=data, check=True, capture_output=True).stdout


def read_json_object(identity, path):
    return json.loads(zstd_decompress(age_decrypt(identity, path)))


def name_bytes(name):
    if isinstance(name, dict):
        return bytes.fromhex(name["hex"])
    return name.encode()


class Repository:
    def __init__(self, root, identity):
        self.root = root
        self.identity = identity
        self.blobs = {}
        self.packs = {}
        for entry in sorted(os.listdir(os.path.join(root, "index"))):
            index = read_json_object(identity, os.path.join(root, "index", entry))
            for pack in index["packs"]:
                for blob in pack["blobs"]:
                    self.blobs.setdefault(blob["id"], (pack["id"], blob))

    def pack_plaintext(self, pack_id):
        if pack_id not in self.packs:
            path = os.path.join(self.root, "data", pack_id[:2], pack_id)
            self.packs[pack_id] = age_decrypt(self.identity, path)
        return self.packs[pack_id]

    def blob(self, blob_id):
        pack_id, entry = self.blobs[blob_id]
        plain = self.pack_plaintext(pack_id)
        stored = plain[entry["offset"]:entry["offset"] + entry["length"]]
        data = zstd_decompress(stored) if entry["compressed"] else stored
        if len(data) != entry["raw_length"]:
            raise SystemExit(f"blob {blob_id} has the wrong length")
        return data

    def tree(self, blob_id):
        return json.loads(self.blob(blob_id))

    def snapshots(self):
        folder = os.path.join(self.root, "snapshots")
        return {name: read_json_object(self.identity, os.path.join(folder, name))
                for name in sorted(os.listdir(folder))}


def restore_tree(repo, tree_id, target, links):
    os.makedirs(target, exist_ok=True)
    for node in repo.tree(tree_id)["entries"]:
        path = os.path.join(os.fsencode(target), name_bytes(node["name"]))
        kind = node["type"]
        if kind == "dir":
            restore_tree(repo, node["subtree"], path, links)
        elif kind == "file":
            with open(path, "wb") as out:
                for blob_id in node.get("content", []):
                    out.write(repo.blob(blob_id))
            os.chmod(path, node["mode"])
        elif kind == "symlink":
            os.symlink(name_bytes(node["target"]), path)
        elif kind == "hardlink":
            links.append((path, name_bytes(node["link"])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--snapshot", default="")
    args = parser.parse_args()
    repo = Repository(args.repo, args.identity)
    snapshots = repo.snapshots()
    chosen = [s for name, s in snapshots.items() if name.startswith(args.snapshot)]
    if not chosen:
        sys.exit(f"no snapshot starts with {args.snapshot!r}")
    latest = max(chosen, key=lambda s: s["time"])
    links = []
    restore_tree(repo, latest["root"], args.out, links)
    for path, first in links:
        os.link(os.path.join(os.fsencode(args.out), first.lstrip(b"/")), path)


if __name__ == "__main__":
    main()
