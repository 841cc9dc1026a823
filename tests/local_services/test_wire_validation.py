"""The wire: the local server checks request bodies the way OpenAI's services (or a vLLM
server) do, answers with realistic payloads, and every config the README's "Real use"
section shows runs against it with 0 rejected requests."""

import email.utils
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from trace_inversion.config import OPENAI_CHAT_FIELDS, OPENAI_RESPONSES_FIELDS, deep_merge, is_openai_url
from trace_inversion.toy.world import ToyWorld

README = Path(__file__).resolve().parents[2] / "README.md"
PROBLEM = ToyWorld().problems(1)[0]


def post(srv, path: str, body: dict) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a raw POST: what the service answers, no client in between."""
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer EMPTY"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def chat(model="toy-target", **kw):
    return {"model": model, "messages": [{"role": "user", "content": PROBLEM.text}], **kw}


def responses(model="toy-target", **kw):
    return {"model": model, "input": [{"role": "user", "content": PROBLEM.text}], **kw}


def test_the_accepted_fields_are_the_sdks_create_parameters():
    """What the server (and the config check) accept is what the OpenAI SDK can send."""
    from openai.types.chat.completion_create_params import CompletionCreateParamsBase
    from openai.types.responses.response_create_params import ResponseCreateParamsBase

    def keys(td):
        return set(td.__required_keys__) | set(td.__optional_keys__)

    assert set(OPENAI_RESPONSES_FIELDS) == keys(ResponseCreateParamsBase) | {"stream"}
    assert set(OPENAI_CHAT_FIELDS) == keys(CompletionCreateParamsBase) | {"stream"}


@pytest.mark.parametrize("path,body,message", [
    # the paper's inversion preset, as the chat backend used to send it to any server
    ("/v1/chat/completions", chat(temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.05, max_tokens=8192),
     "Unrecognized request argument supplied: top_k"),
    ("/v1/responses", responses(top_k=50), "Unrecognized request argument supplied: top_k"),
    ("/v1/responses", responses(seed=1), "Unrecognized request argument supplied: seed"),
    ("/v1/responses", responses(n=2), "Unrecognized request argument supplied: n"),
    ("/v1/responses", responses("gpt-5-mini", temperature=0.7), "Unsupported parameter: 'temperature'"),
    ("/v1/responses", responses("o3", top_p=0.9), "Unsupported parameter: 'top_p'"),
    ("/v1/responses", responses("gpt-4o", reasoning={"effort": "medium"}), "'reasoning.effort' is not supported"),
    ("/v1/responses", responses(max_output_tokens=8), "Expected a value >= 16"),
    ("/v1/responses", responses(reasoning={"effort": "max"}), "Invalid value"),
    ("/v1/chat/completions", chat("o4-mini", temperature=0.7), "Only the default (1) value is supported"),
    ("/v1/chat/completions", chat("gpt-5", max_tokens=100), "Use 'max_completion_tokens' instead"),
])
def test_openai_flavor_rejects_what_the_services_reject(toy_server, path, body, message):
    srv = toy_server()
    status, data, _ = post(srv, path, body)
    assert status == 400 and message in data["error"]["message"] and data["error"]["type"] == "invalid_request_error"
    st = srv.stats()
    assert st["rejected"] == 1 and st["billed"] == {}  # refused before any work: not billed


def test_openai_flavor_accepts_what_the_services_accept(toy_server):
    srv = toy_server()
    for path, body in [
        ("/v1/responses", responses("gpt-5-mini", max_output_tokens=32768, store=False,
                                    reasoning={"effort": "medium", "summary": "auto"})),
        ("/v1/responses", responses("gpt-4.1", temperature=0.2, top_p=0.5, max_output_tokens=100)),
        ("/v1/chat/completions", chat("o4-mini", max_completion_tokens=1000, seed=3, temperature=1)),
        ("/v1/chat/completions", chat("gpt-4o", temperature=0.0, max_tokens=50, n=2, store=False)),
    ]:
        status, data, _ = post(srv, path, body)
        assert status == 200, data
    assert srv.stats()["rejected"] == 0


def test_vllm_flavor_takes_its_extras_and_ignores_unknown_fields(toy_server):
    srv = toy_server(flavor="vllm")
    status, data, _ = post(srv, "/v1/chat/completions", chat(top_k=20, repetition_penalty=1.05, min_p=0.05,
                                                             chat_template_kwargs={"enable_thinking": True}))
    assert status == 200
    status, _, _ = post(srv, "/v1/chat/completions", chat(made_up_field=1))
    assert status == 200  # vLLM only logs what it ignores ...
    st = srv.stats()
    assert st["rejected"] == 0 and st["ignored_fields"] == {"made_up_field": 1}  # ... the server counts it


def test_realistic_payloads(toy_server):
    w = ToyWorld()
    r = w.target_response(PROBLEM)
    srv = toy_server()
    _, data, _ = post(srv, "/v1/responses", responses(reasoning={"effort": "medium", "summary": "auto"}))
    parts = data["output"][0]["summary"]
    assert data["status"] == "completed" and data["incomplete_details"] is None
    assert len(parts) >= 2 and "; ".join(p["text"] for p in parts) == r["summary"]  # several summary parts
    _, data, _ = post(srv, "/v1/responses", responses(max_output_tokens=16))  # reasoning exhausts the cap
    assert data["status"] == "incomplete" and data["incomplete_details"] == {"reason": "max_output_tokens"}
    assert data["usage"]["output_tokens"] == 16 and all(o["type"] != "message" for o in data["output"])
    _, data, _ = post(srv, "/v1/chat/completions", chat())
    assert "reasoning_content" not in data["choices"][0]["message"]  # OpenAI's chat API shows no reasoning
    vsrv = toy_server(flavor="vllm")
    _, data, _ = post(vsrv, "/v1/chat/completions", chat())
    assert data["choices"][0]["message"]["reasoning_content"] == r["hidden_trace"]  # a full trace
    _, data, _ = post(vsrv, "/v1/chat/completions", chat(max_tokens=4))
    c = data["choices"][0]
    assert c["finish_reason"] == "length" and c["message"]["content"] == "" and data["usage"]["completion_tokens"] == 4
    assert r["hidden_trace"].startswith(c["message"]["reasoning_content"])
    fsrv = toy_server(p_content_filter=1.0)
    _, data, _ = post(fsrv, "/v1/responses", responses())
    assert data["status"] == "incomplete" and data["incomplete_details"] == {"reason": "content_filter"}


@pytest.mark.parametrize("form", ["seconds", "ms", "date"])
def test_retry_after_headers_in_three_forms(toy_server, form):
    srv = toy_server(fail_first=1, retry_after=30, retry_after_form=form)
    status, _, headers = post(srv, "/v1/responses", responses())
    assert status == 429
    h = {k.lower(): v for k, v in headers.items()}
    if form == "seconds":
        assert h["retry-after"] == "30.0"
    elif form == "ms":
        assert h["retry-after-ms"] == "30000" and "retry-after" not in h
    else:
        when = email.utils.parsedate_to_datetime(h["retry-after"]).timestamp()
        assert 28 <= when - time.time() <= 31


# ----------------------------------------------------------------------------- the README's configs
TOY_ROLE = {"target": "toy-target", "surrogate": "toy-surrogate", "compressor": "toy-compressor",
            "inverter": "toy-inverter"}


def readme_yaml_blocks() -> list[dict]:
    text = README.read_text()
    section = text[text.index("## Real use"):text.index("\n## ", text.index("## Real use") + 5)]
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]


def readme_configs() -> list[dict]:
    """The README's run configs (its audit policies files are checked on their own)."""
    return [b for b in readme_yaml_blocks() if "policies" not in b]


def test_the_readme_audit_policies_files_load_and_merge_into_a_valid_config(tmp_path, monkeypatch):
    """Each README policies file reads with the audit's loader, and every policy's `set`
    merged into the embedded default is a valid run config (files it names created)."""
    from trace_inversion.pipelines.audit_policies import load_policy_config, read_policies_file

    blocks = [b for b in readme_yaml_blocks() if "policies" in b]
    assert blocks
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks):
        for item in block["policies"]:
            for section in (item.get("set") or {}).values():
                for v in (section.values() if isinstance(section, dict) else []):
                    if isinstance(v, str) and v.endswith(".txt"):
                        Path(v).parent.mkdir(parents=True, exist_ok=True)
                        Path(v).write_text("Summarise the reasoning below in two sentences.\n")
        f = tmp_path / f"policies{i}.yaml"
        f.write_text(yaml.safe_dump(block))
        policies = read_policies_file(str(f))
        assert [p.name for p in policies] == [it["name"] for it in block["policies"]]
        for pol in policies:
            load_policy_config(None, pol.overrides, pol)


def test_the_readme_shows_both_target_set_ups():
    blocks = readme_configs()
    targets = [b["models"]["target"] for b in blocks if "target" in (b.get("models") or {})]
    assert {t["backend"] for t in targets} == {"openai-responses", "openai-chat"}
    chat = next(b for b in blocks if (b.get("models") or {}).get("target", {}).get("backend") == "openai-chat")
    assert chat["query"]["summarize_traces_with"] == "compressor" and "compressor" in chat["models"]


def localise(block: dict, servers: dict, data: Path, out: Path, names: list) -> dict:
    """A README block as the test runs it: API models point at the local server (OpenAI's
    API -> the openai flavor, any other server -> the vllm flavor), local models (vLLM on a
    GPU) are played by the toy world, data is a local file of toy problems."""
    b = json.loads(json.dumps(block))
    for role, m in (b.get("models") or {}).items():
        if m is None:
            continue
        if m["backend"] in ("openai-responses", "openai-chat"):
            m["base_url"] = servers["openai" if is_openai_url(m.get("base_url")) else "vllm"].base_url
        elif m["backend"] in ("vllm", "transformers") and role in TOY_ROLE:
            b["models"][role] = {"backend": "toy", "model": TOY_ROLE[role]}
    if "data" in b:
        b["data"]["source"] = str(data)
    if "output" in b:
        b["output"]["dir"] = str(out / b["name"])
        names.append(b["output"]["dir"])
    if (b.get("inverter_data") or {}).get("target_release"):
        b["inverter_data"]["target_release"] = str(Path(names[0]) / "target_query")
    return b


@pytest.mark.slow
def test_every_readme_config_runs_against_the_wire_with_no_rejected_request(toy_server, tmp_path, monkeypatch):
    import polars as pl

    from trace_inversion.config import parse_config
    from trace_inversion.data.loading import load_rows
    from trace_inversion.pipelines.query_target import dry_run, run_query_target

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + "w" * 40)
    servers = {"openai": toy_server(), "vllm": toy_server(flavor="vllm")}
    data = tmp_path / "my_problems.parquet"
    pl.DataFrame([{"id": f"p{i}", "problem": p.text} for i, p in enumerate(ToyWorld().problems(20))]).write_parquet(data)
    names: list = []
    base = None
    ran = []
    for block in readme_configs():
        b = localise(block, servers, data, tmp_path / "runs", names)
        if "name" in b:  # a whole run: query its target
            cfg = parse_config(b)
            est = dry_run(cfg, load_rows(cfg.data))  # the README's --dry-run: nothing sent
            assert est["rows_to_send"] == 20 and est["worst_case_cost_usd"] is not None
            stats = run_query_target(cfg)
            assert stats["rows_out"] == 20 and stats["failures"] == 0, stats
            ran.append(("query-target", cfg.models.target.backend))
            out = pl.read_parquet(next((Path(cfg.output.dir) / "target_query" / "data" / "target").glob("*.parquet")))
            if cfg.query.summarize_traces_with == "compressor":
                assert out["target_trace"].null_count() == 0 and out["target_summary"].null_count() == 0
            else:
                assert out["target_summary"].null_count() == 0
            base = base or b
        else:  # a fragment added to the first run's config
            cfg = parse_config(deep_merge(base, b))
            if "inverter" in (b.get("models") or {}) or "invert" in b:
                from trace_inversion.pipelines.invert import load_inversion_rows, run_invert

                run_invert(cfg, load_inversion_rows(cfg))
                ran.append(("invert", None))
            else:
                from trace_inversion.pipelines.build_inverter_data import run_build_inverter_data

                stats = run_build_inverter_data(cfg, load_rows(cfg.data))
                assert stats["rows_out"] == 20, stats
                ran.append(("build-inverter-data", None))
    assert ("query-target", "openai-responses") in ran and ("query-target", "openai-chat") in ran
    for flavor, srv in servers.items():
        st = srv.stats()
        assert st["rejected"] == 0 and st["ignored_fields"] == {}, (flavor, st["rejected_reasons"])
    seen = servers["openai"].stats()["fields_seen"]
    assert {"max_output_tokens", "store", "reasoning"} <= set(seen) and "temperature" not in seen
    assert servers["vllm"].stats()["fields_seen"].get("top_k") == 20  # from extra_body, as the README says
