"""Train a method on a BabyAI level: `python -m bidir.train [hydra overrides]`.

One loop for every method (bidir/methods.py). Per iteration:
  collect   the teacher writes messages; the student, the teacher (glam) or an annealed mixture acts;
  update    student PPO + distillation, then the teacher: PPO on the queries whose instruction
            was executed, and the student's critique (its advantages) where configured;
  log       metrics.csv, W&B, progress bar; then an atomic checkpoint.

The same file is `rl_script_args.path` under lamorel_launcher: there, LLM server processes stop
inside `make_caller` and serve the teacher; the RL process runs the loop.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from bidir.agent import PromptHistory, behaviour_logprob, sample_rows, student_inputs, summarize_episodes
from bidir.checks import UsageError, check_config
from bidir.critique import critique_sentence, teacher_targets
from bidir.envs import TextVecEnv
from bidir.llm import make_caller, under_lamorel_launcher
from bidir.methods import get_method
from bidir.ppo import anneal, gae
from bidir.student import Student, update_student
from bidir.teacher import TEACHER_CHECKPOINT, Teacher, TeacherInitializer, TeacherPPOUpdater, teacher_module_functions

log = logging.getLogger("bidir")

PREEMPTED_EXIT_CODE = 3
"""Exit status after SIGUSR1/SIGTERM: the run checkpointed and can be resumed."""
INTERRUPTED_EXIT_CODE = 130
"""Exit status after Ctrl-C (the shell's 128 + SIGINT), so that run_with_requeue does not requeue."""
PROGRESS_LINE_S = 30.0
"""Without a terminal (a log file, SLURM) no bar is drawn: a progress line instead, after the first
and last iteration and at most this often in between."""

METRIC_COLUMNS = [
    "iteration", "frames", "success_rate", "return_mean", "episode_length_mean", "episodes", "wall_time_s",
    "fps", "student_policy_loss", "student_value_loss", "student_entropy", "kl_teacher_student",
    "distill_weight", "message_shown", "agreement_rate", "teacher_acts", "executed_rate", "teacher_ppo_rows",
    "teacher_imitation_rows", "teacher_policy_loss", "teacher_value_loss", "teacher_imitation_loss",
    "teacher_entropy", "teacher_policy_entropy", "teacher_queries", "llm_contexts", "time_env",
    "time_teacher_scoring", "time_student_forward", "time_critique", "time_student_update",
    "time_teacher_update",
]


class Phases:
    """Wall time per phase of an iteration: `with phases("env"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._name = None

    def __call__(self, name):
        self._name = name
        return self

    def __enter__(self):
        self._start = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._start


class Trainer:
    """One training run: its environments, student, teacher, buffers, checkpoints and logs."""

    def __init__(self, config: DictConfig, caller, checkpoint: Path | None):
        self.config = config
        self.args = args = config.rl_script_args
        self.method = get_method(args.method)
        self.output_dir = Path(args.output_dir)
        self.instructions = list(args.instructions)
        self.k = len(self.instructions)
        self.envs = TextVecEnv(args.env_id, args.n_envs, args.seed, self.instructions, args.reward_scale)
        self.steps = args.steps_per_iteration // args.n_envs
        torch.manual_seed(args.seed)
        self.rng = np.random.default_rng(args.seed)
        self.torch_rng = torch.Generator().manual_seed(args.seed)
        self.teacher = Teacher(caller, self.instructions) if self.method.teacher else None
        self.student = Student(self.k, self.k).to(args.device) if self.method.student else None
        self.optimizer = (torch.optim.Adam(self.student.parameters(), lr=args.student_lr)
                          if self.student else None)
        self.history = PromptHistory(args.n_envs, args.prompt_history)
        self.iteration, self.frames, self.wall_time = 0, 0, 0.0
        self.wandb_id = None
        self.checkpoint = checkpoint
        if checkpoint:
            self._load(checkpoint)
        else:
            self.obs, self.infos = self.envs.reset()
            for env, info in enumerate(self.infos):
                self.history.start(env, info)

    # ---- collect -------------------------------------------------------------------------
    def teacher_acts(self) -> float:
        """eps_k, the probability that a query's instruction is executed: 1 when the teacher acts
        alone (glam), 0 without a teacher, else the annealed mixture's share."""
        if not self.method.teacher:
            return 0.0
        if not self.method.student:
            return 1.0
        return anneal(self.iteration, self.args.teacher_acts, self.args.teacher_acts_iterations)

    def collect(self, phases: Phases) -> tuple[dict, list[dict]]:
        """Runs `steps` steps in every env. Returns the per-step buffer (T, n) and episode stats."""
        args, n, T, k = self.args, self.args.n_envs, self.steps, self.k
        buf = {
            "image": np.zeros((T, n, 7, 7, 3), np.uint8), "direction": np.zeros((T, n), np.int64),
            "missions": [], "prompts": [[None] * n for _ in range(T)],
            "queried": np.zeros((T, n), bool), "instruction": np.zeros((T, n), np.int64),
            "probs": np.full((T, n, k), 1.0 / k), "teacher_value": np.zeros((T, n), np.float32),
            "shown": np.zeros((T, n), bool), "executed": np.zeros((T, n), bool), "action": np.zeros((T, n), np.int64),
            "logprob": np.zeros((T, n), np.float32), "value": np.zeros((T, n), np.float32),
            "reward": np.zeros((T, n), np.float32), "done": np.zeros((T, n), bool),
        }
        episodes = []
        instruction = np.zeros(n, np.int64)
        probs = np.full((n, k), 1.0 / k)
        teacher_value = np.zeros(n, np.float32)
        executed = np.zeros(n, bool)  # the current query's instruction is carried out, not the student's choice
        eps = self.teacher_acts()
        since_query = np.full(n, args.teacher_every)  # every env asks at the start of an iteration
        for t in range(T):
            missions = list(self.history.missions)
            if self.teacher:
                with phases("teacher_scoring"):
                    ask = np.flatnonzero(since_query >= args.teacher_every)
                    prompts = [self.history.prompt(e) for e in ask]
                    new_probs, new_values = self.teacher.advise(prompts)
                    probs[ask], teacher_value[ask] = new_probs, new_values
                    instruction[ask] = sample_rows(new_probs, self.rng)
                    executed[ask] = self.rng.random(len(ask)) < eps
                    since_query[ask] = 0
                    buf["queried"][t, ask] = True
                    for e, prompt in zip(ask, prompts):
                        buf["prompts"][t][e] = prompt
            shown = self.rng.random(n) < 1.0 - args.message_dropout if self.teacher else np.zeros(n, bool)
            if self.student:
                with phases("student_forward"), torch.no_grad():
                    x = student_inputs(self.obs, missions, instruction, probs, teacher_value, shown, args.device)
                    dist, value = self.student(x)
                    action = torch.multinomial(dist.probs, 1, generator=self.torch_rng).squeeze(1).cpu().numpy()
                    action = np.where(executed, instruction, action)
                    buf["logprob"][t] = behaviour_logprob(dist.probs.cpu().numpy(), action, instruction, eps)
                    buf["value"][t] = value.cpu().numpy()
            else:
                action = instruction.copy()
            buf["image"][t], buf["direction"][t] = self.obs["image"], self.obs["direction"]
            buf["missions"].append(missions)
            buf["instruction"][t], buf["probs"][t], buf["teacher_value"][t] = instruction, probs, teacher_value
            buf["shown"][t], buf["executed"][t], buf["action"][t] = shown, executed, action
            with phases("env"):
                self.obs, reward, done, self.infos = self.envs.step(action)
            buf["reward"][t], buf["done"][t] = reward, done
            since_query += 1
            for e, info in enumerate(self.infos):
                if done[e]:
                    episodes.append(info["episode"])
                    self.history.start(e, info)
                    since_query[e] = args.teacher_every  # a new episode gets a fresh message
                else:
                    self.history.advance(e, self.instructions[action[e]], info)
            if args.critique_in_prompt and self.method.critique:
                with phases("critique"):
                    self._online_critique(buf, t)
        self.frames += T * n
        return buf, episodes

    def _online_critique(self, buf, t):
        """The critique sentence for the next prompt: the sign of the student's one-step TD error
        of the action just taken (the full critique needs the whole rollout)."""
        n = self.args.n_envs
        with torch.no_grad():
            x = student_inputs(self.obs, list(self.history.missions), np.zeros(n, np.int64),
                               np.zeros((n, self.k)), np.zeros(n), np.zeros(n, bool), self.args.device)
            _, next_value = self.student(x)
        td = buf["reward"][t] + self.args.gamma * next_value.numpy() * ~buf["done"][t] - buf["value"][t]
        for e in range(n):
            if not buf["done"][t][e]:
                self.history.critiques[e] = critique_sentence(self.instructions[buf["action"][t][e]], td[e])

    # ---- critique and updates -----------------------------------------------------------
    def bootstrap(self) -> tuple[np.ndarray, np.ndarray]:
        """V_S and V_T of the states after the rollout (the teacher's message for them included)."""
        n = self.args.n_envs
        student_value = np.zeros(n, np.float32)
        teacher_value = np.zeros(n, np.float32)
        probs, instruction, shown = np.full((n, self.k), 1.0 / self.k), np.zeros(n, np.int64), np.zeros(n, bool)
        if self.teacher:
            probs, teacher_value = self.teacher.advise([self.history.prompt(e) for e in range(n)])
            instruction, shown = probs.argmax(1), np.ones(n, bool)
        if self.student:
            with torch.no_grad():
                x = student_inputs(self.obs, list(self.history.missions), instruction, probs, teacher_value,
                                   shown, self.args.device)
                student_value = self.student(x)[1].cpu().numpy()
        return student_value, teacher_value

    def teacher_transitions(self, buf: dict, last_value: np.ndarray, student_advantages: np.ndarray | None):
        """The teacher's training rows: one per query, rewarded with the env reward summed until
        the next query, GAE over each env's queries with V_T (its value targets, on every row);
        then PPO on the executed queries and imitation of the student's good choices, as the
        critique settings say (bidir/critique.py)."""
        args = self.args
        rows = {key: [] for key in ("prompt", "instruction", "action", "executed", "probs", "value", "advantage",
                                    "returns", "student_advantage")}
        for e in range(args.n_envs):
            starts = np.flatnonzero(buf["queried"][:, e])
            if len(starts) == 0:
                continue
            ends = np.append(starts[1:], self.steps)
            rewards = np.array([buf["reward"][s:t, e].sum() for s, t in zip(starts, ends)], np.float32)
            dones = buf["done"][ends - 1, e]
            values = buf["teacher_value"][starts, e]
            advantages, returns = gae(rewards[:, None], values[:, None], dones[:, None], last_value[e:e + 1],
                                      args.gamma, args.lam)
            rows["prompt"] += [buf["prompts"][s][e] for s in starts]
            for key in ("instruction", "action", "executed", "probs"):
                rows[key].append(buf[key][starts, e])
            rows["value"].append(values)
            rows["advantage"].append(advantages[:, 0])
            rows["returns"].append(returns[:, 0])
            if student_advantages is not None:
                rows["student_advantage"].append(student_advantages[starts, e])
        prompts = rows.pop("prompt")
        data = {key: np.concatenate(value) for key, value in rows.items() if value}  # no student: no advantages
        critique = self.method.critique
        targets = teacher_targets(data["instruction"], data["action"], data["executed"], data["advantage"],
                                  data.get("student_advantage"), critique and args.critique_advantage,
                                  critique and args.critique_imitation > 0, args.teacher_normalize_advantages)
        logprob = np.log(data["probs"][np.arange(len(targets.action)), targets.action])
        return {"prompt": prompts, "action": targets.action, "logprob": logprob, "value": data["value"],
                "advantage": targets.advantage, "returns": data["returns"], "ppo": targets.ppo,
                "imitation": targets.imitation}

    def update(self, buf: dict, phases: Phases, checkpoint_dir: Path) -> dict:
        """Student advantages -> student update -> teacher update with the student's critique.
        Returns metrics."""
        args, metrics = self.args, {}
        student_last, teacher_last = self.bootstrap()
        # every step with a teacher has a message (held between queries) to distill
        taught = np.full(buf["done"].shape, self.teacher is not None)
        advantages = None
        if self.student:
            advantages, returns = gae(buf["reward"], buf["value"], buf["done"], student_last, args.gamma, args.lam)
            with phases("student_update"):
                distill = anneal(self.iteration, args.distill_coef, args.distill_iterations)
                flat = lambda a: torch.as_tensor(a.reshape(-1, *a.shape[2:]), device=args.device)  # noqa: E731
                x = student_inputs({"image": buf["image"].reshape(-1, 7, 7, 3), "direction": buf["direction"].reshape(-1)},
                                   [m for row in buf["missions"] for m in row], buf["instruction"].reshape(-1),
                                   buf["probs"].reshape(-1, self.k), buf["teacher_value"].reshape(-1),
                                   buf["shown"].reshape(-1), args.device)
                x.update(action=flat(buf["action"]), logprob=flat(buf["logprob"]), value=flat(buf["value"]),
                         advantage=flat(advantages), returns=flat(returns),
                         target_probs=flat(buf["probs"]).float(), taught=flat(taught))
                try:
                    metrics.update(update_student(self.student, self.optimizer, x, args, distill, self.torch_rng))
                except FloatingPointError as error:
                    raise FloatingPointError(f"{error} at iteration {self.iteration}; the last good checkpoint "
                                             f"is kept") from None
                metrics["distill_weight"] = distill
            if self.teacher:
                metrics["agreement_rate"] = float((buf["action"] == buf["instruction"]).mean())
                metrics["message_shown"] = float(buf["shown"].mean())
        if self.teacher:
            metrics["teacher_queries"] = int(buf["queried"].sum())
            metrics["teacher_acts"] = self.teacher_acts()
            metrics["executed_rate"] = float(buf["executed"].mean())
            p = buf["probs"][buf["queried"]]
            metrics["teacher_policy_entropy"] = float(-(p * np.log(np.clip(p, 1e-12, None))).sum(1).mean())
        if self.method.teacher_learns:
            with phases("teacher_update"):
                data = self.teacher_transitions(buf, teacher_last, advantages)
                metrics["teacher_ppo_rows"] = int(data["ppo"].sum())
                metrics["teacher_imitation_rows"] = int((data["imitation"] > 0).sum())
                order = self.rng.permutation(len(data["prompt"]))  # the updater walks minibatches in order
                metrics.update(self.teacher.update(
                    [data["prompt"][i] for i in order], data["action"][order], data["logprob"][order],
                    data["value"][order], data["advantage"][order], data["returns"][order], data["ppo"][order],
                    data["imitation"][order], args, save_to=str(checkpoint_dir / TEACHER_CHECKPOINT),
                    resume_from=str(self.checkpoint / TEACHER_CHECKPOINT) if self.checkpoint else None))
        for name, value in metrics.items():
            if not math.isfinite(value):
                raise FloatingPointError(f"{name} is {value} at iteration {self.iteration}; "
                                         f"the last good checkpoint is kept")
        return metrics

    # ---- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict:
        """Everything but the teacher (which its updater saves): loadable with weights_only=True."""
        return {
            "iteration": self.iteration, "frames": self.frames, "wall_time": self.wall_time,
            "wandb_id": self.wandb_id, "llm_contexts": self.teacher.llm_contexts if self.teacher else 0,
            "student": self.student.state_dict() if self.student else {},
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "torch_rng": self.torch_rng.get_state(), "global_torch_rng": torch.get_rng_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "envs": torch.frombuffer(bytearray(self.envs.get_state()), dtype=torch.uint8),
            "obs": {key: torch.as_tensor(value) for key, value in self.obs.items()},
            "infos": [{"mission": i["mission"], "descriptions": list(i["descriptions"])} for i in self.infos],
            "history": self.history.state(),
        }

    def _load(self, checkpoint: Path):
        state = torch.load(checkpoint / "trainer.pt", weights_only=True)
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
        self.obs = {key: value.numpy() for key, value in state["obs"].items()}
        self.infos = state["infos"]
        self.history.load(state["history"])


def find_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint that loads; broken ones (a kill mid-write) are skipped."""
    root = output_dir / "checkpoints"
    for candidate in sorted(root.glob("iter_*[0-9]"), reverse=True) if root.exists() else []:
        try:  # mmap reads the archive's index, not the tensors: a truncated file still fails here
            torch.load(candidate / "trainer.pt", weights_only=True, mmap=True)
            if (candidate / TEACHER_CHECKPOINT).exists():
                torch.load(candidate / TEACHER_CHECKPOINT, weights_only=True, mmap=True)
            return candidate
        except Exception as error:  # noqa: BLE001 - any unreadable file means "not this one"
            log.warning("skipping unreadable checkpoint %s (%s)", candidate, error)
    return None


def save_checkpoint(trainer: Trainer, staging: Path, keep: int) -> Path:
    """Moves the staged checkpoint (teacher already written there) into place atomically, then
    prunes old ones."""
    torch.save(trainer.state(), staging / "trainer.pt")
    final = staging.with_name(f"iter_{trainer.iteration:06d}")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    for old in sorted(final.parent.glob("iter_*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class MetricsLog:
    """metrics.csv (one row per iteration, rows past the resumed checkpoint dropped) and W&B."""

    def __init__(self, config: DictConfig, trainer: Trainer):
        self.path = Path(config.rl_script_args.output_dir) / "metrics.csv"
        rows = []
        if self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) < trainer.iteration]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, METRIC_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.wandb = None
        if config.wandb.mode != "disabled":
            import wandb
            trainer.wandb_id = trainer.wandb_id or uuid.uuid4().hex[:12]  # kept in checkpoints: a resumed run continues it
            args = config.rl_script_args
            self.wandb = wandb.init(
                project=config.wandb.project, entity=config.wandb.entity, group=config.wandb.group,
                name=Path(args.output_dir).name, tags=[args.method, f"seed{args.seed}"], mode=config.wandb.mode,
                id=trainer.wandb_id, resume="allow", dir=str(args.output_dir),
                config=OmegaConf.to_container(config, resolve=True))

    def write(self, row: dict):
        """Appends one iteration's row and sends it to W&B under the same keys."""
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, METRIC_COLUMNS, restval="").writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
        if self.wandb:
            self.wandb.log({k: v for k, v in row.items() if v == v}, step=row["frames"])

    def close(self):
        """Finishes the W&B run."""
        if self.wandb:
            self.wandb.finish()


def start_teacher_llm(config: DictConfig, checkpoint: Path | None):
    """The LLM backend serving the teacher (Lamorel under lamorel_launcher, LocalCaller otherwise),
    or None when the method has no teacher. On Lamorel's server processes this never returns."""
    method = get_method(config.rl_script_args.method)
    if not method.teacher and not under_lamorel_launcher():
        return None
    teacher_checkpoint = checkpoint / TEACHER_CHECKPOINT if checkpoint else None
    caller = make_caller(
        config.lamorel_args,
        custom_updater={"main_llm": TeacherPPOUpdater()} if method.teacher_learns else {},
        custom_module_functions={"main_llm": teacher_module_functions(config.rl_script_args.seed)},
        custom_model_initializer={"main_llm": TeacherInitializer(
            str(teacher_checkpoint) if teacher_checkpoint and teacher_checkpoint.exists() else None,
            seed=config.rl_script_args.seed)})
    if not method.teacher:  # the launcher started LLM servers anyway: release them
        caller.close()
        return None
    return caller


def train(config: DictConfig) -> Path:
    """Runs (or resumes) the configured training; returns the output directory."""
    args = config.rl_script_args
    check_config(config)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = find_checkpoint(output_dir)
    caller = start_teacher_llm(config, checkpoint)
    trainer = Trainer(config, caller, checkpoint)
    OmegaConf.save(config, output_dir / "config.yaml", resolve=True)
    metrics = MetricsLog(config, trainer)
    if checkpoint:
        log.info("resuming from %s (iteration %d)", checkpoint, trainer.iteration)
    from bidir.report import evaluate_teacher_at_start, finish_run
    evaluate_teacher_at_start(config, trainer)
    stop = StopSignals()
    bar = tqdm(total=args.iterations, initial=trainer.iteration, desc=f"{args.method}", unit="it",
               dynamic_ncols=True, disable=None)
    last_line, first = time.monotonic(), trainer.iteration + 1
    staging_root = output_dir / "checkpoints"
    staging_root.mkdir(exist_ok=True)
    try:
        while trainer.iteration < args.iterations and not stop.received:
            started, phases = time.perf_counter(), Phases()
            staging = staging_root / f"iter_{trainer.iteration:06d}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            buf, episodes = trainer.collect(phases)
            row = trainer.update(buf, phases, staging)
            trainer.wall_time += time.perf_counter() - started
            row.update(summarize_episodes(episodes), iteration=trainer.iteration, frames=trainer.frames,
                       wall_time_s=round(trainer.wall_time, 3),
                       fps=round(trainer.steps * args.n_envs / (time.perf_counter() - started), 1),
                       llm_contexts=trainer.teacher.llm_contexts if trainer.teacher else 0,
                       **{f"time_{name}": round(s, 4) for name, s in phases.seconds.items()})
            metrics.write(row)
            trainer.iteration += 1
            trainer.checkpoint = save_checkpoint(trainer, staging, args.keep_checkpoints)
            bar.set_postfix(success=f"{row['success_rate']:.2f}", ret=f"{row['return_mean']:.2f}",
                            fps=f"{row['fps']:.0f}")
            bar.update(1)
            if bar.disable and (time.monotonic() - last_line >= PROGRESS_LINE_S
                                or trainer.iteration in (first, args.iterations)):
                last_line = time.monotonic()
                log.info("%s: iteration %d/%d, %d frames, return %.2f, success %.2f, %.0f fps, %.0f s", args.method,
                         trainer.iteration, args.iterations, trainer.frames, row["return_mean"],
                         row["success_rate"], row["fps"], trainer.wall_time)
    finally:
        stop.restore()  # the final evaluation has nothing to checkpoint: Ctrl-C ends it at once
        bar.close()
        metrics.close()
        for staged in staging_root.glob("iter_*.tmp"):  # an iteration cut short: never resumed from, so drop it
            shutil.rmtree(staged, ignore_errors=True)
    if stop.received:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping already: another Ctrl-C would only break the exit
        print(f"bidir: stopped by {signal.Signals(stop.received).name} at iteration {trainer.iteration} "
              f"(checkpointed); rerun the same command to resume {output_dir}", file=sys.stderr)
        if caller:
            caller.close()
        sys.exit(INTERRUPTED_EXIT_CODE if stop.received == signal.SIGINT else PREEMPTED_EXIT_CODE)
    finish_run(config, trainer, caller)
    if caller:
        caller.close()
    return output_dir


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
    try:
        train(config)
    except UsageError as error:
        print(f"bidir: error: {error}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as error:  # a diverged loss: the staged checkpoint is dropped
        print(f"bidir: error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping already: another Ctrl-C would only break the exit
        print(f"bidir: interrupted; complete checkpoints stay in {config.rl_script_args.output_dir}: rerun the "
              f"same command to resume", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT_CODE)


def main():
    """Entry point (`python -m bidir.train`, `bidir-train`, lamorel_launcher's script). A config
    hydra cannot compose (unknown key, malformed override) exits with 2 like any bad input."""
    try:
        hydra_main()
    except SystemExit as exit_:
        if exit_.code == 1 and not _composed:
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
