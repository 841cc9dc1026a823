"""Pure helpers shared by the pipelines: Ray step resources and stage fingerprints."""

from trace_inversion.config import load_config
from trace_inversion.pipelines.common import step_resources
from trace_inversion.pipelines.stage import stage_fingerprint


def _cfg(tmp_path, **over):
    base = {"models": {"inverter": {"backend": "vllm", "model": str(tmp_path), "tensor_parallel_size": 4}},
            "output": {"dir": str(tmp_path / "out")}}
    base.update(over)
    return load_config(None, base)


def test_ray_resources_follow_tensor_parallel_size_and_replicas(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    local = step_resources(_cfg(tmp_path), "inverter")
    # local runs: distilabel's process pool, and its device placement gives the role its
    # tensor_parallel_size devices of its own
    assert local.replicas == 1 and local.gpus == 4
    ray = step_resources(_cfg(tmp_path, runtime={"ray": True, "replicas": 3}), "inverter")
    assert ray.replicas == 3 and ray.gpus == 4
    toy = step_resources(_cfg(tmp_path, runtime={"ray": True}), "target")
    assert toy.gpus is None


def test_fingerprint_ignores_where_it_runs_but_not_what_it_computes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    rows = [{"id": "1", "problem": "p"}]
    a = stage_fingerprint(_cfg(tmp_path), "invert", rows)
    assert a == stage_fingerprint(_cfg(tmp_path, runtime={"ray": True, "ray_address": "auto"}), "invert", rows)
    assert a != stage_fingerprint(_cfg(tmp_path, seed=1), "invert", rows)
    assert a != stage_fingerprint(_cfg(tmp_path), "invert", rows + [{"id": "2", "problem": "q"}])
    (tmp_path / "model.safetensors").write_bytes(b"retrained weights")  # same folder, new model
    assert a != stage_fingerprint(_cfg(tmp_path), "invert", rows)


def test_a_vllm_step_batch_fills_the_sequences_its_engine_runs_at_once(tmp_path):
    """Local backends get batches of 256 rows; a vLLM engine told to run more sequences
    at once (engine_kwargs.max_num_seqs) gets batches that large, or it never could."""
    from trace_inversion.pipelines.common import step_kwargs

    (tmp_path / "config.json").write_text("{}")
    assert step_kwargs(_cfg(tmp_path), "inverter", 10)["input_batch_size"] == 256
    wide = {"inverter": {"backend": "vllm", "model": str(tmp_path), "engine_kwargs": {"max_num_seqs": 1024}}}
    assert step_kwargs(_cfg(tmp_path, models=wide), "inverter", 10)["input_batch_size"] == 1024
    narrow = {"inverter": {"backend": "vllm", "model": str(tmp_path), "engine_kwargs": {"max_num_seqs": 8}}}
    assert step_kwargs(_cfg(tmp_path, models=narrow), "inverter", 10)["input_batch_size"] == 256
