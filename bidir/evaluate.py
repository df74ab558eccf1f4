"""Evaluation on held-out seeds: `bidir-eval <run dir or checkpoint>`.

Modes: the student with the teacher's messages, the student alone, and the teacher alone (the LLM
acting, as in GLAM). Each runs one episode in each of `episodes` environments whose seeds no
training run uses (EVAL_SEED_BASE).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bidir import checkpoint
from bidir.checks import non_negative_int, positive_int, quiet_libraries
from bidir.envs import MIX_SEPARATOR, TextVecEnv
from bidir.methods import get_method
from bidir.metrics import Phases
from bidir.prompts import PromptHistory, build_prompt
from bidir.rollout import Acting, Runner, summarize_episodes
from bidir.run_files import open_run, output_file_problem
from bidir.student import Student
from bidir.teacher import start_teacher

log = logging.getLogger("bidir")

EVAL_SEED_BASE = 100_000
"""Held-out environment seeds start here (env i of evaluation seed s: (EVAL_SEED_BASE + s) * 10_000 + i);
training uses seed * 10_000 + i, so training seeds below EVAL_SEED_BASE never meet them."""

MODES = {  # mode -> (the student acts, the teacher is consulted)
    "student_with_teacher": (True, True),
    "student_alone": (True, False),
    "teacher_alone": (False, True),
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
             teacher=None, prompt_history: int = 1, device="cpu", teacher_every: int = 1) -> dict:
    """Runs one episode per environment in `mode` (`play_episodes`); returns success_rate,
    return_mean, episode_length_mean and episodes, and for a mix the same per level under
    `levels` (keyed by env id, in the mix's order; a level never drawn has 0 episodes)."""
    played = play_episodes(mode, env_id, instructions, episodes, seed, student, teacher, prompt_history, device,
                           teacher_every)
    result = summarize_episodes(played)
    if MIX_SEPARATOR in env_id:
        result["levels"] = {level: summarize_episodes([e for e in played if e["level"] == level])
                            for level in dict.fromkeys(env_id.split(MIX_SEPARATOR))}
    return result


def play_episodes(mode: str, env_id: str, instructions: list[str], episodes: int, seed: int, student=None,
                  teacher=None, prompt_history: int = 1, device="cpu", teacher_every: int = 1) -> list[dict]:
    """Runs one episode per environment in `mode`, acting as training acts (bidir/rollout.py) with
    the message always shown and the student choosing (or, teacher alone, every instruction
    executed); returns each episode's return, length and success, env by env."""
    student_acts, consults_teacher = MODES[mode]
    envs = TextVecEnv(env_id, episodes, EVAL_SEED_BASE + seed, instructions)
    acting = Acting(teacher if consults_teacher else None, student if student_acts else None, episodes,
                    instructions, teacher_every, message_dropout=0.0, rng=np.random.default_rng(seed),
                    torch_rng=torch.Generator().manual_seed(seed), device=device)
    runner = Runner(acting, envs, PromptHistory(episodes, prompt_history,
                                                teacher.build_prompt if teacher else build_prompt))
    runner.reset()
    with tqdm(total=episodes, desc=mode, unit="episode", leave=False, disable=None) as bar:
        _, results = runner.first_episodes(eps=0.0 if student_acts else 1.0, phases=Phases(), bar=bar)
    envs.close()
    return results


def evaluate_all(method_name: str, args, student, teacher, episodes: int, seed: int = 0) -> dict:
    """Every mode of `method_name`, keyed by mode."""
    results = {}
    for mode in modes_for(method_name):
        log.info("held-out evaluation: %s, %d episodes", mode, episodes)
        results[mode] = evaluate(mode, args.env_id, list(args.instructions), episodes, seed, student, teacher,
                                 args.prompt_history, args.device, args.teacher_every)
    return results


def agents_row(method_name: str, args, student, teacher, episodes: int) -> dict:
    """During training: each agent's held-out return and success rate, `eval_<mode>_return` and
    `eval_<mode>_success` per mode of the method, on the first `episodes` held-out episodes. The
    run is left as it was (the teacher's memo and LLM counter restored), so training proceeds as
    it would without them."""
    contexts = teacher.llm_contexts if teacher else 0
    row = {}
    for mode in modes_for(method_name):
        result = evaluate(mode, args.env_id, list(args.instructions), episodes, 0, student, teacher,
                          args.prompt_history, args.device, args.teacher_every)
        row.update({f"eval_{mode}_return": result["return_mean"], f"eval_{mode}_success": result["success_rate"]})
    if teacher:
        teacher.forget()
        teacher.llm_contexts = contexts
    return row


def format_table(results: dict) -> str:
    """A fixed-width table of evaluation results, one row per mode (and below it, for a mix, one
    per level)."""
    rows = [row for mode, r in results.items()
            for row in [(mode, r)] + [(f"  {level}", by_level) for level, by_level in r.get("levels", {}).items()]]
    width = max(22, *(len(name) + 1 for name, _ in rows))
    lines = [f"{'mode':<{width}}{'success':>9}{'return':>9}{'length':>9}{'episodes':>10}"]
    lines += [f"{name:<{width}}{row['success_rate']:>9.3f}{row['return_mean']:>9.3f}"
              f"{row['episode_length_mean']:>9.1f}{row['episodes']:>10d}" for name, row in rows]
    return "\n".join(lines)


def load_run(path: Path):
    """(config, checkpoint dir) for a run directory or one of its checkpoint directories, each
    checked (bidir.run_files.open_run): a ValueError line otherwise."""
    return open_run(path)


def restore(config, saved: Path):
    """The student and the teacher (in-process) of a checkpoint; None for absent parts."""
    args = config.rl_script_args
    method = get_method(args.method)
    student = None
    if method.student:
        k = len(args.instructions)
        student = Student(k, k).to(args.device)  # where evaluate_all puts its inputs
        student.load_state_dict(checkpoint.load(saved)["student"])
        student.eval()
    return student, start_teacher(config, method, saved)


def main(argv=None):
    """CLI: evaluate a run directory (its newest checkpoint) or a checkpoint directory."""
    parser = argparse.ArgumentParser(prog="bidir-eval", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="run directory or checkpoint directory")
    parser.add_argument("--episodes", type=positive_int, default=100, help="held-out episodes per mode (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="evaluation seed (env seeds are disjoint from training; default: %(default)s)")
    parser.add_argument("--json", type=Path, help="where to write the results (default: "
                        "<run>/eval_<checkpoint>_seed<seed>.json; the run's own eval.json only when named here)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    try:
        config, saved = load_run(options.path)
    except ValueError as error:
        parser.exit(2, f"bidir-eval: error: {error}\n")
    out = options.json or saved.parent.parent / f"eval_{saved.name}_seed{options.seed}.json"
    if problem := output_file_problem(out):
        parser.exit(2, f"bidir-eval: error: --json {out}: {problem}; choose another --json\n")
    student, teacher = restore(config, saved)
    results = evaluate_all(config.rl_script_args.method, config.rl_script_args, student, teacher,
                           options.episodes, options.seed)
    out.write_text(json.dumps({"checkpoint": str(saved), "results": results}, indent=2))
    print(f"{config.rl_script_args.method} @ {saved}")
    print(format_table(results))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
