#!/usr/bin/env python3
"""Module import graph of the `lifeboat` library (service/src), and its cycles.

Reads every `.rs` file under service/src (except main.rs, which is the
`lifeboatd` binary, a crate of its own), strips comments and literals, and
collects every path that names a module of the crate: `use crate::a::b::C`
trees (brace groups included), `crate::a::b::f(...)` in code, and
`super::...` / `self::...` paths (resolved from the file's module, inline
`mod name { ... }` blocks included). A path that ends in a name a module
re-exports (`pub use child::Name`) counts as a use of the module that
defines it. Test code is left out: a module declared `#[cfg(test)]`
(`mod tests;`, the unit-test fixture) and an inline `#[cfg(test)] mod`
block are not compiled into the library, and unit tests reach across
modules through their fixture.

Modules are counted at two levels: top-level (`hooks`, `sources`, ...) and
second-level (`daemon::runner`, `sources::etcd`, ...); deeper modules count
as their second-level ancestor. Edges between a module and its own parent
or child (`api` and `api::auth`) are left out of the second-level cycles:
a `mod.rs` and its children are one unit seen from outside.

Prints the second-level edges (`from -> to`), then every cycle, i.e. every
strongly connected component with more than one module, at each level, and
every arrow from the library into `api` (the HTTP edge, which nothing in
the domain may depend on). Exits 1 if it found a cycle or such an arrow,
0 otherwise.

Usage: python3 tests/tools/module_graph.py [--quiet] [--root service/src]
  --quiet  print only the cycles and forbidden arrows, not the edges
"""

import argparse
import os
import re
import sys

# Modules that nothing else in the library may import.
EDGE_MODULES = {"api"}


def strip(text):
    """Returns the source with comments, strings and char literals blanked."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not _ident(text[i - 1])):
            close = '"' + m.group(1)
            j = text.find(close, i + m.end())
            i = n if j < 0 else j + len(close)
            out.append('""')
        elif c == '"' or (c == "b" and text.startswith('b"', i) and (i == 0 or not _ident(text[i - 1]))):
            start = i = i + (1 if c == '"' else 2)
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            literal = text[start:i]
            i += 1
            # A path in a string is code too: `#[serde(with = "crate::a::b")]`.
            out.append(f" {literal} " if PATH_LITERAL.fullmatch(literal) else '""')
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a).
            m = re.match(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'", text[i:])
            if m:
                i += m.end()
                out.append("' '")
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


PATH_LITERAL = re.compile(r"(crate|super|self)(::[A-Za-z_][A-Za-z0-9_]*)+")


def _ident(c):
    return c.isalnum() or c == "_"


TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|::|[{}();,*]|\S")


def tokens(text):
    return TOKEN.findall(strip(text))


def file_module(root, path):
    """The module path of a file: service/src/a/b.rs -> ['a', 'b']."""
    rel = os.path.relpath(path, root)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return rel


def parse_use_tree(toks, i, prefix, found):
    """Parses one use tree from toks[i]; appends full paths to found.

    Returns the index after the tree."""
    path = list(prefix)
    while i < len(toks):
        t = toks[i]
        if t == "{":
            i += 1
            while i < len(toks) and toks[i] != "}":
                i = parse_use_tree(toks, i, path, found)
                if i < len(toks) and toks[i] == ",":
                    i += 1
            return i + 1
        if t == "*":
            found.append((path, "*"))
            return i + 1
        if t == "::":
            i += 1
            continue
        if re.match(r"[A-Za-z_]", t):
            if t == "as":
                alias = toks[i + 1] if i + 1 < len(toks) else None
                found.append((path, alias))
                return i + 2
            path = path + [t]
            i += 1
            continue
        break
    found.append((path, path[-1] if path else None))
    return i


def absolute(path, module):
    """Turns a path written in `module` into one from the crate root, or None."""
    if not path:
        return None
    if path[0] == "crate":
        return path[1:]
    if path[0] in ("self", "super"):
        base = list(module)
        rest = list(path)
        while rest and rest[0] in ("self", "super"):
            if rest.pop(0) == "super":
                if not base:
                    return None
                base.pop()
        return base + rest
    return None


CFG_TEST = ["#", "[", "cfg", "(", "test", ")", "]"]


def cfg_test(toks, i):
    """Whether the `mod` at toks[i] is marked `#[cfg(test)]` (before its
    visibility, if any)."""
    j = i
    if j >= 1 and toks[j - 1] == "pub":
        j -= 1
    elif j >= 4 and toks[j - 4] == "pub" and toks[j - 3] == "(" and toks[j - 1] == ")":
        j -= 4
    return toks[max(0, j - len(CFG_TEST)) : j] == CFG_TEST


def skip_block(toks, i):
    """The index after the brace block that opens at toks[i]."""
    depth = 0
    while i < len(toks):
        if toks[i] == "{":
            depth += 1
        elif toks[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def scan(root, modules):
    """Collects, per file module outside test code, the absolute paths it
    names, its re-exports and its file name."""
    test_only = set()  # modules declared `#[cfg(test)] mod name;`
    uses = {}  # tuple(file module) -> list of absolute paths
    files_of = {}  # tuple(file module) -> file name, relative to root
    reexports = {}  # tuple(module) -> {name: absolute target path}
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            if os.path.relpath(path, root) == "main.rs":
                continue
            fmod = file_module(root, path)
            with open(path, encoding="utf-8") as f:
                toks = tokens(f.read())
            found = uses.setdefault(tuple(fmod), [])
            files_of[tuple(fmod)] = os.path.relpath(path, root)
            stack = []  # (inline module name, brace depth at which it opened)
            depth = 0
            i = 0
            while i < len(toks):
                t = toks[i]
                current = fmod + [s for s, _ in stack]
                if t == "{":
                    depth += 1
                elif t == "}":
                    depth -= 1
                    if stack and stack[-1][1] == depth:
                        stack.pop()
                elif t == "mod" and i + 2 < len(toks) and cfg_test(toks, i):
                    if toks[i + 2] == ";":
                        test_only.add(tuple(current + [toks[i + 1]]))
                        i += 3
                    else:
                        i = skip_block(toks, i + 2)
                    continue
                elif t == "mod" and i + 2 < len(toks) and toks[i + 2] == "{":
                    stack.append((toks[i + 1], depth))
                    depth += 1
                    i += 3
                    continue
                elif t == "use":
                    public = i > 0 and (toks[i - 1] == "pub" or (toks[i - 1] == ")" and "pub" in toks[max(0, i - 4) : i]))
                    trees = []
                    i = parse_use_tree(toks, i + 1, [], trees)
                    for tree, alias in trees:
                        target = absolute(tree, current)
                        if target is None and tree and tree[0] in modules.get(tuple(current), ()):
                            target = current + tree  # a child module, 2018-style
                        if target is None:
                            continue
                        found.append(target)
                        if public and alias not in (None, "*", "_", "self"):
                            reexports.setdefault(tuple(current), {})[alias] = target
                    continue
                elif t in ("crate", "super", "self") and i + 1 < len(toks) and toks[i + 1] == "::":
                    seq = [t]
                    j = i + 1
                    while j + 1 < len(toks) and toks[j] == "::" and re.match(r"[A-Za-z_]", toks[j + 1]):
                        seq.append(toks[j + 1])
                        j += 2
                    target = absolute(seq, current)
                    if target is not None:
                        found.append(target)
                    i = j
                    continue
                i += 1
    in_tests = lambda m: any(m[: len(t)] == t for t in test_only)
    uses = {m: paths for m, paths in uses.items() if not in_tests(m)}
    return uses, reexports, files_of


def known_modules(root):
    """Every file module, mapped to the names of its child modules."""
    children = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".rs") and os.path.relpath(os.path.join(dirpath, name), root) != "main.rs":
                m = file_module(root, os.path.join(dirpath, name))
                children.setdefault(tuple(m), set())
                if m:
                    children.setdefault(tuple(m[:-1]), set()).add(m[-1])
    return children


def resolve(path, modules, reexports, seen=0):
    """The deepest file module a path names, following re-exports."""
    best = 0
    for k in range(1, len(path) + 1):
        if tuple(path[:k]) in modules:
            best = k
    module = path[:best]
    if best < len(path) and seen < 8:
        target = reexports.get(tuple(module), {}).get(path[best])
        if target is not None and target[: len(module)] != path:
            return resolve(target + path[best + 1 :], modules, reexports, seen + 1)
    return module


def sccs(nodes, edges):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def show_cycle(comp, edges):
    """One line per arrow inside the component."""
    members = set(comp)
    lines = []
    for a in comp:
        for b in sorted(edges.get(a, ())):
            if b in members:
                lines.append(f"    {a} -> {b}  ({', '.join(sorted(edges[a][b]))})")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--root", default=os.path.join(here, "..", "..", "service", "src"))
    parser.add_argument("--quiet", action="store_true", help="print only the problems")
    args = parser.parse_args()
    root = os.path.normpath(args.root)

    modules = known_modules(root)
    uses, reexports, files_of = scan(root, modules)

    name = lambda m: "::".join(m[:2]) or "crate"
    level2 = {}  # from -> to -> {files}
    level1 = {}
    for fmod, paths in uses.items():
        src = list(fmod)
        for path in paths:
            dst = resolve(path, modules, reexports)
            if not dst or not src:
                continue
            a, b = name(src), name(dst)
            where = files_of[fmod]
            if a != b:
                level2.setdefault(a, {}).setdefault(b, set()).add(where)
            if src[0] != dst[0]:
                level1.setdefault(src[0], {}).setdefault(dst[0], set()).add(where)

    if not args.quiet:
        print("edges (second level):")
        for a in sorted(level2):
            for b in sorted(level2[a]):
                print(f"  {a} -> {b}")
        print()

    problems = 0
    top = sccs(set(level1) | {b for d in level1.values() for b in d}, level1)
    print(f"cycles between top-level modules: {len(top)}")
    for comp in top:
        print("  " + " <-> ".join(comp))
        print("\n".join(show_cycle(comp, level1)))
    problems += len(top)

    # Second level: leave out a module's arrows to its own parent or child.
    related = lambda a, b: a.startswith(b + "::") or b.startswith(a + "::")
    inner = {a: {b: w for b, w in d.items() if not related(a, b)} for a, d in level2.items()}
    second = sccs(set(inner) | {b for d in inner.values() for b in d}, inner)
    print(f"cycles between second-level modules: {len(second)}")
    for comp in second:
        print("  " + " <-> ".join(comp))
        print("\n".join(show_cycle(comp, inner)))
    problems += len(second)

    into_edge = sorted((a, b) for a, d in level1.items() for b in d if b in EDGE_MODULES and a not in EDGE_MODULES)
    print(f"arrows from the library into {', '.join(sorted(EDGE_MODULES))}: {len(into_edge)}")
    for a, b in into_edge:
        print(f"  {a} -> {b}  ({', '.join(sorted(level1[a][b]))})")
    problems += len(into_edge)

    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
