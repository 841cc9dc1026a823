"""The request cache: stable keys, durable entries, replay, process safety, scrubbing."""

import multiprocessing as mp

from trace_inversion.models.cache import RequestCache, request_key


def payload(text="hi", temperature=0.7, n=1):
    return {"messages": [{"role": "user", "content": text}], "params": {"temperature": temperature, "top_p": 0.9}, "n": n}


def test_key_depends_on_model_messages_params_and_n():
    k = request_key("openai-chat", "m", payload())
    assert k == request_key("openai-chat", "m", payload())
    assert k != request_key("openai-chat", "m2", payload())
    assert k != request_key("openai-chat", "m", payload(text="ho"))
    assert k != request_key("openai-chat", "m", payload(temperature=0.5))
    assert k != request_key("openai-chat", "m", payload(n=4))
    assert k != request_key("toy", "m", payload())
    # dict order and None-valued params do not change the key
    p = payload()
    p["params"] = {"top_p": 0.9, "temperature": 0.7, "seed": None}
    assert k == request_key("openai-chat", "m", p)


def test_miss_then_hit_and_persistence(tmp_path):
    calls = []
    c = RequestCache(tmp_path / "c.sqlite")
    r, cached = c.call("toy", "m", payload(), lambda: calls.append(1) or {"answer": "7"})
    assert (r, cached) == ({"answer": "7"}, False)
    r, cached = c.call("toy", "m", payload(), lambda: calls.append(1) or {"answer": "8"})
    assert (r, cached) == ({"answer": "7"}, True)
    assert calls == [1] and (c.hits, c.misses) == (1, 1)
    c.close()
    c2 = RequestCache(tmp_path / "c.sqlite")  # a new process would see the same
    assert c2.call("toy", "m", payload(), lambda: 1 / 0)[0] == {"answer": "7"}
    assert len(c2) == 1


def test_failed_call_is_not_cached(tmp_path):
    c = RequestCache(tmp_path / "c.sqlite")

    def boom():
        raise RuntimeError("429")

    try:
        c.call("toy", "m", payload(), boom)
    except RuntimeError:
        pass
    assert len(c) == 0
    assert c.call("toy", "m", payload(), lambda: {"ok": 1}) == ({"ok": 1}, False)


def _writer(path, start, n):
    c = RequestCache(path)
    for i in range(start, start + n):
        c.call("toy", "m", payload(str(i)), lambda i=i: {"v": i})


def test_concurrent_processes_write_safely(tmp_path):
    path = str(tmp_path / "c.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k * 50, 100)) for k in range(3)]  # overlapping ranges
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    c = RequestCache(path)
    assert len(c) == 200
    assert c.call("toy", "m", payload("120"), lambda: 1 / 0)[0] == {"v": 120}


def test_secrets_scrubbed_on_write(tmp_path, monkeypatch):
    secret = "sk-live-" + "a" * 40
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    c = RequestCache(tmp_path / "c.sqlite")
    c.call("toy", "m", payload(f"my key is {secret}"), lambda: {"echo": secret})
    c.close()
    raw = (tmp_path / "c.sqlite").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("c.sqlite-*"))
    assert secret.encode() not in raw


def test_a_retrained_local_model_never_replays_the_old_models_outputs(tmp_path):
    """Request keys of local engines carry the model folder's file signature."""
    import os

    from trace_inversion.models.cache import model_signature
    from trace_inversion.config import ModelConfig
    from trace_inversion.models.transformers import TransformersLLM

    model = tmp_path / "student"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights v1")
    assert model_signature("org/some-model-id") is None
    cache = RequestCache(tmp_path / "c.sqlite")
    cfg = ModelConfig(backend="transformers", model=str(model))
    key1 = TransformersLLM.from_config(cfg).model_key
    assert key1 == TransformersLLM.from_config(cfg).model_key  # same weights: cache hits on a rerun
    (model / "model.safetensors").write_bytes(b"weights v2")  # retrained into the same folder
    st = os.stat(model / "model.safetensors")
    os.utime(model / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert TransformersLLM.from_config(cfg).model_key != key1
