"""Train a method on a BabyAI level: `python -m bidir.train [hydra overrides]`.

One loop for every method (bidir/methods.py says which parts a method uses). Per iteration:
  collect   the teacher writes messages; the teacher, the student or an annealed mixture acts
            (bidir/rollout.py);
  update    the student: PPO + distillation towards the teacher (bidir/student.py); the critique:
            the student's advantages, made into the teacher's rows (bidir/critique.py); the
            teacher: PPO on those rows + imitation of the student's good choices (bidir/teacher.py);
  log       metrics.csv, W&B, progress (bidir/metrics.py); then an atomic checkpoint
            (bidir/checkpoint.py).

The same file is `rl_script_args.path` under lamorel_launcher: there, LLM server processes stop
inside `start_teacher` and serve the teacher; the RL process runs the loop.
"""
from __future__ import annotations

import logging
import math
import signal
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bidir import checkpoint
from bidir.checks import UsageError, check_config, check_override_keys, quiet_libraries, usage
from bidir.critique import CritiqueSettings, entropy, pair_logprob, teacher_rows
from bidir.envs import TextVecEnv
from bidir.evaluate import agents_row
from bidir.methods import Method, get_method
from bidir.metrics import MetricsLog, Phases
from bidir.ppo import anneal, gae
from bidir.prompts import PromptHistory, build_prompt
from bidir.report import evaluate_teacher_at_start, finish_run
from bidir.rollout import Acting, Rollout, Runner, collect, summarize_episodes
from bidir.run_files import check_resumable, save_config
from bidir.student import Student, StudentPPOSettings, training_batch, update_student
from bidir.teacher import start_teacher

log = logging.getLogger("bidir")

PREEMPTED_EXIT_CODE = 3
"""Exit status after SIGUSR1/SIGTERM: the run checkpointed and can be resumed."""
INTERRUPTED_EXIT_CODE = 130
"""Exit status after Ctrl-C (the shell's 128 + SIGINT), so that run_with_requeue does not requeue."""
PROGRESS_LINE_S = 30.0
"""Without a terminal (a log file, SLURM) no bar is drawn: a progress line instead, after the first
and last iteration and at most this often in between."""


class Trainer:
    """One training run: its environments, the teacher and the student acting in them, and the
    state a checkpoint keeps. `collect()` and `update()` are the two halves of an iteration."""

    def __init__(self, config: DictConfig, method: Method, teacher, state: dict | None = None):
        self.args = args = config.rl_script_args
        self.method = method
        self.envs = TextVecEnv(args.env_id, args.n_envs, args.seed, list(args.instructions), args.reward_scale)
        self.steps = args.steps_per_iteration // args.n_envs
        torch.manual_seed(args.seed)
        self.rng = np.random.default_rng(args.seed)
        self.torch_rng = torch.Generator().manual_seed(args.seed)
        self.teacher = teacher
        k = len(args.instructions)
        self.student = Student(k, k).to(args.device) if method.student else None
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=args.student_lr) if self.student else None
        self.history = PromptHistory(args.n_envs, args.prompt_history,
                                     teacher.build_prompt if teacher else build_prompt)
        self.acting = Acting(teacher, self.student, args.n_envs, list(args.instructions), args.teacher_every,
                             args.message_dropout, self.rng, self.torch_rng, args.device)
        self.runner = Runner(self.acting, self.envs, self.history)
        self.iteration, self.frames, self.wall_time, self.wandb_id = 0, 0, 0.0, None
        if state:
            self.restore(state)
        else:
            self.runner.reset()

    def teacher_share(self) -> float:
        """eps_k at this iteration (Method.teacher_share)."""
        return self.method.teacher_share(self.iteration, self.args.teacher_share_start,
                                         self.args.teacher_share_iterations, self.args.teacher_share_end)

    def collect(self, phases: Phases) -> tuple[Rollout, list[dict]]:
        """One iteration's rollout and the episodes that ended in it."""
        rollout, episodes = collect(self.runner, self.steps, self.teacher_share(), phases)
        self.frames += self.steps * self.args.n_envs
        return rollout, episodes

    def update(self, rollout: Rollout, phases: Phases) -> dict:
        """The student's update, its critique of the teacher, the teacher's update. Returns metrics."""
        args, metrics = self.args, {}
        student_last, teacher_last = self.acting.values_after(self.runner.obs, self.history)
        critique = CritiqueSettings.from_args(args, self.method.critique)
        pair_logprobs = None  # mu_T of the actions the pair took, for the teacher's PPO on the student's steps
        if self.method.teacher_learns and self.student and critique.needs_pair_logprob:
            with phases("critique"):
                pair_logprobs = pair_logprob(self.student, rollout, self.teacher_share(), args.device)
        student_advantage = None  # how much better each action did than the student expected: its critique
        if self.student:
            student_advantage, returns = gae(rollout.reward, rollout.value, rollout.done, student_last, args.gamma,
                                             args.lam)
            with phases("student_update"):
                distill = anneal(self.iteration, args.distill_coef, args.distill_iterations)
                batch = training_batch(rollout, student_advantage, returns, args.device)
                metrics.update(update_student(self.student, self.optimizer, batch, StudentPPOSettings.from_args(args),
                                              distill, self.teacher is not None, self.torch_rng))
                metrics["distill_weight"] = distill
            if self.teacher:
                metrics["agreement_rate"] = float((rollout.action == rollout.instruction).mean())
                metrics["message_shown"] = float(rollout.shown.mean())
        if self.teacher:
            p = rollout.probs[rollout.queried]
            metrics.update(teacher_queries=int(rollout.queried.sum()), teacher_share=self.teacher_share(),
                           executed_rate=float(rollout.executed.mean()),
                           teacher_policy_entropy=float(entropy(p).mean()))
        if self.method.teacher_learns:
            with phases("teacher_update"):
                rows = teacher_rows(rollout, teacher_last, student_advantage if self.method.critique else None,
                                    pair_logprobs, critique)
                metrics.update(teacher_ppo_rows=int(rows.ppo.sum()), teacher_imitation_rows=int((rows.imitation > 0).sum()))
                if pair_logprobs is not None:  # how much of the student's steps the teacher's PPO kept
                    chosen = ~rollout.executed[rows.step, rows.env]
                    metrics.update(teacher_ppo_weight=float(rows.weight.mean()),
                                   teacher_ppo_weight_student=float(rows.weight[chosen].sum() / max(1, chosen.sum())))
                metrics.update(self.teacher.update(rows.shuffled(self.rng)))
        diverged = [f"{name} is {value}" for name, value in metrics.items() if not math.isfinite(value)]
        if diverged:
            raise FloatingPointError(", ".join(diverged))
        return metrics

    def state(self) -> dict:
        """Everything a checkpoint keeps but the teacher (saved by its updater); loadable with
        torch.load(weights_only=True)."""
        return {
            "iteration": self.iteration, "frames": self.frames, "wall_time": self.wall_time,
            "wandb_id": self.wandb_id, "llm_contexts": self.teacher.llm_contexts if self.teacher else 0,
            "student": self.student.state_dict() if self.student else {},
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "torch_rng": self.torch_rng.get_state(), "global_torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "envs": torch.frombuffer(bytearray(self.envs.get_state()), dtype=torch.uint8),
            "obs": {key: torch.as_tensor(value) for key, value in self.runner.obs.items()},
            "history": self.history.state(),
        }

    def restore(self, state: dict):
        """Continues from a checkpoint's `state()`."""
        self.iteration, self.frames, self.wall_time = state["iteration"], state["frames"], state["wall_time"]
        self.wandb_id = state["wandb_id"]
        if self.teacher:
            self.teacher.llm_contexts = state["llm_contexts"]
        if self.student:
            self.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.torch_rng.set_state(state["torch_rng"])
        torch.set_rng_state(state["global_torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.envs.set_state(state["envs"].numpy().tobytes())
        self.runner.obs = {key: value.numpy() for key, value in state["obs"].items()}
        self.history.load(state["history"])


def train(config: DictConfig) -> Path:
    """Runs (or resumes) the configured training; returns the output directory."""
    args = config.rl_script_args
    check_config(config)
    check_resumable(config)  # what output_dir holds: resumed only with nothing lost
    method = get_method(args.method)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    latest = checkpoint.find(output_dir, method.teacher_learns)
    teacher = start_teacher(config, method, latest)
    trainer = Trainer(config, method, teacher, checkpoint.load(latest) if latest else None)
    save_config(config, output_dir / "config.yaml")
    metrics = MetricsLog(config, trainer.iteration, trainer.wandb_id)
    trainer.wandb_id = metrics.wandb_id
    if latest:
        log.info("resuming from %s (iteration %d)", latest, trainer.iteration)
    evaluate_teacher_at_start(config, method, trainer)
    stop = StopSignals()
    try:
        run_iterations(trainer, metrics, stop, output_dir)
    finally:
        stop.restore()  # the final evaluation has nothing to checkpoint: Ctrl-C ends it at once
        checkpoint.drop_staged(output_dir)
    try:
        if stop.received:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping already: another Ctrl-C would only break the exit
            print(f"bidir: stopped by {signal.Signals(stop.received).name} at iteration {trainer.iteration} "
                  f"(checkpointed); rerun the same command to resume {output_dir}", file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT_CODE if stop.received == signal.SIGINT else PREEMPTED_EXIT_CODE)
        metrics.summarize(finish_run(config, trainer, checkpoint.find(output_dir, method.teacher_learns)))
    finally:
        metrics.close()
        if teacher:
            teacher.close()
    return output_dir


def _shown(value: float) -> str:
    """An iteration's mean over the episodes that ended in it; "-" where none ended (not "nan")."""
    return f"{value:.2f}" if value == value else "-"


def run_iterations(trainer: Trainer, metrics: MetricsLog, stop: StopSignals, output_dir: Path):
    """collect -> update -> log -> checkpoint, until the budget is spent or a stop signal arrives."""
    args = trainer.args
    bar = tqdm(total=args.iterations, initial=trainer.iteration, desc=args.method, unit="it", dynamic_ncols=True,
               disable=None)
    last_line, first = time.monotonic(), trainer.iteration + 1
    try:
        while trainer.iteration < args.iterations and not stop.received:
            started, phases = time.perf_counter(), Phases()
            rollout, episodes = trainer.collect(phases)
            try:
                row = trainer.update(rollout, phases)
            except FloatingPointError as error:  # a diverged loss: nothing of this iteration is kept
                raise FloatingPointError(f"{error} at iteration {trainer.iteration + 1}; the last good "
                                         f"checkpoint is kept") from None
            trainer.iteration += 1
            if args.eval_every and (trainer.iteration in (1, args.iterations)
                                    or trainer.iteration % args.eval_every == 0):
                with phases("held_out_eval"):
                    row.update(agents_row(args.method, args, trainer.student, trainer.teacher,
                                          args.eval_every_episodes))
            trainer.wall_time += time.perf_counter() - started
            row.update(summarize_episodes(episodes), iteration=trainer.iteration, frames=trainer.frames,
                       wall_time_s=round(trainer.wall_time, 3),
                       fps=round(trainer.steps * args.n_envs / (time.perf_counter() - started), 1),
                       llm_contexts=trainer.teacher.llm_contexts if trainer.teacher else 0,
                       **{f"time_{name}": round(s, 4) for name, s in phases.seconds.items()})
            metrics.write(row)
            checkpoint.save(output_dir, trainer.iteration, trainer.state(),
                            trainer.teacher if trainer.method.teacher_learns else None, args.keep_checkpoints)
            bar.set_postfix(success=_shown(row["success_rate"]), ret=_shown(row["return_mean"]), fps=f"{row['fps']:.0f}")
            bar.update(1)
            if bar.disable and (time.monotonic() - last_line >= PROGRESS_LINE_S
                                or trainer.iteration in (first, args.iterations)):
                last_line = time.monotonic()
                log.info("%s: iteration %d/%d, %d frames, return %s, success %s, %.0f fps, %.0f s", args.method,
                         trainer.iteration, args.iterations, trainer.frames, _shown(row["return_mean"]),
                         _shown(row["success_rate"]), row["fps"], trainer.wall_time)
    finally:
        bar.close()


class StopSignals:
    """SIGUSR1 (SLURM's warning before preemption), SIGTERM and SIGINT (Ctrl-C) end the run after
    the current iteration's checkpoint instead of killing it mid-write. Repeats count as one
    (run_with_requeue resends SIGUSR1), except a second Ctrl-C, which stops at once."""

    def __init__(self):
        self.received: int | None = None  # the first stop signal
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            log.warning("%s: stopping after this iteration's checkpoint%s", signal.Signals(signum).name,
                        " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")

    def restore(self):
        """The handlers from before."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


_composed = False  # set once hydra has built the config: tells config errors from run errors


@hydra.main(version_base=None, config_path="conf", config_name="config")
def hydra_main(config: DictConfig):
    """Hydra's task function: trains with the composed config."""
    global _composed
    _composed = True
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        train(config)
    except UsageError as error:
        print(f"bidir: error: {error}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as error:  # a diverged loss: the last good checkpoint stays
        print(f"bidir: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping already: another Ctrl-C would only break the exit
        print(f"bidir: interrupted; complete checkpoints stay in {config.rl_script_args.output_dir}: rerun the "
              f"same command to resume", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


def main():
    """Entry point (`python -m bidir.train`, `bidir-train`, lamorel_launcher's script). `--help`
    shows every key with its documentation and the methods; an unknown key is named with the key
    meant; a config hydra cannot compose exits with 2 like any bad input."""
    global _composed
    _composed = False  # a second call in one process (the tests) starts afresh
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(usage())
        sys.exit(0)
    try:
        check_override_keys(sys.argv[1:])
    except UsageError as error:
        print(f"bidir: error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_main()
    except SystemExit as exit_:
        if exit_.code == 1 and not _composed:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
