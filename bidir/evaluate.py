"""Evaluation on held-out seeds: `bidir-eval <run dir or checkpoint>`.

Modes: the student with the teacher's messages, the student alone, and the teacher alone (the LLM
acting, as in GLAM). Each runs one episode in each of `episodes` environments whose seeds no
training run uses (training seeds are seed * 10_000 + i for seed < EVAL_SEED_BASE).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from bidir.agent import PromptHistory, sample_rows, student_inputs, summarize_episodes
from bidir.checks import positive_int
from bidir.envs import TextVecEnv
from bidir.methods import get_method

log = logging.getLogger("bidir")

EVAL_SEED_BASE = 100_000

MODES = {  # mode -> (student acts, student sees the teacher, teacher needed)
    "student_with_teacher": (True, True, True),
    "student_alone": (True, False, False),
    "teacher_alone": (False, False, True),
}


def modes_for(method_name: str) -> list[str]:
    """The evaluation modes that make sense for a method."""
    method = get_method(method_name)
    if not method.student:
        return ["teacher_alone"]
    if not method.teacher:
        return ["student_alone"]
    return list(MODES)


def evaluate(mode: str, env_id: str, instructions: list[str], episodes: int, seed: int, student=None,
             teacher=None, prompt_history: int = 1, device="cpu") -> dict:
    """Runs one episode per environment in `mode`; returns success_rate, return_mean,
    episode_length_mean and episodes."""
    student_acts, shows_teacher, _ = MODES[mode]
    envs = TextVecEnv(env_id, episodes, EVAL_SEED_BASE + seed, instructions)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    k = len(instructions)
    history = PromptHistory(episodes, prompt_history)
    obs, infos = envs.reset()
    for env, info in enumerate(infos):
        history.start(env, info)
    results: list[dict | None] = [None] * episodes
    bar = tqdm(total=episodes, desc=mode, unit="episode", leave=False, disable=None)
    while any(r is None for r in results):
        probs, values = np.full((episodes, k), 1.0 / k), np.zeros(episodes, np.float32)
        instruction = np.zeros(episodes, np.int64)
        active = [e for e in range(episodes) if results[e] is None]
        if teacher is not None and (shows_teacher or not student_acts):
            probs[active], values[active] = teacher.advise([history.prompt(e) for e in active])
            instruction = sample_rows(probs, rng)
        if student_acts:
            with torch.no_grad():
                x = student_inputs(obs, list(history.missions), instruction, probs, values,
                                   np.full(episodes, shows_teacher), device)
                dist, _ = student(x)
                action = torch.multinomial(dist.probs, 1, generator=generator).squeeze(1).cpu().numpy()
        else:
            action = instruction
        obs, _, done, infos = envs.step(action)
        for e, info in enumerate(infos):
            if done[e]:
                if results[e] is None:
                    results[e] = info["episode"]
                    bar.update(1)
                history.start(e, info)
            else:
                history.advance(e, instructions[action[e]], info)
    envs.close()
    bar.close()
    return summarize_episodes(results)


def evaluate_all(method_name: str, args, student, teacher, episodes: int, seed: int = 0) -> dict:
    """Every mode of `method_name`, keyed by mode."""
    results = {}
    for mode in modes_for(method_name):
        log.info("held-out evaluation: %s, %d episodes", mode, episodes)
        results[mode] = evaluate(mode, args.env_id, list(args.instructions), episodes, seed, student, teacher,
                                 args.prompt_history, args.device)
    return results


def format_table(results: dict) -> str:
    """A fixed-width table of evaluation results, one row per mode."""
    lines = [f"{'mode':<22}{'success':>9}{'return':>9}{'length':>9}{'episodes':>10}"]
    for mode, r in results.items():
        lines.append(f"{mode:<22}{r['success_rate']:>9.3f}{r['return_mean']:>9.3f}"
                     f"{r['episode_length_mean']:>9.1f}{r['episodes']:>10d}")
    return "\n".join(lines)


def load_run(path: Path):
    """(config, checkpoint dir) for a run directory or one of its checkpoint directories."""
    path = Path(path)
    if (path / "trainer.pt").exists():
        checkpoint, run_dir = path, path.parent.parent
    else:
        from bidir.train import find_checkpoint
        run_dir, checkpoint = path, find_checkpoint(path)
    if not (run_dir / "config.yaml").exists():
        raise ValueError(f"{run_dir} is not a bidir run directory (no config.yaml)")
    if checkpoint is None:
        raise ValueError(f"{run_dir} has no readable checkpoint")
    return OmegaConf.load(run_dir / "config.yaml"), checkpoint


def restore(config, checkpoint: Path):
    """The student and the teacher (in-process) of a checkpoint; None for absent parts."""
    from bidir.llm import LocalCaller
    from bidir.student import Student
    from bidir.teacher import TEACHER_CHECKPOINT, Teacher, TeacherInitializer, teacher_module_functions

    args = config.rl_script_args
    method = get_method(args.method)
    k = len(args.instructions)
    student = teacher = None
    if method.student:
        student = Student(k, k).to(args.device)  # where evaluate_all puts its inputs
        student.load_state_dict(torch.load(checkpoint / "trainer.pt", weights_only=True)["student"])
        student.eval()
    if method.teacher:
        saved = checkpoint / TEACHER_CHECKPOINT
        caller = LocalCaller(config.lamorel_args,
                             custom_module_functions={"main_llm": teacher_module_functions(args.seed)},
                             custom_model_initializer={"main_llm": TeacherInitializer(
                                 str(saved) if saved.exists() else None, seed=args.seed)})
        teacher = Teacher(caller, list(args.instructions))
    return student, teacher


def main(argv=None):
    """CLI: evaluate a run directory (its newest checkpoint) or a checkpoint directory."""
    parser = argparse.ArgumentParser(prog="bidir-eval", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="run directory or checkpoint directory")
    parser.add_argument("--episodes", type=positive_int, default=100, help="held-out episodes per mode")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (env seeds are disjoint from training)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: "
                        "<run>/eval_<checkpoint>_seed<seed>.json; the run's own eval.json only when named here)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config, checkpoint = load_run(options.path)
    except ValueError as error:
        parser.exit(2, f"bidir-eval: error: {error}\n")
    student, teacher = restore(config, checkpoint)
    results = evaluate_all(config.rl_script_args.method, config.rl_script_args, student, teacher,
                           options.episodes, options.seed)
    out = options.json or checkpoint.parent.parent / f"eval_{checkpoint.name}_seed{options.seed}.json"
    out.write_text(json.dumps({"checkpoint": str(checkpoint), "results": results}, indent=2))
    print(f"{config.rl_script_args.method} @ {checkpoint}")
    print(format_table(results))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
