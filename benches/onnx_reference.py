#!/usr/bin/env python3
"""Reference ONNX Runtime latency for a model, for comparison with the Rust runtime.

Usage:
    python3 benches/onnx_reference.py MODEL.onnx --runs N --warmup W --threads T \
        [--batch B] [--write-input PATH]

Random inputs are generated for every model input (seed 0; symbolic / unknown
dims are replaced by --batch, default 1).  Float inputs are standard-normal
values in the model's float type (normally float32); integer inputs are small
non-negative ints and bool inputs are random.  The session uses the
CPUExecutionProvider with intra_op_num_threads=T, inter_op_num_threads=1 and
ORT_ENABLE_ALL.  After W warmup runs, N timed runs of session.run(None, feeds)
are measured with time.perf_counter_ns and one JSON line is printed:

    {"model": ..., "runs": N, "p50_ms": ..., "p95_ms": ..., "mean_ms": ..., "min_ms": ...}

With --write-input PATH the same inputs are also written as JSON:

    {"inputs": {"<name>": {"dtype": "float32", "shape": [...],
                            "data_b64": "<base64 of little-endian raw bytes>"}}}

(bool is stored as one byte per element, 0 or 1.)
"""

import argparse
import base64
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

# onnxruntime type string -> numpy dtype
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def make_inputs(session, batch, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        if inp.type not in ORT_TYPES:
            raise SystemExit(f"input {inp.name!r}: unsupported type {inp.type}")
        dtype = np.dtype(ORT_TYPES[inp.type])
        shape = [d if isinstance(d, int) and d >= 0 else batch for d in inp.shape]
        if dtype.kind == "f":
            arr = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            arr = rng.integers(0, 10, size=shape).astype(dtype)
        feeds[inp.name] = np.ascontiguousarray(arr)
    return feeds


def write_inputs(path, feeds):
    doc = {"inputs": {}}
    for name, arr in feeds.items():
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        doc["inputs"][name] = {
            "dtype": np.dtype(arr.dtype).name if arr.dtype != np.bool_ else "bool",
            "shape": list(arr.shape),
            "data_b64": base64.b64encode(le.tobytes(order="C")).decode("ascii"),
        }
    with open(path, "w") as f:
        json.dump(doc, f)
        f.write("\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--write-input", metavar="PATH")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be >= 1")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])

    feeds = make_inputs(session, args.batch)
    if args.write_input:
        write_inputs(args.write_input, feeds)

    for _ in range(args.warmup):
        session.run(None, feeds)
    times_ns = np.empty(args.runs, dtype=np.int64)
    for i in range(args.runs):
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        times_ns[i] = time.perf_counter_ns() - t0

    ms = times_ns.astype(np.float64) / 1e6
    result = {
        "model": os.path.basename(args.model),
        "runs": args.runs,
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p95_ms": round(float(np.percentile(ms, 95)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "min_ms": round(float(ms.min()), 4),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
