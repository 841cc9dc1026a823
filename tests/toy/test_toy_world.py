"""The toy world: determinism, correct target, lossy summary, systematically weak surrogate."""

from trace_inversion.toy.world import (OP_NAMES, ToyWorld, apply, boxed_value, check_steps, parse_problem, trace_final_value,
                                       trace_values)


def test_deterministic_by_seed():
    a, b, c = ToyWorld(seed=1), ToyWorld(seed=1), ToyWorld(seed=2)
    assert [p.text for p in a.problems(50)] == [p.text for p in b.problems(50)]
    assert [p.text for p in a.problems(50)] != [p.text for p in c.problems(50)]
    pa = a.problems(20)
    assert [a.surrogate_response(p) for p in pa] == [b.surrogate_response(p) for p in pa]


def test_problem_text_roundtrip_and_known_answer():
    p = parse_problem("Evaluate left to right modulo 10: 3 + 4 * 7 - 2", "x")
    assert p.values() == [7, 9, 7] and p.answer == 7
    w = ToyWorld(summary_every=2)
    r = w.target_response(p)
    assert r["hidden_trace"] == "3+4=7\n7*7=9\n9-2=7"
    assert boxed_value(r["answer"]) == "7"
    assert r["summary"] == "step 2 gives 9."  # lossy: only every 2nd running value
    for q in ToyWorld(seed=3).problems(100):
        assert parse_problem(q.text, q.id) == q
    assert parse_problem("What is 2+2?") is None


def test_train_and_test_are_disjoint():
    train, test = ToyWorld(seed=0, n_ops=2, modulus=3).splits(30, 30)
    assert not {p.text for p in train} & {p.text for p in test}
    assert len({p.text for p in test}) == 30


def test_target_always_right_and_steps_check():
    w = ToyWorld(seed=0)
    for p in w.problems(200):
        trace = w.target_trace(p)
        assert trace_final_value(trace) == p.answer
        assert check_steps(p, trace)["all_correct"]


def test_surrogate_is_systematically_weaker():
    w = ToyWorld(seed=0, n_ops=6, surrogate_reliable_steps=3, surrogate_error_rate=0.3)
    probs = w.problems(1000)
    checks = []
    for p in probs:
        trace, ans = w.surrogate_trace(p)
        assert trace.startswith(f"{p.start}{p.steps[0][0]}{p.steps[0][1]}->")  # not the target's "a+b=c"
        c = check_steps(p, trace)
        checks.append(c)
        assert c["first_error"] is None or c["first_error"] >= 3  # never wrong on the reliable prefix
        assert trace_final_value(trace) == ans
    wrong = sum(not c["all_correct"] for c in checks) / len(checks)
    assert 0.55 < wrong < 0.75  # 1 - 0.7**3 = 0.657
    perfect = ToyWorld(seed=0, surrogate_error_rate=0.0)
    assert all(check_steps(p, perfect.surrogate_trace(p)[0])["all_correct"] for p in probs[:100])


def test_check_steps_finds_the_first_wrong_step():
    p = parse_problem("Evaluate left to right modulo 10: 3 + 4 * 7 - 2", "x")
    assert check_steps(p, "3+4=7\n7*7=8\n8-2=6") == {"steps": 3, "correct": 2, "all_correct": False, "first_error": 1}
    assert check_steps(p, "3+4=7\n7*7=9") ["all_correct"] is False  # truncated
    assert check_steps(p, "")["steps"] == 0


def test_compressor_matches_target_summary_style():
    w = ToyWorld(seed=0)
    for p in w.problems(20):
        assert w.compress(w.target_trace(p)) == w.target_response(p)["summary"]
        s_trace, _ = w.surrogate_trace(p)
        assert trace_values(s_trace)[:3] == p.values()[:3]


def test_systematic_surrogate_errors_are_fixed_per_fact():
    """'systematic': a fixed share of facts (a op b) is always wrong the same way late in a
    chain, so a student cannot average the errors out (unlike 'random')."""
    w = ToyWorld(seed=0, n_ops=6, surrogate_reliable_steps=3, surrogate_error_rate=0.3, surrogate_errors="systematic")
    seen: dict = {}
    for p in w.problems(1500):
        trace, ans = w.surrogate_trace(p)
        c = check_steps(p, trace)
        assert c["first_error"] is None or c["first_error"] >= 3  # the reliable prefix stays right
        assert trace_final_value(trace) == ans
        for line in trace.splitlines()[3:]:
            fact, value = line.split("->")
            assert seen.setdefault(fact, value) == value  # the same fact, the same answer, every time
    wrong = sum(1 for f, v in seen.items() if int(v) != apply(int(f[0]), f[1], int(f[2:]), 10)) / len(seen)
    assert 0.2 < wrong < 0.4 and len(seen) == 300  # 30% of the 300 facts, all facts seen


def test_summary_policy_reveals_the_steps_it_names():
    p = parse_problem("Evaluate left to right modulo 10: 3 + 4 * 7 - 2 + 5 * 3", "x")  # values 7 9 7 2 6
    assert ToyWorld(summary_every=0).target_response(p)["summary"] == ""  # no summary at all
    assert ToyWorld(summary_every=1).target_response(p)["summary"] == (
        "step 1 gives 7; step 2 gives 9; step 3 gives 7; step 4 gives 2; step 5 gives 6.")
    w = ToyWorld(summary_every=3, summary_offset=1, summary_style="is")
    assert w.target_response(p)["summary"] == "after step 1 the value is 7; after step 4 the value is 2."
    assert w.revealed_steps(5) == [1, 4]


def test_the_compressor_differs_from_the_target_only_where_configured():
    """By default the compressor is the target's summariser; its own fields change the
    steps it reveals, its phrasing, and drop values (never all of them)."""
    same = ToyWorld(seed=0, n_ops=5)
    gap = ToyWorld(seed=0, n_ops=5, compressor_every=1, compressor_style="is", compressor_drop=0.5)
    assert gap.revealed_steps() == [2, 4] and gap.revealed_steps(compressor=True) == [1, 2, 3, 4, 5]
    seen, dropped = set(), 0
    for p in same.problems(300):
        t = same.target_trace(p)
        assert same.compress(t) == same.target_response(p)["summary"]
        s = gap.compress(t)
        assert s and "gives" not in s and gap.compress(t) == s  # deterministic, never empty, its own phrasing
        from trace_inversion.toy.world import _summary_values

        pairs = _summary_values(s)
        assert all(p.values()[i - 1] == v for i, v in pairs)  # only true values, of any step
        seen |= {i for i, _ in pairs}
        dropped += 5 - len(pairs)
    assert seen == {1, 2, 3, 4, 5} and 0.35 < dropped / 1500 < 0.6


def test_surrogate_misconceptions_can_fall_on_hidden_steps():
    """With no reliable steps, the surrogate's systematic errors land on steps the
    target's summary does not reveal (1 and 3 of 5), not only on late ones."""
    w = ToyWorld(seed=0, n_ops=5, surrogate_errors="systematic", surrogate_reliable_steps=0, surrogate_error_rate=0.2)
    first_errors = [check_steps(p, w.surrogate_trace(p)[0])["first_error"] for p in w.problems(500)]
    assert {0, 2} <= set(first_errors)  # 0-based: steps 1 and 3
    assert 0.15 < sum(e == 0 for e in first_errors) / 500 < 0.3


def test_the_toy_inverter_reads_either_summary_style():
    p = parse_problem("Evaluate left to right modulo 10: 3 + 4 * 7 - 2", "x")
    w = ToyWorld(inverter_error_rate=1.0, inverter_forces_answer=0.0)  # wrong wherever it is not told
    trace = w.invert(p, None, "after step 1 the value is 7; step 2 gives 9.", seed=0)
    assert trace_values(trace)[:2] == [7, 9]
