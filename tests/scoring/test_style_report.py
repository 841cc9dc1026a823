"""Style report on fixed fixture texts: exact figures."""

from trace_inversion.scoring.style_report import count_tokens, format_report, style_report

BUBBLES = "1. I set x = 2.\n2. Then $x^2 = 4$."
RECAP = "**Setting up**\nI started with the equation.\n\n**Checking**\nMy check used \\frac{1}{2}."
PLAIN = "step 2 gives 9; step 4 gives 6."


def test_token_rule():
    assert count_tokens("I set x = 2.") == 6  # I, set, x, =, 2, .
    assert count_tokens("") == 0


def test_exact_figures_on_fixtures():
    r = style_report([BUBBLES, RECAP, PLAIN, "", None], traces=["a " * 40, "b " * 100, "c " * 30, None, None])
    assert r["n"] == 3 and r["n_empty"] == 2
    toks = [count_tokens(BUBBLES), count_tokens(RECAP), count_tokens(PLAIN)]
    # counted by hand: "1 . I set x = 2 . 2 . Then $ x ^ 2 = 4 $ ." = 19;
    # "* * Setting up * * I started with the equation . * * Checking * * My check used \ frac { 1 } { 2 } ." = 29;
    # "step 2 gives 9 ; step 4 gives 6 ." = 10
    assert toks == [19, 29, 10]
    assert r["median_tokens"] == 19
    assert r["mean_tokens"] == round(58 / 3, 2)
    assert r["share_bold_headers"] == round(1 / 3, 4)
    assert r["share_first_person"] == round(2 / 3, 4)  # "I set", "I started" / "My"
    assert r["share_latex"] == round(2 / 3, 4)  # $x^2 = 4$, \frac
    assert r["share_numbered_list"] == round(1 / 3, 4)
    assert r["median_compression"] == round(10 / 30, 4)  # median of 19/40, 29/100, 10/30


def test_empty_and_table():
    assert style_report([]) == {"n": 0, "n_empty": 0}
    table = format_report({"compressor": style_report([PLAIN]), "target": style_report([RECAP])})
    assert table.splitlines()[0].startswith("| source | n | median_tokens")
    assert "| target | 1 | 29 | 1.0 |" in table
