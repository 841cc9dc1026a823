"""`train`: recipes parse into TRL's SFTConfig, multi-GPU launch settings reach
`accelerate launch` the way `trl sft` passes them, and no offline mode is forced.

TRL (and torch) are imported only in subprocesses: the test process stays torch-free.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trace_inversion.training import sft as training
from trace_inversion.cli import main
from trace_inversion.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
ZERO3 = (ROOT / "recipes" / "accelerate" / "deepspeed_zero3.yaml").resolve()

# Run in a subprocess with the repository root as working directory. A GPU node supports
# bf16; on a CPU machine TrainingArguments would refuse the GPU recipes' `bf16: true`, so
# the check reads "available" there (everything else is TRL's real parsing).
PARSE = r"""
import json, sys
import transformers.training_args as ta
ta.is_torch_bf16_gpu_available = lambda *a, **k: True
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from trl import ModelConfig, ScriptArguments, SFTConfig
from trl.cli.accelerate_config import resolve_accelerate_config_argument
from trl.scripts.sft import make_parser
import trl.cli.accelerate_launcher as launcher
from trl.cli.commands.base import CommandContext
from trl.cli.commands.training import TrainingCommand

out = {}
for path in sys.argv[1:]:
    script, sft, model, mixture, config_rest, cli_rest = make_parser().parse_args_and_config(
        ["--config", path], return_remaining_strings=True, separate_remaining_strings=True)
    assert isinstance(sft, SFTConfig) and isinstance(script, ScriptArguments) and isinstance(model, ModelConfig)
    launch = resolve_accelerate_config_argument(config_rest + cli_rest)
    acc = launch_command_parser().parse_args(launch + ["train.py"])
    cfg_file = acc.config_file
    if cfg_file:
        load_config_from_file(cfg_file)  # accelerate's own reader of the config
    # what `trl sft --config path` really hands to accelerate launch
    seen = {}
    launcher.launch_training_script = lambda script_name, launch_args, training_script_args: seen.update(
        launch=launch_args, script=training_script_args)
    TrainingCommand("sft").run(None, CommandContext(argv=["sft", "--config", path]))
    real = launch_command_parser().parse_args(seen["launch"] + ["train.py"])
    out[path] = {"config_rest": config_rest, "cli_rest": cli_rest, "config_file": cfg_file,
                 "num_processes": acc.num_processes, "real_config_file": real.config_file,
                 "real_num_processes": real.num_processes, "script_args": seen["script"],
                 "model": model.model_name_or_path, "dataset": script.dataset_name,
                 "dataset_config": script.dataset_config, "bf16": sft.bf16, "use_cpu": sft.use_cpu,
                 "max_length": sft.max_length, "assistant_only_loss": sft.assistant_only_loss}
print("RESULT " + json.dumps(out))
"""


def _parse(paths) -> dict:
    r = subprocess.run([sys.executable, "-c", PARSE, *map(str, paths)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_packaged_recipes_are_found_and_listed():
    names = training.list_recipes()
    assert {"inverter/qwen2.5-7b-instruct.yaml", "students/qwen2.5-7b-instruct.yaml",
            "students/llama-3.1-8b-instruct.yaml", "tiny/inverter.yaml", "tiny/student.yaml"} <= set(names)
    assert not any(n.startswith("accelerate/") for n in names)
    assert len(RECIPES) == len(names)


def test_every_recipe_parses_into_sftconfig_and_launches_as_trl_would(tmp_path):
    """Every packaged recipe, as written (from the repository root, as plain `trl sft`
    reads it) and as `train` resolves it, parses into SFTConfig + script + model args;
    its only non-TRL keys are the launcher's, and they reach `accelerate launch`."""
    resolved = []
    for p in RECIPES:
        rel = p.relative_to(ROOT / "recipes")
        out = tmp_path / f"resolved_{p.parent.name}_{p.name}"
        resolved.append(out)
        data = training.resolve_recipe(str(rel), {"model_name_or_path": "org/base-model",
                                                  "dataset_name": str(tmp_path / "data"),
                                                  "output_dir": str(tmp_path / "out")}, out)
        assert set(data) - {"accelerate_config", "num_processes"}  # plenty of TRL fields
    # as written: model/dataset may be null in the tiny recipes; fill them like `train` does
    raw = []
    for p in RECIPES:
        data = yaml.safe_load(p.read_text())
        data = {**data, "model_name_or_path": data.get("model_name_or_path") or "m",
                "dataset_name": data.get("dataset_name") or "d"}
        f = tmp_path / f"raw_{p.parent.name}_{p.name}"
        f.write_text(yaml.safe_dump(data))
        raw.append(f)
    res = _parse(resolved + raw)
    for f in resolved + raw:
        r = res[str(f)]
        assert r["cli_rest"] == []
        keys = r["config_rest"][::2]
        assert set(keys) <= {"--accelerate_config", "--num_processes"}, (f, keys)
        assert r["real_config_file"] == r["config_file"] and r["real_num_processes"] == r["num_processes"]
        assert r["script_args"][:2] == ["--config", str(f)]  # the training script reads the same YAML
        big = not r["use_cpu"]
        if big:  # the 7-8B recipes: ZeRO-3, bf16, 16,384 tokens, loss on the response only
            assert (ROOT / r["config_file"]).resolve() == ZERO3, f  # raw: relative to the repository root
            assert r["bf16"] and r["max_length"] == 16384 and r["assistant_only_loss"]
        else:
            assert r["config_file"] is None and not r["bf16"]
    for f in resolved:
        assert res[str(f)]["model"] == "org/base-model" and res[str(f)]["dataset"] == str(tmp_path / "data")


def test_accelerate_config_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root: packaged configs still resolve
    assert Path(training.resolve_accelerate_config("recipes/accelerate/deepspeed_zero3.yaml")) == ZERO3
    assert Path(training.resolve_accelerate_config("deepspeed_zero3")) == ZERO3
    assert training.resolve_accelerate_config("zero3") == "zero3"  # shipped with TRL; trl resolves it
    mine = tmp_path / "my_fsdp.yaml"
    mine.write_text("distributed_type: FSDP\n")
    assert training.resolve_accelerate_config("my_fsdp.yaml") == str(mine.resolve())
    with pytest.raises(FileNotFoundError, match="fix:"):
        training.resolve_accelerate_config("nope.yaml")
    out = tmp_path / "r.yaml"
    base = {"model_name_or_path": "m", "dataset_name": "d", "output_dir": "o"}
    data = training.resolve_recipe("students/qwen2.5-7b-instruct.yaml", base, out)
    assert Path(data["accelerate_config"]) == ZERO3 and yaml.safe_load(out.read_text())["accelerate_config"] == str(ZERO3)
    for off in ("none", "no", False):
        data = training.resolve_recipe("students/qwen2.5-7b-instruct.yaml", dict(base, accelerate_config=off), out)
        assert "accelerate_config" not in data
    data = training.resolve_recipe("tiny/student.yaml", dict(base, num_processes=2), out)
    assert data["num_processes"] == 2 and "accelerate_config" not in data
    with pytest.raises(ValueError, match="num_processes"):
        training.resolve_recipe("tiny/student.yaml", dict(base, num_processes=0), out)


def test_launcher_checks(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(UserError, match="pip install deepspeed"):
        training.check_launcher({"accelerate_config": str(ZERO3)})
    with pytest.raises(UserError, match="pip install deepspeed"):
        training.check_launcher({"accelerate_config": "zero3"})  # a TRL name is read too
    monkeypatch.setattr(importlib.util, "find_spec", real)
    with pytest.raises(UserError, match="use_cpu"):
        training.check_launcher({"accelerate_config": "multi_gpu", "use_cpu": True})
    training.check_launcher({"use_cpu": True})
    with pytest.raises(UserError, match="one process"):
        training.check_launcher({"use_cpu": True, "num_processes": 2})


# What `accelerate launch` (as `trl sft` calls it on one CPU process) really starts: its
# launch_command with subprocess.Popen recorded instead of run.
ACCELERATE_CPU = r"""
import json, os, subprocess, sys
from accelerate.commands.launch import launch_command, launch_command_parser
seen = {}
class Recorded:
    returncode = 0
    def __init__(self, cmd, env=None, **kw):
        seen.update(cmd=cmd, env=env)
    def wait(self):
        return 0
subprocess.Popen = Recorded
parent = dict(os.environ)
launch_command(launch_command_parser().parse_args(
    ["--num_processes", "1", "--num_cpu_threads_per_process", "3", "--mixed_precision", "no", "sft.py", "--config", "r.yaml"]))
print(json.dumps({"parent": parent, "cmd": seen["cmd"], "env": seen["env"]}))
"""


def test_the_direct_cpu_launch_is_what_accelerate_launch_starts():
    """On one CPU process start_sft starts TRL's sft script itself instead of `trl sft`
    (-> accelerate launch -> the script): the same interpreter, script arguments and
    environment as accelerate's own launcher gives it."""
    r = subprocess.run([sys.executable, "-c", ACCELERATE_CPU], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="7"))
    assert r.returncode == 0, r.stderr[-3000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["cmd"] == [sys.executable, "sft.py", "--config", "r.yaml"]
    assert training.cpu_launch_env(seen["parent"], 3) == seen["env"]
    assert training.sft_script().name == "sft.py" and training.sft_script().parent.name == "scripts"
    assert (training.sft_script().parent.parent / "__init__.py").exists()  # inside the installed trl


def test_a_cpu_recipe_runs_the_sft_script_with_the_launch_environment(tmp_path, monkeypatch):
    """start_sft on a use_cpu recipe: TRL's sft script on the resolved recipe, its
    threads from TRACE_INVERSION_TRAIN_THREADS, accelerate's CPU environment."""
    record = tmp_path / "call.json"
    script = tmp_path / "sft.py"
    script.write_text("import json, os, sys\n"
                      f"json.dump({{'argv': sys.argv, 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n")
    monkeypatch.setattr(training, "sft_script", lambda: script)
    data = tmp_path / "data"
    data.mkdir()
    over = {"model_name_or_path": "m", "dataset_name": str(data), "output_dir": str(tmp_path / "o")}
    res = training.start_sft("tiny/student.yaml", over, tmp_path / "o.run", env={training.TRAIN_THREADS_ENV: "2"})
    assert res.result(60)["reused"] is False
    call = json.loads(record.read_text())
    assert call["argv"] == [str(script), "--config", str(tmp_path / "o.run" / "recipe.resolved.yaml")]
    assert call["env"]["OMP_NUM_THREADS"] == "2" and call["env"]["ACCELERATE_USE_CPU"] == "False"
    assert call["env"]["ACCELERATE_MIXED_PRECISION"] == "no"


def _fake_trl(tmp_path, monkeypatch):
    """`trl` replaced by a script that records its arguments and environment."""
    record = tmp_path / "trl_call.json"
    script = tmp_path / "fake_trl.py"
    script.write_text("import json, os, sys\n"
                      f"json.dump({{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open({str(record)!r}, 'w'))\n"
                      "print(\"{'loss': 1.5, 'grad_norm': 1.0, 'learning_rate': 0.001, 'epoch': 0.1}\")\n")
    monkeypatch.setattr(training, "trl_command", lambda: [sys.executable, str(script)])
    monkeypatch.setattr(training, "check_launcher", lambda data: None)  # no DeepSpeed on this machine
    return record


def test_train_passes_accelerate_settings_and_does_not_force_offline(tmp_path, monkeypatch, capsys):
    record = _fake_trl(tmp_path, monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "student"
    rc = main(["train", "--recipe", "students/qwen2.5-7b-instruct.yaml", "--model", "Qwen/Qwen2.5-7B-Instruct",
               "--data", str(data), "--data-config", "inverted_verified_matched", "--output", str(out),
               "--num-processes", "4"])
    assert rc == 0, capsys.readouterr().err
    call = json.loads(record.read_text())
    assert "HF_HUB_OFFLINE" not in call["env"]  # a Hub model id can download
    assert call["argv"][:2] == ["sft", "--config"]
    resolved = yaml.safe_load(Path(call["argv"][2]).read_text())
    assert resolved["accelerate_config"] == str(ZERO3) and resolved["num_processes"] == 4
    assert resolved["model_name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert resolved["dataset_config"] == "inverted_verified_matched"
    assert json.loads(capsys.readouterr().out)["first_loss"] == 1.5
    # the environment the user set is passed through (tests and the demo set offline themselves)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["train", "--recipe", "students/qwen2.5-7b-instruct.yaml", "--model", "Qwen/Qwen2.5-7B-Instruct",
               "--data", str(data), "--output", str(out), "--accelerate-config", "none"])
    assert rc == 0
    call = json.loads(record.read_text())
    assert call["env"]["HF_HUB_OFFLINE"] == "1"
    resolved = yaml.safe_load(Path(call["argv"][2]).read_text())
    assert "accelerate_config" not in resolved and "num_processes" not in resolved


def test_train_rejects_a_missing_accelerate_config(tmp_path, monkeypatch, capsys):
    record = _fake_trl(tmp_path, monkeypatch)
    (tmp_path / "data").mkdir()
    rc = main(["train", "--recipe", "tiny/student.yaml", "--model", "m", "--data", str(tmp_path / "data"),
               "--output", str(tmp_path / "o"), "--accelerate-config", "missing.yaml"])
    assert rc == 2 and "fix:" in capsys.readouterr().err and not record.exists()
    rc = main(["train", "--recipe", "tiny/student.yaml", "--model", "m", "--data", str(tmp_path / "data"),
               "--output", str(tmp_path / "o"), "--num-processes", "0"])
    assert rc == 2 and not record.exists()


@pytest.mark.slow
def test_gpu_check_script_runs_its_cpu_path(tmp_path):
    """scripts/gpu_check.sh on a machine without a GPU: the transformers and training
    checks pass on the CPU and every GPU-only part says SKIP with its reason."""
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU machine: run scripts/gpu_check.sh itself")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "work")], capture_output=True,
                       text=True, timeout=1200, env=dict(os.environ, VENV=str(Path(sys.executable).parent.parent)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.split("gpu_check summary:")[1].strip().splitlines()
    status = {l.split()[1]: l.split()[0] for l in lines}
    assert status == {"env": "PASS", "model": "PASS", "transformers": "PASS", "vllm": "SKIP", "train": "PASS",
                      "train-zero3": "SKIP", "train-multi": "SKIP"}, r.stdout
    assert "GPU placement: SKIPPED" in r.stdout and "GPU training: SKIPPED" in r.stdout and "no GPU" in r.stdout


def test_a_finished_training_is_reused_only_while_its_data_is_unchanged(tmp_path):
    """start_sft reuses a finished model when the recipe and the data are unchanged; a
    stage folder rewritten with other rows (a new fingerprint) trains again."""
    import json

    from trace_inversion.pipelines.stage import MARKER
    from trace_inversion.training.sft import DATA_STAMP, data_fingerprint, start_sft

    data = tmp_path / "inverter_data"
    data.mkdir()
    (data / MARKER).write_text(json.dumps({"fingerprint": "aaa"}))
    out, run_dir = tmp_path / "model", tmp_path / "model.run"
    over = {"model_name_or_path": "x", "dataset_name": str(data), "dataset_config": "with_summary",
            "output_dir": str(out)}

    def finish_as_trained():  # what a finished `trl sft` leaves
        out.mkdir(exist_ok=True)
        (out / "config.json").write_text("{}")
        (run_dir / "train.log").write_text("")

    run_dir.mkdir()
    (run_dir / DATA_STAMP).write_text(data_fingerprint({**over}))
    from trace_inversion.training.sft import resolve_recipe

    resolve_recipe("tiny/inverter.yaml", over, run_dir / "recipe.resolved.yaml")
    finish_as_trained()
    assert start_sft("tiny/inverter.yaml", over, run_dir).result()["reused"] is True
    (data / MARKER).write_text(json.dumps({"fingerprint": "bbb"}))  # the stage reran on other data
    fp = data_fingerprint(over)
    assert fp != (run_dir / DATA_STAMP).read_text()
    import trace_inversion.training.sft as sft

    started = []
    orig = sft.BackgroundRun
    sft.BackgroundRun = lambda *a, **kw: started.append(a) or orig(finished={"reused": False}) if a else orig(**kw)
    try:
        assert start_sft("tiny/inverter.yaml", over, run_dir).result()["reused"] is False
    finally:
        sft.BackgroundRun = orig
    assert started and not (out / "config.json").exists()  # a model in training never looks finished
    assert (run_dir / DATA_STAMP).read_text() == fp
    assert data_fingerprint({**over, "dataset_config": "without_summary"}) != fp
