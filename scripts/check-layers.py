#!/usr/bin/env python3
"""Checks that the crate's layers point one way (docs/design.md, "Layers").

Reads every top-level module of src/, collects which others it names
(`crate::x` and `crate::{x, ...}`, comments skipped), prints the graph, and
fails when a module imports one of a higher layer, or when modules import
each other in a cycle. A new top-level module must be given a layer below.

Usage: python3 scripts/check-layers.py [src]"""
import os, re, sys, itertools
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
mods = set()
for name in os.listdir(root):
    if name.endswith('.rs') and name not in ('lib.rs', 'main.rs'):
        mods.add(name[:-3])
    elif os.path.isdir(os.path.join(root, name)) and name not in ('bin', 'shim'):
        mods.add(name)
# Higher imports lower; the same layer is fine as long as there is no cycle.
LAYERS = {
    "cli": 6,
    "node": 5,
    "workload": 4, "deploy": 4, "terminal": 4, "install": 4,
    "supervised": 3, "gpus": 3,
    "config": 2, "identity": 2, "backend": 2, "mqtt": 2, "protocol": 2,
    "runners": 2, "telemetry": 2, "standalone": 2, "lock": 2, "shutdown": 2,
    "backoff": 2, "secret": 2, "logging": 2,
    "fsutil": 1, "systemd": 1,
}
edges = {m: set() for m in mods}
for m in mods:
    paths = []
    if os.path.isdir(os.path.join(root, m)):
        for d, _, files in os.walk(os.path.join(root, m)):
            paths += [os.path.join(d, f) for f in files if f.endswith('.rs')]
    if os.path.exists(os.path.join(root, m + '.rs')):
        paths.append(os.path.join(root, m + '.rs'))
    for p in paths:
        for line in open(p):
            code = line.split('//')[0]
            for t in re.findall(r'crate::([a-z_]+)', code):
                if t in mods and t != m:
                    edges[m].add(t)
            # grouped: use crate::{a, b::c}
            for grp in re.findall(r'crate::\{([^}]*)\}', code):
                for t in re.findall(r'(?:^|,)\s*([a-z_]+)', grp):
                    if t in mods and t != m:
                        edges[m].add(t)
for m in sorted(edges):
    print(f"{m:12} -> {', '.join(sorted(edges[m]))}")
# strongly connected components (Tarjan)
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
sys.setrecursionlimit(10000)
for v in edges:
    if v not in index: strong(v)
cycles = [c for c in sccs if len(c) > 1]
print("cycles:", cycles if cycles else "none")
problems = [f"{m} has no layer in scripts/check-layers.py" for m in sorted(mods) if m not in LAYERS]
problems += [
    f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]}), a layer above it"
    for a in sorted(edges) for b in sorted(edges[a])
    if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]
]
for problem in problems:
    print("error:", problem)
sys.exit(1 if cycles or problems else 0)
