"""Hot-swap acceptance benchmark (issue 5): continuous load from several threads on a real
Runner (or through the agent's real local HTTP API with --http), 20+ forced switches among
real ONNX variants during the load.

Prints failed requests (goal: 0; a wrong answer counts as a failure: every answer must equal
the output of the variant that says it served it) and p99 latency while switching vs steady
state (goal: within 1.5x), with the ratio. Steady state is measured per variant without
switches; its p99 is taken over the same variant mix the switching phase served (each
variant's steady latencies resampled in proportion), so a fast variant does not flatter
either side. Also printed: p99 of the requests that overlapped a switch (load + warm) itself.

    python -m benchmarks.agent_hot_swap                      # built MLP bundle, Runner
    python -m benchmarks.agent_hot_swap --http               # through POST /v1/infer
    python -m benchmarks.agent_hot_swap --bundle DIR         # a compressor-written bundle
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort

from agent.engines import get_engine
from agent.metrics import AgentMetrics
from agent.profiling import representative_inputs
from agent.runtime import Runner
from benchmarks.agent_bundles import build_mlp_bundle, load_bundle_dir


def _p(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


class HttpClient:
    """One keep-alive connection per client thread to the local API."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def infer(self, x: np.ndarray) -> tuple[str, np.ndarray]:
        self.conn.request("POST", "/v1/infer", body=json.dumps({"inputs": {"input": x.tolist()}}),
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body.get('error')}")
        return body["variant"], np.asarray(body["outputs"]["logits"], np.float32)


def run_load(call, inputs, expected, n_requests: int, threads: int, keep_going=None):
    """`threads` clients send `n_requests` in total, and go on while `keep_going()` is true.
    Returns [(variant, t_start, t_end)], failures."""
    records, failures = [], []
    lock = threading.Lock()
    counter = itertools.count()

    def client(idx):
        c = call(idx)
        while True:
            with lock:
                i = next(counter)
            if i >= n_requests and not (keep_going and keep_going()):
                return
            x = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            try:
                variant, out = c(x)
                t1 = time.perf_counter()
                ok = np.array_equal(out, expected[variant][i % len(inputs)])
                with lock:
                    records.append((variant, t0, t1))
                    if not ok:
                        failures.append(f"request {i}: answer differs from {variant}'s output")
            except Exception as exc:          # noqa: BLE001 - every failure counts
                with lock:
                    failures.append(f"request {i}: {exc!r}")

    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return records, failures


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", help="compressor bundle folder (default: build a small MLP bundle)")
    ap.add_argument("--requests", type=int, default=2000, help="requests in the switching phase")
    ap.add_argument("--steady-requests", type=int, default=3000, help="steady requests per variant")
    ap.add_argument("--switches", type=int, default=24)
    ap.add_argument("--gap", type=float, default=0.05, help="seconds between forced switches")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--http", action="store_true", help="go through the agent's local HTTP API")
    ap.add_argument("--width", type=int, default=1024, help="hidden width of the built fp32 MLP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-nice", type=int, default=10,
                    help="Runner(load_nice=...): CPU priority drop of variant loads (0 = none)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle_dir(args.bundle) if args.bundle else build_mlp_bundle(
            tmp, in_dim=args.width // 2, hidden=args.width, small_hidden=args.width // 4)
        variants = [v.id for v in bundle.manifest.variants]
        runner = Runner(get_engine("onnxruntime"), metrics=AgentMetrics(), load_nice=args.load_nice)
        runner.activate(bundle, variants[0])
        spec = runner.input_specs()
        inputs = [representative_inputs(spec, bundle.manifest, seed=args.seed + k)["input"] for k in range(8)]
        # Expected answers from independent plain onnxruntime sessions (with the variant's session config).
        expected = {}
        for v in bundle.manifest.variants:
            opts = ort.SessionOptions()
            for key, value in (v.details.get("onnxruntime_session_config") or {}).items():
                opts.add_session_config_entry(key, value)
            s = ort.InferenceSession(str(bundle.variant_path(v.id)), opts, providers=["CPUExecutionProvider"])
            expected[v.id] = [s.run(None, {spec[0].name: x})[0] for x in inputs]

        server = None
        if args.http:
            from agent.local_api import LocalApiServer
            server = LocalApiServer("127.0.0.1", 0, runner, runner.metrics).start()

            def call(_idx):
                client = HttpClient(server.port)
                return client.infer
        else:
            def call(_idx):
                return lambda x: (lambda r: (r.variant, r.outputs["logits"]))(runner.run({spec[0].name: x}))

        try:
            # Steady state: each variant alone, no switch.
            steady = {}
            steady_failures = []
            for vid in variants:
                runner.activate(bundle, vid)
                run_load(call, inputs, expected, 50, args.threads)                 # warm the path
                recs, fails = run_load(call, inputs, expected, args.steady_requests, args.threads)
                steady[vid] = [t1 - t0 for _, t0, t1 in recs]
                steady_failures += fails
            steady_rps = sum(len(v) for v in steady.values())

            # Switching: the same load with forced switches spread over it, one every
            # --gap seconds (as long as the load lasts, and the load lasts until they are done).
            runner.activate(bundle, variants[0])
            windows: list[tuple[float, float]] = []
            order = [variants[(k + 1) % len(variants)] for k in range(args.switches)]
            switching = threading.Event()
            switching.set()

            def switcher():
                for vid in order:
                    time.sleep(args.gap)
                    t0 = time.perf_counter()
                    runner.activate(bundle, vid)
                    windows.append((t0, time.perf_counter()))
                time.sleep(args.gap)
                switching.clear()

            sw = threading.Thread(target=switcher)
            t_start = time.perf_counter()
            sw.start()
            recs, failures = run_load(call, inputs, expected, args.requests, args.threads, switching.is_set)
            sw.join()
            elapsed = time.perf_counter() - t_start
        finally:
            if server:
                server.stop()

    lat = np.array([t1 - t0 for _, t0, t1 in recs])
    served = {vid: sum(1 for v, _, _ in recs if v == vid) for vid in variants}
    rng = np.random.default_rng(args.seed)
    mix = np.concatenate([rng.choice(steady[vid], served[vid]) for vid in variants if served[vid]])
    overlap = [t1 - t0 for _, t0, t1 in recs if any(t0 < b and t1 > a for a, b in windows)]
    switch_ms = [(b - a) * 1e3 for a, b in windows]
    result = {
        "requests": len(recs) + len(failures), "failed": len(failures) + len(steady_failures),
        "switches": len(windows), "served_by_variant": served,
        "p99_switching_ms": _p(lat, 99) * 1e3, "p99_steady_ms": _p(mix, 99) * 1e3,
        "p50_switching_ms": _p(lat, 50) * 1e3, "p50_steady_ms": _p(mix, 50) * 1e3,
        "p99_overlapping_switch_ms": _p(overlap, 99) * 1e3, "overlapping_requests": len(overlap),
        "switch_ms_p50": _p(switch_ms, 50), "switch_ms_max": max(switch_ms, default=float("nan")),
        "throughput_rps": len(recs) / elapsed,
    }
    result["p99_ratio"] = result["p99_switching_ms"] / result["p99_steady_ms"]

    mode = ("local HTTP API" if args.http else "Runner.run") + f", load_nice={args.load_nice}"
    print(f"hot swap under load: {mode}, {args.threads} client threads, bundle "
          f"{'(built MLP)' if not args.bundle else args.bundle}: {', '.join(variants)}")
    print(f"  steady phase        {steady_rps} requests ({args.steady_requests} per variant), "
          f"failed {len(steady_failures)}")
    print(f"  switching phase     {result['requests']} requests, {result['switches']} forced switches "
          f"(load+warm p50 {result['switch_ms_p50']:.1f} ms, max {result['switch_ms_max']:.1f} ms), "
          f"{result['throughput_rps']:.0f} req/s")
    print(f"  served by variant   {served}")
    print(f"  FAILED REQUESTS     {result['failed']}  (goal 0; wrong answers count)")
    print(f"  p50 latency         switching {result['p50_switching_ms']:.3f} ms | steady {result['p50_steady_ms']:.3f} ms")
    print(f"  p99 latency         switching {result['p99_switching_ms']:.3f} ms | steady (same mix) "
          f"{result['p99_steady_ms']:.3f} ms | ratio {result['p99_ratio']:.2f}x (goal <= 1.5x)")
    print(f"  p99 of the {len(overlap)} requests overlapping a switch: {result['p99_overlapping_switch_ms']:.3f} ms")
    for vid in variants:
        print(f"    steady {vid:10s} p50 {_p(steady[vid], 50) * 1e3:.3f} ms  p99 {_p(steady[vid], 99) * 1e3:.3f} ms")
    return result


if __name__ == "__main__":
    main()
