"""One budget for a whole run: a ledger in the request cache shared by every process.

The cap is never exceeded, whatever the responses cost: every attempt reserves its worst
case (input-token bound x input price + output cap x output price) before it is sent and
settles what it cost; attempts the provider may have billed without telling (timeouts,
malformed 200 bodies) are counted at their reservation.
"""

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from trace_inversion.models.cache import BudgetLedger, RequestCache
from trace_inversion.models.clients import Budget, BudgetExceeded, make_client, max_cost
from trace_inversion.config import ModelConfig
from trace_inversion.toy.world import ToyWorld

PRICE = 1000.0  # USD per million tokens, in and out: a few cents a request


def target(url, **kw):
    return ModelConfig(**{"backend": "openai-responses", "model": "toy-target", "base_url": url,
                          "reasoning_effort": "medium", "reasoning_summary": "auto", "price_input_per_mtok": PRICE,
                          "price_output_per_mtok": PRICE, "sampling": {"max_new_tokens": 120}, **kw})


def billed_usd(srv) -> float:
    b = srv.stats()["billed"]
    return (b.get("input_tokens", 0) + b.get("output_tokens", 0)) * PRICE / 1e6


def test_ledger_reserves_atomically_and_exactly(tmp_path):
    led = BudgetLedger(tmp_path / "c.sqlite", "run")
    led.open(1.0)
    n = 300_000_000  # $0.30 in nano-dollars
    assert [led.try_reserve(n) for _ in range(4)] == ["ok", "ok", "ok", "wait"]  # 0.9 reserved; 0.3 more must wait
    led.settle(n, 100_000_000)  # one came back costing $0.10
    assert led.try_reserve(n) == "ok"
    for _ in range(3):
        led.settle(n, n)
    assert led.state()["spent_usd"] == pytest.approx(1.0) and led.try_reserve(1) == "refuse"
    st = led.state()
    assert st["reserved_usd"] == 0 and st["spent_usd"] == pytest.approx(1.0) and st["refused"] == 1
    led.open(2.0)  # a new run starts afresh
    assert led.state()["spent_usd"] == 0 and led.state()["cap_usd"] == 2.0
    BudgetLedger(tmp_path / "c.sqlite", "run").ensure(5.0)  # joining never resets
    assert led.state()["cap_usd"] == 2.0


def test_a_request_waits_for_reservations_in_flight_rather_than_failing(tmp_path):
    """Reservations are worst cases: a request that does not fit next to the ones in flight
    waits for them to settle (they usually cost far less) and is refused only when it
    could not fit even with nothing in flight."""
    b = Budget.shared(tmp_path / "c.sqlite", 1.0, "run")

    async def go():
        r1 = await b.reserve(0.6)
        waiter = asyncio.create_task(b.reserve(0.6))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        b.settle(r1, 0.05)
        r2 = await asyncio.wait_for(waiter, 2)
        b.settle(r2, 0.5)
        with pytest.raises(BudgetExceeded, match="budget cap reached"):
            await b.reserve(0.6)  # 0.55 spent: 0.6 more can never fit
        return b.spent

    assert asyncio.run(go()) == pytest.approx(0.55)


def test_billed_failed_attempts_are_counted(toy_server, tmp_path):
    """Timeouts and malformed 200 bodies may be billed: they count at their reservation, so
    the ledger never reads less than the provider charged."""
    srv = toy_server(p_malformed=0.3, p_timeout=0.1, timeout_stall=2, seed=5)
    cache = RequestCache(tmp_path / "c.sqlite")
    budget = Budget.shared(tmp_path / "c.sqlite", 4.0, "run")
    cfg = target(srv.base_url, concurrency=8, timeout_s=0.5, max_retries=3)
    client = make_client(cfg, cache, budget=budget)
    batch = [[{"role": "user", "content": p.text}] for p in ToyWorld().problems(60)]

    async def go():
        try:
            return await client.query_many(batch)
        finally:
            await client.aclose()

    res = asyncio.run(go())
    assert any(r.ok for r in res) and client.usage.failed_attempts_cost_usd > 0
    assert billed_usd(srv) <= budget.spent <= 4.0
    assert budget.reserved == 0


def test_query_target_dry_run_bound_is_the_reservation(tmp_path):
    cfg = target("http://127.0.0.1:1/v1")
    m = [{"role": "user", "content": "Evaluate left to right modulo 10: 3 + 4"}]
    assert max_cost(cfg, m) == pytest.approx((len(m[0]["content"].encode()) + 16 + 64 + 120) * PRICE / 1e6)
    chat = ModelConfig(backend="openai-chat", model="m", base_url="http://127.0.0.1:1/v1", price_output_per_mtok=1.0)
    assert max_cost(chat, m) is None  # no output cap sent: no bound (budget_usd then needs max_new_tokens)


WORKER = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from trace_inversion.models.cache import RequestCache
    from trace_inversion.models.clients import Budget, make_client
    from trace_inversion.config import ModelConfig
    from trace_inversion.toy.world import ToyWorld

    cfg = ModelConfig.model_validate_json(sys.argv[1])
    cache_path, seed, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    budget = Budget.shared(cache_path, float(sys.argv[5]), "run")
    client = make_client(cfg, RequestCache(cache_path), budget=budget)
    batch = [[{"role": "user", "content": p.text}] for p in ToyWorld(seed=seed).problems(n)]
    open(sys.argv[6] + f".{seed}", "w").close()  # ready
    while not os.path.exists(sys.argv[6]):  # both start together
        time.sleep(0.01)

    async def go():
        try:
            return await client.query_many(batch)
        finally:
            await client.aclose()

    res = asyncio.run(go())
    print(json.dumps({"ok": sum(r.ok for r in res), "refused": sum(1 for r in res if not r.ok and
                      r.error.startswith("budget cap reached")), "other": [r.error for r in res if not r.ok and
                      not r.error.startswith("budget cap reached")], "cost": client.usage.cost_usd}))
""")


@pytest.mark.slow
def test_two_processes_at_concurrency_32_with_variable_costs_never_exceed_the_cap(toy_server, tmp_path):
    srv = toy_server(latency=0.03, reasoning_spread=5.0, seed=2)  # reasoning 1x..6x: some responses hit the cap
    cap = 8.0
    cache_path = tmp_path / "requests.sqlite"
    BudgetLedger(cache_path, "run").open(cap)  # the run's driver
    cfg = target(srv.base_url, concurrency=32)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, cfg.model_dump_json(), str(cache_path), str(seed), "150",
                               str(cap), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (0, 1)]
    import time

    deadline = time.time() + 120
    while not all((tmp_path / f"go.{seed}").exists() for seed in (0, 1)):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    st = BudgetLedger(cache_path, "run").state()
    paid = billed_usd(srv)
    print(json.dumps({"cap": cap, "paid": paid, "ledger": st, "processes": outs}))
    assert paid <= cap and st["spent_usd"] <= cap  # the provider never charged more than the cap
    assert st["spent_usd"] == pytest.approx(paid, abs=1e-6) and st["reserved_usd"] == 0
    assert sum(o["cost"] for o in outs) == pytest.approx(paid, abs=1e-6)
    # each process alone would have spent up to the cap: together they drew on one
    assert all(o["refused"] > 0 and not o["other"] for o in outs) and sum(o["ok"] for o in outs) > 0, outs
    worst = max_cost(cfg, [{"role": "user", "content": p.text} for p in ToyWorld(seed=0).problems(1)])
    assert paid > cap - 2 * worst  # stopped only when the next worst case could no longer fit
    lengths = srv.stats()["billed"]
    assert lengths["responses"] == sum(o["ok"] for o in outs)
