"""Length and cap statistics, length ratios and the length filter, on R1-shaped outputs."""

import pytest

from trace_inversion.scoring.lengths import (WORD_UNIT, WORDS, LengthCounter, cap_hit, length_counter, length_ratios,
                                             length_stats, length_verdict, output_length, quantile, summarize_lengths,
                                             tokenizer_source, word_count)

# an R1-style output (the chat template wrote the opening tag, so the text may lack it)
COMPLETE = ("<think>\nOkay, so I need to evaluate 3 + 4 first. 3 + 4 = 7. Then multiply by 7: 49, "
            "which is 9 mod 10.\n</think>\n\nThe answer is \\boxed{9}.")
NO_OPEN_TAG = "Okay, let me see. 2 * 3 = 6.\n</think>\n\n**Answer:** \\boxed{6}"
TRUNCATED = "<think>\nOkay, so I need to find the derivative. Let me think. Wait, let me re-check that. Wait,"
TRUNCATED_NO_TAG = "Okay, so the integral is hard. Let me try substitution u = x^2. Then du = 2x dx. Wait,"


def test_word_count_is_a_whitespace_split():
    assert word_count("a  b\nc\t d") == 4 and word_count("") == 0 and word_count(None) == 0
    assert WORDS.unit == WORD_UNIT and WORDS.short == "words" and not WORDS.model_tokens


@pytest.mark.parametrize("output,finish,think,expect", [
    (COMPLETE, "stop", True, False),
    (COMPLETE, None, False, False),                # a closed think block: not cut in the trace
    (NO_OPEN_TAG, None, True, False),
    (TRUNCATED, "length", True, True),
    (TRUNCATED, None, False, True),                # opened, never closed
    (TRUNCATED, "stop", False, True),              # stopped inside the think block: counted as truncated
    (TRUNCATED_NO_TAG, None, True, True),          # a reasoning model's output without </think>
    (TRUNCATED_NO_TAG, None, False, None),         # plain text, no finish reason: cannot tell
    ("start 3\nadd 4 -> 7", "stop", False, False),  # an inverter's plain trace
    ("start 3\nadd 4 -> 7", "length", False, True),
    (None, None, False, None),                     # no generation
])
def test_cap_hit(output, finish, think, expect):
    assert cap_hit(output, finish, think) is expect


def test_cap_hit_from_the_cap_when_no_finish_reason():
    assert cap_hit("a b c", None, False, length=8, cap=8) is True
    assert cap_hit("a b c", None, False, length=7, cap=8) is None
    assert cap_hit("a b c", "stop", False, length=8, cap=8) is False  # the backend's word wins


def test_output_length_prefers_the_backends_own_token_count():
    tokens = LengthCounter("tokens (x tokenizer)", lambda t: 2 * word_count(t), "tokens")
    cut = {"answer": TRUNCATED, "finish_reason": "length", "usage": {"input_tokens": 40, "output_tokens": 32}}
    assert output_length(TRUNCATED, cut, tokens) == 32  # what the cap limited, not a re-tokenization
    assert output_length(TRUNCATED, cut, WORDS) == word_count(TRUNCATED)  # words: never mixed with tokens
    assert output_length(TRUNCATED, {"usage": {}}, tokens) == 2 * word_count(TRUNCATED)
    assert output_length(TRUNCATED, dict(cut, samples=[{}, {}]), tokens) == 2 * word_count(TRUNCATED)  # a sum over n
    assert output_length(None, cut, tokens) is None


def test_quantile_interpolates_like_numpy():
    assert quantile([], 0.5) is None
    assert quantile([5], 0.9) == 5
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile(list(range(1, 11)), 0.9) == pytest.approx(9.1)


def test_length_stats_on_surrogate_outputs():
    texts = [COMPLETE, NO_OPEN_TAG, TRUNCATED, TRUNCATED_NO_TAG, None]
    st = length_stats(texts, ["stop", "stop", "length", None, None], cap=32768, think=True)
    lens = sorted(word_count(t) for t in texts if t)
    assert st["n"] == 4 and st["unit"] == WORD_UNIT and st["cap"] == 32768
    assert st["median"] == quantile(lens, 0.5) and st["p90"] == quantile(lens, 0.9) and st["max"] == lens[-1]
    assert st["cap_hits"] == 2 and st["cap_hit_rate"] == 0.5 and st["cap_unknown"] == 0
    empty = length_stats([], [])
    assert empty["n"] == 0 and empty["median"] is None and empty["cap_hit_rate"] is None


def test_length_stats_says_when_the_cap_cannot_be_told():
    st = length_stats(["start 3\nadd 4 -> 7", "step one. step two."], [None, None])
    assert st["cap_unknown"] == 2 and st["cap_hit_rate"] is None and st["n"] == 2


def test_summarize_lengths_of_counted_draws():
    st = summarize_lengths([10, 40, None, 20], [False, True, None, None], "tokens (x tokenizer)", cap=40)
    assert st["n"] == 3 and st["cap_hits"] == 1 and st["cap_hit_rate"] == 0.5 and st["cap_unknown"] == 1
    assert st["median"] == 20 and st["unit"] == "tokens (x tokenizer)"


def test_length_ratios():
    r = length_ratios([22, 26, None, 10, 5], [10, 10, 10, 0, None])
    assert r["n"] == 2 and r["median_ratio"] == 2.4 and r["ratio_of_medians"] == 2.4 and r["p90_ratio"] == 2.56
    assert length_ratios([], [])["median_ratio"] is None and length_ratios([], [])["ratio_of_medians"] is None
    # other problems (the surrogate's traces): only a ratio of medians
    u = length_ratios([30, 50, None], [10, 20, 30, 40], paired=False)
    assert u == {"n": 2, "n_reference": 4, "median_ratio": None, "p90_ratio": None, "ratio_of_medians": 1.6}


def test_length_verdict():
    assert length_verdict(1200, 500, None) == (True, "length filter off")
    assert length_verdict(1200, 500, 2.0, "tokens") == (False, "too long: 1200 tokens > 2 x reference 500")
    assert length_verdict(1000, 500, 2.0)[0] is True
    assert length_verdict(1000, None, 2.0) == (None, "length: no reference length")
    assert length_verdict(None, 500, 2.0)[0] is None


def test_tokenizer_source(tmp_path):
    assert tokenizer_source("toy-inverter", "toy") is None
    assert tokenizer_source("gpt-5-mini", "openai-responses") is None
    assert tokenizer_source("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "openai-chat") is None  # served elsewhere
    r1 = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert tokenizer_source(r1, "vllm") == tokenizer_source(r1, "transformers") == r1  # from the local Hub cache
    assert tokenizer_source(str(tmp_path), "transformers") is None  # a folder without a tokenizer
    (tmp_path / "tokenizer.json").write_text("{}")
    assert tokenizer_source(str(tmp_path), "openai-chat") == str(tmp_path)


def test_counter_falls_back_to_words_offline():
    assert length_counter("toy-inverter", "toy") is WORDS
    # a Hub id that is not in the local cache: nothing is downloaded, words are counted
    assert length_counter("no-such-org/no-such-model-xyz", "vllm") is WORDS


def test_counter_uses_a_local_models_own_tokenizer(tmp_path):
    from trace_inversion.toy.tiny_models import train_tokenizer

    corpus = [COMPLETE, NO_OPEN_TAG, TRUNCATED] * 20
    tok = train_tokenizer(corpus, vocab_size=300)
    folder = tmp_path / "tiny-model"
    tok.save_pretrained(folder)
    c = length_counter(str(folder), "transformers")
    assert c.model_tokens and c.unit == "tokens (tiny-model tokenizer)" and c.short == "tokens"
    assert c.count(COMPLETE) == len(tok.encode(COMPLETE, add_special_tokens=False)) != word_count(COMPLETE)
    reported = length_stats([COMPLETE, TRUNCATED], ["stop", "length"], counter=c, cap=7, output_tokens=[None, 7])
    assert reported["median"] == quantile([c.count(COMPLETE), 7], 0.5)  # the backend's count where it gave one
    assert reported["cap_hits"] == 1
    assert length_stats([COMPLETE], ["stop"], output_tokens=[64])["max"] == word_count(COMPLETE)  # words stay words
    st = length_stats([COMPLETE, TRUNCATED], [None, None], counter=c, cap=4096, think=True)
    assert st["unit"] == c.unit and st["cap_hits"] == 1
    assert st["median"] == quantile([c.count(COMPLETE), c.count(TRUNCATED)], 0.5)
    # no finish reason and no think block: reaching the cap in model tokens is a cap hit
    plain = "start 3\nadd 4 -> 7\nmul 7 -> 9"
    st = length_stats([plain], [None], counter=c, cap=c.count(plain))
    assert st["cap_hits"] == 1 and st["cap_unknown"] == 0
    assert length_stats([plain], [None], cap=1)["cap_unknown"] == 1  # in words the cap cannot be compared
