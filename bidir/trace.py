"""A trace of one episode, for a run or one of its checkpoints: `bidir-trace RUN [--mode M] [--seed N]`.

For each step: the prompt the teacher read, its distribution over the instructions, whether the
student saw the message, who acted and what, the reward, the critique where there is one (bidir:
the student's advantage A_S of the action taken), and where the teacher learns, the row it trains
on (bidir/critique.py's `teacher_rows`: PPO with its advantage and importance weight, imitation
with its weight). Written as text and as an animated picture:
minigrid's view of the room before each step, with what was said and done written under it.
The episode is the first one of held-out evaluation seed N, as `bidir-eval --seed N` plays it.
"""
from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bidir.checks import non_negative_int, quiet_libraries
from bidir.critique import CritiqueSettings, entropy, pair_logprob, teacher_rows
from bidir.envs import TextVecEnv
from bidir.evaluate import EVAL_SEED_BASE, MODES, load_run, modes_for, restore
from bidir.methods import get_method
from bidir.metrics import Phases
from bidir.ppo import gae
from bidir.prompts import PromptHistory, build_prompt
from bidir.rollout import Acting, Rollout, Runner
from bidir.run_files import output_file_problem

TRACE_MODES = ("training", *MODES)
"""`training`: as the run acts at the checkpoint (the teacher's share of acting at its iteration,
messages hidden with the configured dropout); the others as the held-out evaluation acts."""


@dataclass
class TracedStep:
    """One step of a traced episode."""

    prompt: str | None        # the prompt asked at this step (None: no teacher, or its message kept)
    probs: list[float] | None  # pi_T of the current message (None without a teacher)
    instruction: str | None   # the teacher's current instruction
    shown: bool               # the student saw the message
    actor: str                # "teacher" (its instruction executed) or "student"
    action: str
    reward: float
    student_value: float | None  # V_S before the step (None without a student)
    student_entropy: float | None  # entropy of pi_S at the step (nats): below the teacher's, the student is surer
    critique: float | None = None  # A_S of the action taken: the student's critique (bidir)
    ppo: tuple[float, float] | None = None  # (advantage, importance weight) where the teacher's PPO trains on the step
    imitation: float | None = None  # the weight with which the teacher imitates the action taken, where it does

    @property
    def teacher_entropy(self) -> float | None:
        """The entropy of pi_T (nats; None without a teacher)."""
        return None if self.probs is None else float(entropy(np.array([self.probs]))[0])


def trace_episode(config, student, teacher, mode: str, seed: int, iteration: int):
    """Plays the first held-out episode of evaluation seed `seed` in `mode`; returns its mission,
    its steps, the RGB frame before each step and the episode's return, length and success. Where
    the run's teacher learns, each step carries the row the teacher would train on, made by the
    training's own `teacher_rows` from this episode, before normalisation (training divides the
    advantages by their spread over an iteration's rows)."""
    args = config.rl_script_args
    method = get_method(args.method)
    if mode == "training":
        eps = method.teacher_share(iteration, args.teacher_share_start, args.teacher_share_iterations,
                                   args.teacher_share_end)
        dropout = args.message_dropout
    else:
        student_acts, consults_teacher = MODES[mode]
        student, teacher = (student if student_acts else None), (teacher if consults_teacher else None)
        eps, dropout = (0.0 if student_acts else 1.0), 0.0
    instructions = list(args.instructions)
    envs = TextVecEnv(args.env_id, 1, EVAL_SEED_BASE + seed, instructions)
    acting = Acting(teacher, student, 1, instructions, args.teacher_every, dropout, np.random.default_rng(seed),
                    torch.Generator().manual_seed(seed), args.device)
    runner = Runner(acting, envs, PromptHistory(1, args.prompt_history,
                                                teacher.build_prompt if teacher else build_prompt))
    runner.reset()
    mission, frames = runner.history.missions[0], []
    transitions, (episode,) = runner.first_episodes(
        eps, Phases(), before_step=lambda: frames.append(envs.envs[0].unwrapped.get_frame(tile_size=32)))
    steps = []
    for t in transitions:
        s = t.step
        steps.append(TracedStep(s.prompts[0], s.probs[0].tolist() if teacher else None,
                                instructions[s.instruction[0]] if teacher else None, bool(s.shown[0]),
                                "teacher" if s.executed[0] or student is None else "student",
                                instructions[s.action[0]], float(t.reward[0]),
                                float(s.value[0]) if student else None,
                                float(s.student_entropy[0]) if student else None))
    if method.teacher_learns and teacher is not None:
        add_teacher_rows(steps, Rollout.of(transitions), config, student, eps)
    return mission, steps, frames, episode


def add_teacher_rows(steps: list[TracedStep], rollout: Rollout, config, student, eps: float):
    """Fills each step's critique and teacher row from `teacher_rows` over the episode's rollout
    (the episode ended: nothing is bootstrapped)."""
    args = config.rl_script_args
    critique = get_method(args.method).critique and student is not None
    # unnormalised: training divides by the spread over an iteration's rows, not one episode's
    settings = replace(CritiqueSettings.from_args(args, critique), normalize=False)
    student_advantage = None
    if critique:
        student_advantage, _ = gae(rollout.reward, rollout.value, rollout.done, np.zeros(1, np.float32), args.gamma,
                                   args.lam)
        for s, a in zip(steps, student_advantage[:, 0]):
            s.critique = float(a)
    pair = pair_logprob(student, rollout, eps, args.device) if critique and settings.needs_pair_logprob else None
    rows = teacher_rows(rollout, np.zeros(1, np.float32), student_advantage, pair, settings)
    for i, t in enumerate(rows.step):
        if rows.ppo[i]:
            steps[t].ppo = (float(rows.advantage[i]), float(rows.weight[i]))
        if rows.imitation[i] > 0:
            steps[t].imitation = float(rows.imitation[i])


def trace_text(steps: list[TracedStep], header: list[str], instructions: list[str]) -> str:
    """The trace as text: the header lines, then one block per step."""
    lines = [*header, ""]
    for t, s in enumerate(steps, 1):
        lines.append(f"step {t}")
        if s.probs is not None:
            prompt = textwrap.indent(s.prompt, " " * 12).lstrip() if s.prompt else "(the last message is kept)"
            lines.append(f"  prompt:   {prompt}")
            lines.append("  teacher:  " + " | ".join(f"{name} {p:.2f}{'*' if name == s.instruction else ''}"
                                                    for name, p in zip(instructions, s.probs))
                         + f" (entropy {s.teacher_entropy:.2f})")
            lines.append(f"  message:  {'shown' if s.shown else 'hidden'}: {s.instruction}")
        value = f" (V_S {s.student_value:.3f}, entropy {s.student_entropy:.2f})" if s.student_value is not None else ""
        lines.append(f"  acted:    {s.actor}: {s.action}{value}")
        lines.append(f"  reward:   {s.reward:.3f}")
        if s.critique is not None:
            lines.append(f"  critique: A_S = {s.critique:+.3f}")
        trained = ([f"PPO on {s.action!r} (advantage {s.ppo[0]:+.3f}, weight {s.ppo[1]:.3f})"] if s.ppo else []) + \
                  ([f"imitates {s.action!r} (weight {s.imitation:.3f})"] if s.imitation is not None else [])
        if trained:
            lines.append("  teacher row: " + "; ".join(trained) + " (unnormalised)")
    return "\n".join(lines) + "\n"


def write_gif(path: Path, frames: list[np.ndarray], steps: list[TracedStep], outcome: str):
    """An animated picture of the episode: each frame with the step's message and action under it,
    the last one held with the outcome."""
    pictures = []
    for t, (frame, s) in enumerate(zip(frames, steps), 1):
        said = f"teacher: {s.instruction} ({'shown' if s.shown else 'hidden'})" if s.instruction else "no teacher"
        pictures.append(captioned(frame, [f"step {t}  {said}", f"{s.actor}: {s.action}  reward {s.reward:.2f}"]))
    pictures.append(captioned(frames[-1], [outcome, ""]))
    durations = [500] * len(steps) + [2000]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)


def captioned(frame: np.ndarray, lines: list[str]) -> Image.Image:
    """`frame` with a white band below holding `lines`."""
    height, width = frame.shape[:2]
    picture = Image.new("RGB", (max(width, 320), height + 16 * len(lines) + 6), "white")
    picture.paste(Image.fromarray(frame), (0, 0))
    draw = ImageDraw.Draw(picture)
    for i, line in enumerate(lines):
        draw.text((4, height + 4 + 16 * i), line, fill="black")
    return picture


def main(argv=None):
    """CLI: trace one held-out episode of a run directory (its newest checkpoint) or a checkpoint."""
    parser = argparse.ArgumentParser(prog="bidir-trace", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="run directory or checkpoint directory")
    parser.add_argument("--mode", choices=TRACE_MODES, default="training", help="who acts (see bidir/trace.py; default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="held-out evaluation seed of the episode (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="path of the files without suffix (default: "
                        "<run>/trace_<checkpoint>_seed<seed>_<mode>)")
    options = parser.parse_args(argv)
    quiet_libraries()
    try:
        config, saved = load_run(options.path)
    except ValueError as error:
        parser.exit(2, f"bidir-trace: error: {error}\n")
    method_name = config.rl_script_args.method
    if options.mode != "training" and options.mode not in modes_for(method_name):
        parser.exit(2, f"bidir-trace: error: --mode {options.mode} does not apply to {method_name}; choose one of "
                       f"training, {', '.join(modes_for(method_name))}\n")
    out = options.out or saved.parent.parent / f"trace_{saved.name}_seed{options.seed}_{options.mode}"
    for path in (Path(f"{out}.txt"), Path(f"{out}.gif")):  # both, before the episode is played
        if problem := output_file_problem(path):
            parser.exit(2, f"bidir-trace: error: --out {out}: {problem}; choose another --out\n")
    student, teacher = restore(config, saved)
    iteration = int(saved.name.rsplit("_", 1)[-1])
    mission, steps, frames, episode = trace_episode(config, student, teacher, options.mode, options.seed, iteration)
    outcome = (f"{'success' if episode['success'] else 'failure'}: return {episode['return']:.3f} "
               f"in {episode['length']} steps")
    env_id = config.rl_script_args.env_id
    level = env_id if episode["level"] == env_id else f"{env_id} (this episode: {episode['level']})"  # a mix
    header = [f"{method_name} @ {saved} (iteration {iteration}), mode {options.mode}",
              f"{level}, held-out seed {options.seed}: {mission!r}, {outcome}"]
    text = trace_text(steps, header, list(config.rl_script_args.instructions))
    text_path, picture_path = Path(f"{out}.txt"), Path(f"{out}.gif")
    text_path.write_text(text)
    write_gif(picture_path, frames, steps, outcome)
    if teacher:
        teacher.close()
    print(text)
    print(f"written: {text_path}, {picture_path}")


if __name__ == "__main__":
    main()
