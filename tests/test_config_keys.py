"""Every key documented in bidir/conf/config.yaml is checked before a run creates anything: a value
of the wrong type and a value out of its range each give exit code 2 and one `bidir: error:` line
naming the key. The walk goes through the real entry point (`bidir.train.main`), in this process (tests/entry.py)."""
import pytest

from bidir import checks
from entry import run_main

TINY = ["rl_script_args.n_envs=2", "rl_script_args.steps_per_iteration=16", "rl_script_args.eval_episodes=0",
        "rl_script_args.eval_every=0", "wandb.mode=disabled"]
DOCUMENTED = checks._documented_defaults()
LLM = "lamorel_args.llm_configs.main_llm."

WRONG_TYPE = {bool: "1", int: "abc", float: "abc", str: "1", list: "abc", dict: "5"}
"""A value of another type than the key's, as an override (hydra reads `1` as an integer)."""

OUT_OF_RANGE_BY_NAME = {  # keys checked against names, files or several words, with a value that is none
    "rl_script_args.method": ("bidr", "rl_script_args.method: unknown method 'bidr'"),
    "rl_script_args.env_id": ("BabyAI-Nope-v0", "rl_script_args.env_id: Unknown env_id 'BabyAI-Nope-v0'"),
    "rl_script_args.instructions": ("[jump]", "rl_script_args.instructions: Instruction(s) ['jump'] map to no"),
    "rl_script_args.device": ("gpu", "rl_script_args.device must be cpu, cuda, cuda:N or mps, got 'gpu'"),
    LLM + "model_path": ("/no/such/model", LLM + "model_path: model path '/no/such/model' does not exist"),
    LLM + "lora.adapter_path": ("/no/such/adapter", LLM + "lora.adapter_path: /no/such/adapter is not a directory"),
    checks.DEVICES: ("[gpu0]", checks.DEVICES + " must list, per LLM process, cpu or its GPU ids"),
}

ANY_VALUE = {  # keys whose every value of their type is valid: true/false, names and paths chosen freely
    LLM + "pretrained", LLM + "pre_encode_inputs", LLM + "shared_prefix", LLM + "load_in_4bit",
    LLM + "synchronize_gpus_after_scoring", LLM + "empty_cuda_cache_after_scoring", LLM + "lora.enabled",
    LLM + "lora.target_modules", LLM + "constructor_kwargs", "lamorel_args.distributed_setup_args.multinode",
    "lamorel_args.distributed_setup_args.multinode_args.main_process_ip",
    "lamorel_args.distributed_setup_args.llm_processes.main_llm.ddp_kwargs",
    "rl_script_args.path", "rl_script_args.output_dir", "rl_script_args.teacher_normalize_advantages",
    "rl_script_args.critique_where_surer", "wandb.project", "wandb.group", "wandb.entity",
}


def expected_type(key):
    default = DOCUMENTED[key]
    return type(default) if default is not None else checks.OPEN_TYPES[key]


def out_of_range(key):
    """(override value, the start of the error line) outside what `key` takes."""
    if key in OUT_OF_RANGE_BY_NAME:
        return OUT_OF_RANGE_BY_NAME[key]
    choices = checks.choices_of_keys()
    if key in choices:
        return "nope", f"{key} must be one of {', '.join(choices[key])}, got 'nope'"
    low, high = checks.RANGES[key]
    step = 1 if expected_type(key) is int else 0.5
    value = low - step if low is not None else high + step
    return str(value), f"{key} must be {f'in [{low}, {high}]' if high is not None else f'>= {low}'}, got {value}"


def train_main(tmp_path, *overrides):
    """bidir.train's entry point on `overrides`: (exit code, stderr)."""
    result = run_main("bidir.train", f"rl_script_args.output_dir={tmp_path / 'run'}", *TINY, *overrides)
    return result.returncode, result.stderr


def assert_refused(tmp_path, override, message):
    code, err = train_main(tmp_path, override)
    lines = [line for line in err.splitlines() if line.startswith("bidir: error:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"bidir: error: {message}"), err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_every_documented_key_is_typed_and_ranged_or_free():
    open_keys = {key for key, default in DOCUMENTED.items() if default is None}
    assert open_keys == set(checks.OPEN_TYPES)  # a key documented empty says what type it takes when set
    ranged = set(checks.RANGES) | set(checks.choices_of_keys()) | set(OUT_OF_RANGE_BY_NAME)
    assert set(DOCUMENTED) - ranged == ANY_VALUE  # a new key is given a range, or said to take any value
    assert not ranged - set(DOCUMENTED)


@pytest.mark.parametrize("key", sorted(DOCUMENTED))
def test_a_value_of_the_wrong_type_is_refused(tmp_path, key):
    kind = expected_type(key)
    assert_refused(tmp_path, f"{key}={WRONG_TYPE[kind]}", f"{key} must be {checks._TYPE_NAMES[kind]}")


@pytest.mark.parametrize("key", sorted(set(DOCUMENTED) - ANY_VALUE))
def test_a_value_out_of_range_is_refused(tmp_path, key):
    value, message = out_of_range(key)
    assert_refused(tmp_path, f"{key}={value}", message)


@pytest.mark.parametrize("overrides, message", [
    (["rl_script_args.teacher_share_start=0.2", "rl_script_args.teacher_share_end=0.5"],
     "rl_script_args.teacher_share_end (0.5) must be at most rl_script_args.teacher_share_start (0.2): the "
     "teacher's share of acting falls from its start to this floor"),
    (["lamorel_args.distributed_setup_args.llm_processes.main_llm.n_processes=2"],
     f"{checks.DEVICES} lists 1 LLM process(es) but lamorel_args.distributed_setup_args.llm_processes.main_llm."
     f"n_processes is 2: set the two together"),
    (["rl_script_args.instructions=[turn left,1]"], "rl_script_args.instructions must be a list of strings, got [turn left, 1]"),
    (["setting=nope"], "unknown setting 'nope'; choose one of offline, paper, smollm2 (bidir/conf/setting/)"),
])
def test_relations_between_keys_and_settings(tmp_path, overrides, message):
    code, err = train_main(tmp_path, *overrides)
    assert code == 2 and err.strip() == f"bidir: error: {message}", err
    assert not (tmp_path / "run").exists()
