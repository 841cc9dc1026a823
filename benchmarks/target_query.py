"""P1: target-query throughput against its limit.

A local Responses-API server (the toy target) answers every request after a fixed
latency L. With C requests in flight the ideal throughput is C / L. Measured in the
same run:
  - ideal: C / L;
  - raw: a bare aiohttp client firing the same requests at the same concurrency (no
    cache, no parsing, no retries): the practical ceiling of this machine;
  - client: the project's request path (openai SDK, retries, request cache commit),
    with no faults and with 20% 429s (Retry-After 0.05 s).
Prints JSON; goals: client/ideal >= 0.90 (no faults), >= 0.70 (20% 429s).

Run: python benchmarks/target_query.py [--rows 1280] [--concurrency 64] [--latency 0.25]
"""

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def raw_throughput(url: str, problems: list[str], concurrency: int) -> float:
    import aiohttp

    async def go():
        sem = asyncio.Semaphore(concurrency)
        conn = aiohttp.TCPConnector(limit=concurrency + 8)
        async with aiohttp.ClientSession(connector=conn) as s:
            async def one(p):
                async with sem:
                    async with s.post(url + "/v1/responses", json={"model": "toy-target", "input": [
                            {"role": "user", "content": p}]}) as r:
                        await r.json()
            t = time.perf_counter()
            await asyncio.gather(*(one(p) for p in problems))
            return time.perf_counter() - t

    return len(problems) / asyncio.run(go())


def client_throughput(url: str, problems: list[str], concurrency: int, workdir: Path, tag: str) -> dict:
    from trace_inversion.models.cache import RequestCache
    from trace_inversion.models.clients import make_client
    from trace_inversion.config import ModelConfig

    cfg = ModelConfig(backend="openai-responses", model="toy-target", base_url=url + "/v1", concurrency=concurrency,
                      reasoning_effort="medium", reasoning_summary="auto", max_retries=20)
    client = make_client(cfg, RequestCache(workdir / f"{tag}.sqlite"))
    batch = [[{"role": "user", "content": p}] for p in problems]
    warm = [[{"role": "user", "content": p + " + 0"}] for p in problems[:concurrency]]

    async def go():
        await client.query_many(warm)  # imports and connection set-up happen once per run, not per row
        t = time.perf_counter()
        res = await client.query_many(batch)
        dt = time.perf_counter() - t
        await client.aclose()
        return res, dt

    res, dt = asyncio.run(go())
    assert all(r.ok for r in res), [r.error for r in res if not r.ok][:3]
    return {"rows_per_s": len(problems) / dt, "attempts": sum(r.attempts for r in res), "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1280)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.25)
    a = ap.parse_args()
    from trace_inversion.local_services.servers import start_toy_server
    from trace_inversion.toy.world import ToyWorld

    problems = [p.text for p in ToyWorld(seed=0).problems(a.rows)]
    ideal = a.concurrency / a.latency
    out = {"benchmark": "target_query", "baseline": "ideal = concurrency / latency; raw = a bare aiohttp client at the "
           "same concurrency, measured in this run", "rows": a.rows, "concurrency": a.concurrency, "latency_s": a.latency,
           "ideal_rows_per_s": ideal, "machine": f"{platform.machine()} {platform.processor() or ''} "
                                                 f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}"}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        with start_toy_server(d, latency=a.latency) as srv:
            raw = raw_throughput(srv.url, problems, a.concurrency)
            clean = client_throughput(srv.url, problems, a.concurrency, d, "clean")
        with start_toy_server(d, latency=a.latency, p429=0.2, retry_after=0.05, seed=1) as srv:
            storm = client_throughput(srv.url, problems, a.concurrency, d, "p429")
    out.update({
        "raw_rows_per_s": round(raw, 1),
        "client_rows_per_s": round(clean["rows_per_s"], 1),
        "client_429_rows_per_s": round(storm["rows_per_s"], 1),
        "client_429_attempts_per_row": round(storm["attempts"] / a.rows, 3),
        "ratio_raw_vs_ideal": round(raw / ideal, 3),
        "ratio_vs_ideal": round(clean["rows_per_s"] / ideal, 3),
        "ratio_429_vs_ideal": round(storm["rows_per_s"] / ideal, 3),
        "ratio_vs_raw": round(clean["rows_per_s"] / raw, 3),
        "goal_vs_ideal": 0.90, "goal_429_vs_ideal": 0.70,
    })
    out["meets_goals"] = out["ratio_vs_ideal"] >= 0.90 and out["ratio_429_vs_ideal"] >= 0.70
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
