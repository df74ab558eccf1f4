"""Checks of a run's configuration, made before anything is created or loaded: each failure is one
`UsageError` line that names the key (or file) and the fix, and `bidir.train` exits with 2.

Types come from bidir/conf/config.yaml itself: a key's default fixes its type (an integer default
takes integers, a float default takes floats or integers, and so on), so a key added there is
checked with no further edit. Keys whose default is empty (null) take any value.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import warnings
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

DEFAULTS = Path(__file__).parent / "conf" / "config.yaml"
MODEL_PATH = "lamorel_args.llm_configs.main_llm.model_path"

RANGES = {  # bounds (inclusive, None: open) beyond the type, for keys whose nonsense values would crash or mislead
    "rl_script_args.iterations": (0, None),
    "rl_script_args.n_envs": (1, None),
    "rl_script_args.steps_per_iteration": (1, None),
    "rl_script_args.gamma": (0.0, 1.0),
    "rl_script_args.lam": (0.0, 1.0),
    "rl_script_args.student_epochs": (1, None),
    "rl_script_args.student_minibatch_size": (1, None),
    "rl_script_args.distill_iterations": (1, None),
    "rl_script_args.message_dropout": (0.0, 1.0),
    "rl_script_args.teacher_share_start": (0.0, 1.0),
    "rl_script_args.teacher_share_iterations": (0, None),
    "rl_script_args.teacher_share_end": (0.0, 1.0),
    "rl_script_args.critique_imitation": (0.0, None),
    "rl_script_args.teacher_every": (1, None),
    "rl_script_args.prompt_history": (1, None),
    "rl_script_args.teacher_epochs": (1, None),
    "rl_script_args.teacher_minibatch_size": (1, None),
    "rl_script_args.teacher_gradient_batch_size": (1, None),
    "rl_script_args.eval_episodes": (0, None),
    "rl_script_args.eval_every": (0, None),
    "rl_script_args.eval_every_episodes": (1, None),
    "rl_script_args.return_threshold": (0.0, 1.0),
    "rl_script_args.keep_checkpoints": (1, None),
    "rl_script_args.torch_threads": (0, None),
    "rl_script_args.reward_scale": (0.0, None),
    "rl_script_args.student_lr": (0.0, None),
    "rl_script_args.teacher_lr": (0.0, None),
    "rl_script_args.student_clip_eps": (0.0, None),
    "rl_script_args.teacher_clip_eps": (0.0, None),
    "rl_script_args.student_max_grad_norm": (0.0, None),
    "rl_script_args.teacher_max_grad_norm": (0.0, None),
    "rl_script_args.distill_coef": (0.0, None),
    "rl_script_args.seed": (0, 99_999),  # numpy refuses negative seeds; held-out seeds start at 100_000
    "rl_script_args.student_entropy_coef": (0.0, None),
    "rl_script_args.student_value_loss_coef": (0.0, None),
    "rl_script_args.teacher_entropy_coef": (0.0, None),
    "rl_script_args.teacher_value_loss_coef": (0.0, None),
    "lamorel_args.llm_configs.main_llm.minibatch_size": (1, None),
    "lamorel_args.llm_configs.main_llm.frozen_cache_mb": (0, None),
    "lamorel_args.llm_configs.main_llm.lora.r": (1, None),
    "lamorel_args.llm_configs.main_llm.lora.alpha": (0.0, None),
    "lamorel_args.llm_configs.main_llm.lora.layers": (1, None),
    "lamorel_args.distributed_setup_args.init_timeout": (1, None),
    "lamorel_args.distributed_setup_args.timeout": (1, None),
    "lamorel_args.distributed_setup_args.multinode_args.main_process_port": (1, 65_535),
    "lamorel_args.distributed_setup_args.multinode_args.experiment_id": (0, None),
    "lamorel_args.distributed_setup_args.n_rl_processes": (1, 1),
    "lamorel_args.distributed_setup_args.llm_processes.main_llm.n_processes": (1, None),
}

AT_MOST = {  # key: the key it may not exceed, and why
    "rl_script_args.teacher_share_end": ("rl_script_args.teacher_share_start",
                                         "the teacher's share of acting falls from its start to this floor"),
}

OPEN_TYPES = {  # keys documented with an empty (null) default: the type they take when set
    "lamorel_args.llm_configs.main_llm.constructor_kwargs": dict,
    "lamorel_args.llm_configs.main_llm.lora.target_modules": list,
    "lamorel_args.llm_configs.main_llm.lora.layers": int,
    "lamorel_args.llm_configs.main_llm.lora.adapter_path": str,
    "lamorel_args.distributed_setup_args.llm_processes.main_llm.ddp_kwargs": dict,
    "rl_script_args.path": str,
    "wandb.entity": str,
}

LIST_ITEMS = {  # lists whose items have one type
    "rl_script_args.instructions": str,
    "lamorel_args.llm_configs.main_llm.lora.target_modules": str,
}

DEVICES = "lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process"

WANDB_MODES = ("offline", "online", "disabled")

RESUMABLE_CHANGES = (  # how long a run goes, where it runs and how it is shown, not what it computes
    "rl_script_args.iterations", "rl_script_args.output_dir", "rl_script_args.path",
    "rl_script_args.eval_episodes", "rl_script_args.eval_every", "rl_script_args.eval_every_episodes",
    "rl_script_args.return_threshold",
    "rl_script_args.keep_checkpoints", "rl_script_args.torch_threads",
    "wandb.", "lamorel_args.log_level", "lamorel_args.distributed_setup_args.init_timeout",
    "lamorel_args.distributed_setup_args.timeout",
    "lamorel_args.distributed_setup_args.multinode_args.",  # a requeued SLURM job lands on other nodes
)

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping ({key: value})"}


class UsageError(Exception):
    """Bad configuration or input, reported in one line before any heavy work (exit code 2)."""


def check_config(config: DictConfig):
    """Rejects bad input before anything is created, with one clear line (UsageError). Replaces
    the LLM's model name by the path it resolves to (what config.yaml records). What the output
    directory already holds is checked next, by bidir.run_files.check_resumable."""
    from bidir.envs import instruction_actions, make_text_env
    from bidir.llm import under_lamorel_launcher
    from bidir.methods import get_method
    from bidir.models import check_llm_config, resolve_model_path
    from bidir.prompts import configured_prompt_builder

    check_types(config)
    check_ranges(config)
    args = config.rl_script_args
    if not args.instructions:
        raise UsageError("rl_script_args.instructions is empty; give at least one, e.g. "
                         "'rl_script_args.instructions=[turn left,turn right,go forward]'")
    for key, check in [("method", get_method), ("env_id", lambda env_id: make_text_env(env_id).close()),
                       ("instructions", instruction_actions)]:
        try:
            check(args[key])
        except ValueError as error:
            raise UsageError(f"rl_script_args.{key}: {error}") from None
    method = get_method(args.method)
    if args.teacher_advantage == "student" and method.teacher_learns and not method.student:
        raise UsageError(f"rl_script_args.teacher_advantage=student needs a student; {args.method} has none "
                         f"(use teacher_advantage=teacher)")
    if args.steps_per_iteration % args.n_envs:
        raise UsageError(f"rl_script_args.steps_per_iteration ({args.steps_per_iteration}) must be a multiple of "
                         f"rl_script_args.n_envs ({args.n_envs})")
    check_writable(Path(args.output_dir))
    adapter = config.lamorel_args.llm_configs.main_llm.lora.adapter_path
    if adapter is not None and not Path(adapter).is_dir():
        raise UsageError(f"lamorel_args.llm_configs.main_llm.lora.adapter_path: {adapter} is not a directory; give "
                         f"an adapter saved by `bidir-teacher pretrain --lora`, or leave it empty")
    if method.teacher or under_lamorel_launcher():  # the launcher starts LLM servers whatever the method
        llm = config.lamorel_args.llm_configs.main_llm
        try:
            llm.model_path = resolve_model_path(llm.model_path)
        except (ValueError, OSError) as error:
            raise UsageError(f"{MODEL_PATH}: {error}") from None
        try:
            check_llm_config(llm)  # model_type matches the model; lora block and peft
        except (ValueError, OSError) as error:
            raise UsageError(str(error)) from None
        try:
            configured_prompt_builder(config)  # chat: the model's tokenizer has a chat template
        except ValueError as error:
            raise UsageError(f"rl_script_args.prompt_format={args.prompt_format}: {error} "
                             f"({llm.model_path} has none); use prompt_format=glam") from None
    if config.wandb.mode == "online":
        check_wandb_login()


def check_types(config: DictConfig):
    """Every key documented in config.yaml holds a value of its default's type."""
    defaults = _documented_defaults()
    for key, value in _leaves(OmegaConf.to_container(config, resolve=True)).items():
        default = defaults.get(key)
        if default is None and (key not in OPEN_TYPES or value is None):  # undocumented here, or left empty
            continue
        expected = type(default) if default is not None else OPEN_TYPES[key]
        if not _has_type(value, expected):
            hint = f"; write lists as '{key}=[a,b]'" if expected is list else ""
            raise UsageError(f"{key} must be {_TYPE_NAMES[expected]} (default: {_show(default)}), "
                             f"got {_show(value)}{hint}")
        if key in LIST_ITEMS and not all(_has_type(item, LIST_ITEMS[key]) for item in value):
            raise UsageError(f"{key} must be a list of {_TYPE_NAMES[LIST_ITEMS[key]].split()[-1]}s, got {_show(value)}")


def check_ranges(config: DictConfig):
    """Numbers finite, values within RANGES, keys with choices (`choices_of_keys`) set to one of them."""
    for key, value in _leaves(OmegaConf.to_container(config, resolve=True)).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{key} must be a finite number, got {value}")
    for key, choices in choices_of_keys().items():
        value = OmegaConf.select(config, key)
        if value is not None and value not in choices:  # None: a config without the key (types check the rest)
            raise UsageError(f"{key} must be one of {', '.join(choices)}, got {_show(value)}")
    for key, (low, high) in RANGES.items():
        value = OmegaConf.select(config, key)
        if value is None or (low is None or value >= low) and (high is None or value <= high):
            continue
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise UsageError(f"{key} must be {bound}, got {value}")
    for key, (limit, why) in AT_MOST.items():
        value, most = OmegaConf.select(config, key), OmegaConf.select(config, limit)
        if value is not None and most is not None and value > most:
            raise UsageError(f"{key} ({value}) must be at most {limit} ({most}): {why}")
    device = OmegaConf.select(config, "rl_script_args.device")
    if device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise UsageError(f"rl_script_args.device must be cpu, cuda, cuda:N or mps, got {_show(device)}")
    devices = OmegaConf.select(config, DEVICES)
    gpu = lambda d: isinstance(d, int) and not isinstance(d, bool) and d >= 0  # noqa: E731
    if devices is not None and not all(d == "cpu" or gpu(d) or (isinstance(d, (list, ListConfig)) and d
                                                                and all(map(gpu, d))) for d in devices):
        raise UsageError(f"{DEVICES} must list, per LLM process, cpu or its GPU ids, e.g. [cpu] or [[0], [1]]; "
                         f"got {_show(OmegaConf.to_object(devices))}")
    processes = OmegaConf.select(config, "lamorel_args.distributed_setup_args.llm_processes.main_llm.n_processes")
    if devices is not None and processes is not None and len(devices) < processes:  # one entry per process
        raise UsageError(f"{DEVICES} lists {len(devices)} LLM process(es) but lamorel_args.distributed_setup_args."
                         f"llm_processes.main_llm.n_processes is {processes}: set the two together")


def choices_of_keys() -> dict[str, tuple]:
    """Keys that take one of a few words, with those words."""
    from bidir.critique import TEACHER_ADVANTAGES, TEACHER_PPO_ROWS
    from bidir.prompts import PROMPT_FORMATS
    from bidir.teacher_llm import CANDIDATE_SCORINGS

    return {"wandb.mode": WANDB_MODES, "rl_script_args.prompt_format": PROMPT_FORMATS,
            "rl_script_args.teacher_ppo_rows": TEACHER_PPO_ROWS,
            "rl_script_args.teacher_advantage": TEACHER_ADVANTAGES,
            "lamorel_args.llm_configs.main_llm.candidate_scoring": CANDIDATE_SCORINGS,
            "lamorel_args.llm_configs.main_llm.model_type": ("seq2seq", "causal"),
            "lamorel_args.llm_configs.main_llm.handler": ("hf_llm",),
            "lamorel_args.log_level": ("debug", "info", "warning", "error", "critical"),
            "lamorel_args.distributed_setup_args.backend": ("gloo", "nccl")}


def check_writable(output_dir: Path):
    """`output_dir` is a writable directory or can be created as one; creates nothing."""
    existing = output_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a directory" if not existing.is_dir() else "is not writable"
        raise UsageError(f"output_dir {output_dir} is not writable: {existing} {why}; "
                         f"choose another rl_script_args.output_dir")


def check_wandb_login():
    """wandb.mode=online needs W&B credentials; look for them without a prompt or the network
    (the login itself happens when the run starts)."""
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise UsageError("wandb.mode=online but no W&B credentials were found: run `wandb login` or set "
                         "WANDB_API_KEY, or log offline with wandb.mode=offline (then `wandb sync`)")


def with_documented_defaults(saved: DictConfig) -> DictConfig:
    """A run's saved configuration with every documented key it lacks set to its default: a key
    added since the run was made stands at what the run did (new keys default to the old behaviour)."""
    absent = object()
    for key, default in _documented_defaults().items():
        if OmegaConf.select(saved, key, default=absent) is absent:
            OmegaConf.update(saved, key, default, force_add=True)
    return saved


def _documented_defaults() -> dict:
    """{"a.b.c": default} for every key documented in config.yaml (hydra's own settings aside)."""
    documented = OmegaConf.load(DEFAULTS)
    for hydras_own in ("hydra", "defaults"):  # not in a composed config
        documented.pop(hydras_own)
    return _leaves(OmegaConf.to_container(documented, resolve=True))


def at_least(low: int):
    """An argparse type: an integer >= `low`, else one line saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {'a positive integer' if low == 1 else f'an integer >= {low}'}"
                                             f", got {text if value is None else value!r}")
        return value
    return parse


positive_int = at_least(1)
non_negative_int = at_least(0)


def _has_type(value, expected: type) -> bool:
    """isinstance, except that booleans are no numbers and integers are also floats."""
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _leaves(tree: dict, prefix: str = "") -> dict:
    """{"a.b.c": value} for every non-dict value of a nested dict (lists are values)."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def _show(value) -> str:
    """A value as it is written in an override."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "absent" if type(value) is object else str(value)


def check_override_keys(overrides: list[str]):
    """Names an override key that no config has, with the key meant (`method=glam` is
    `rl_script_args.method=glam`), before hydra reports it in its own words. Keys hydra adds
    (`+key`, `hydra.*`) and runs with another config (`--config-name`, lamorel_configs) are left
    to hydra."""
    if any(arg.startswith("--config") for arg in overrides):
        return
    known = set(_leaves(OmegaConf.to_container(OmegaConf.load(DEFAULTS))))
    known |= {key.rsplit(".", 1)[0] for key in known}  # a whole node (`...lora={...}`) is a key too
    known.add("setting")
    settings = sorted(path.stem for path in (DEFAULTS.parent / "setting").glob("*.yaml"))
    for override in overrides:
        key = override.split("=", 1)[0]
        if key == "setting" and override.split("=", 1)[1] not in settings:  # else hydra's block of lines
            raise UsageError(f"unknown setting {override.split('=', 1)[1]!r}; choose one of {', '.join(settings)} "
                             f"(bidir/conf/setting/)")
        if "=" not in override or key.startswith(("+", "~", "hydra.", "-")) or key in known:
            continue
        by_name = sorted(k for k in known if k.endswith("." + key))
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if parent in known:  # a misspelt key of a known node: its siblings, never the node itself
            siblings = sorted(k[len(parent) + 1:] for k in known if k.startswith(parent + "."))
            meant = [f"{parent}.{name}" for name in difflib.get_close_matches(
                key[len(parent) + 1:], [s for s in siblings if "." not in s], n=1, cutoff=0.6)]
        else:
            meant = by_name or difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {meant[0]}={override.split('=', 1)[1]}?" if meant else \
            " (python -m bidir.train --help lists every key)"
        raise UsageError(f"unknown key {key!r}{hint}")


def usage() -> str:
    """`python -m bidir.train --help`: how to call it, the methods, and every key with its
    documentation (config.yaml as written)."""
    from bidir.methods import METHODS

    methods = "\n".join(f"  {name:8s} {method.summary}" for name, method in METHODS.items())
    return (f"usage: python -m bidir.train [key=value ...]   (also: bidir-train)\n\n"
            f"Trains rl_script_args.method on rl_script_args.env_id; hydra overrides set any key below.\n"
            f"Example: python -m bidir.train rl_script_args.method=glam rl_script_args.seed=2\n\n"
            f"methods (rl_script_args.method):\n{methods}\n\n"
            f"settings: setting=offline (default: the offline teacher tiny-t5-bc, CPU), setting=paper "
            f"(flan-t5-small, GLAM's values) or setting=smollm2 (SmolLM2-135M-Instruct, LoRA on its top 2 layers)\n\n"
            f"keys, with their defaults and documentation (bidir/conf/config.yaml):\n\n{DEFAULTS.read_text()}")


def quiet_libraries():
    """The console shows bidir's progress and results: transformers' loading bars and W&B's
    banner would bury them (W&B still logs everything to its run directory)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    os.environ.setdefault("WANDB_SILENT", "true")
    # peft (0.21) reads this deprecated transformers property on every LoRA model it wraps
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

