"""Request batching throughput: the same closed-loop load (N client threads, one row per
request) on a real Runner with batching off and on, per variant of a real bundle. Prints
requests/s, p50/p99 latency, mean rows per batch, the throughput ratio, and whether the
variant qualified for batching (bit-identical rows; see agent/batching.py).

    python -m benchmarks.agent_batching                      # built MLP bundle
    python -m benchmarks.agent_batching --bundle DIR         # a compressor-written bundle
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np

from agent.batching import BatchConfig
from agent.engines import get_engine
from agent.profiling import representative_inputs
from agent.runtime import Runner
from benchmarks.agent_bundles import build_mlp_bundle, load_bundle_dir


def _load(runner: Runner, x_list, seconds: float, threads: int):
    lat, rows = [], []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k):
        mine, mine_rows, i = [], [], k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = runner.run({"input": x_list[i % len(x_list)]})
            mine.append(time.perf_counter() - t0)
            mine_rows.append(r.batch_rows)
            i += threads
        with lock:
            lat.extend(mine)
            rows.extend(mine_rows)

    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(lat) / (time.perf_counter() - t0), np.asarray(lat), np.asarray(rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="compressor bundle folder (default: build a small MLP bundle)")
    ap.add_argument("--threads", type=int, default=8, help="client threads")
    ap.add_argument("--seconds", type=float, default=2.0, help="per configuration")
    ap.add_argument("--max-rows", type=int, default=16)
    ap.add_argument("--budget", type=float, default=0.1, help="latency budget, seconds")
    ap.add_argument("--width", type=int, default=512, help="hidden width of the built fp32 MLP")
    args = ap.parse_args(argv)

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle_dir(args.bundle) if args.bundle else build_mlp_bundle(
            tmp, in_dim=args.width // 2, hidden=args.width, small_hidden=args.width // 4)
        config = BatchConfig(max_rows=args.max_rows, budget_seconds=args.budget, max_inflight=os.cpu_count() or 1)
        print(f"request batching: {args.threads} client threads x 1 row, {args.seconds:g} s each, "
              f"max {args.max_rows} rows, budget {args.budget * 1e3:g} ms, {config.max_inflight} batches in flight")
        print(f"{'variant':10s} {'batching':9s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'rows/batch':>10s}  ratio")
        for v in bundle.manifest.variants:
            row = {}
            for mode in ("off", "on"):
                runner = Runner(get_engine("onnxruntime"), batching=config if mode == "on" else None)
                runner.activate(bundle, v.id)
                spec = runner.input_specs()
                xs = [representative_inputs(spec, bundle.manifest, seed=s)["input"] for s in range(16)]
                state = runner.batching_state()[v.id]["batching"]
                rps, lat, rows = _load(runner, xs, args.seconds, args.threads)
                batched = rows[rows > 0]
                row[mode] = {"rps": rps, "p50_ms": float(np.percentile(lat, 50)) * 1e3,
                             "p99_ms": float(np.percentile(lat, 99)) * 1e3, "state": state,
                             "rows_per_batch": float(np.mean(batched)) if len(batched) else 1.0}
            ratio = row["on"]["rps"] / row["off"]["rps"]
            out[v.id] = {**row, "ratio": ratio}
            for mode in ("off", "on"):
                r = row[mode]
                label = "off" if mode == "off" else ("on" if r["state"] == "on" else "refused")
                print(f"{v.id:10s} {label:9s} {r['rps']:8.0f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} "
                      f"{r['rows_per_batch']:10.1f}" + (f"  {ratio:.2f}x" if mode == "on" else ""))
            if row["on"]["state"] != "on":
                print(f"{'':10s} ({row['on']['state']})")
    return out


if __name__ == "__main__":
    main()
