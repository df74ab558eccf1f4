"""The RL student: a small actor-critic over BabyAI's symbolic view, its mission and the teacher's
message, trained with PPO plus a distillation term KL(pi_T || pi_S) that fades out."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from bidir.ppo import Batch, approx_kl_and_clipfrac, minibatches, policy_loss, value_loss

MISSION_BUCKETS = 512
MISSION_WORDS = 48  # BabyAI's longest missions (BossLevel, SynthSeq) have about 30 words


def mission_tokens(missions: list[str]) -> np.ndarray:
    """Hash each mission's words into bucket ids (0 is padding): a vocabulary-free encoding that
    covers every BabyAI level. crc32, unlike hash(), is the same in every process. The student
    averages the words' embeddings, so word order is lost: "put the red ball next to the blue
    key" reads as its converse (docs/design.md, "Levels and mixes")."""
    tokens = np.zeros((len(missions), MISSION_WORDS), dtype=np.int64)
    for row, mission in enumerate(missions):
        words = mission.lower().split()
        if len(words) > MISSION_WORDS:
            raise ValueError(f"a mission of {len(words)} words is longer than the student reads "
                             f"({MISSION_WORDS}): {mission!r}")
        tokens[row, :len(words)] = [1 + zlib.crc32(w.encode()) % (MISSION_BUCKETS - 1) for w in words]
    return tokens


class Student(nn.Module):
    """Actor-critic pi_S(a | x, mission, m) and V_S. The message m is the teacher's instruction,
    its distribution pi_T and value V_T; index `n_instructions` means "no message" (acting alone)."""

    def __init__(self, n_actions: int, n_instructions: int, hidden: int = 64):
        super().__init__()
        self.n_instructions = n_instructions
        self.image = nn.Sequential(  # torch-ac's 7x7 symbolic-grid encoder
            nn.Conv2d(3, 16, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2), nn.ReLU(),
            nn.Conv2d(32, 64, 2), nn.ReLU(), nn.Flatten())
        self.direction = nn.Embedding(4, 8)
        self.mission = nn.Embedding(MISSION_BUCKETS, 32, padding_idx=0)
        self.instruction = nn.Embedding(n_instructions + 1, 16)
        self.teacher_belief = nn.Linear(n_instructions + 1, 16)
        features = 64 + 8 + 32 + 16 + 16
        self.actor = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))
        self.critic = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, obs: Batch) -> tuple[Categorical, torch.Tensor]:
        """obs: image (B,7,7,3), direction (B,), mission (B,L) token ids, instruction (B,),
        teacher_probs (B,k), teacher_value (B,). Returns pi_S and V_S."""
        image = self.image(obs.image.float().permute(0, 3, 1, 2))
        mask = (obs.mission > 0).float().unsqueeze(-1)
        mission = (self.mission(obs.mission) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        belief = torch.cat([obs.teacher_probs, obs.teacher_value.unsqueeze(-1)], dim=-1)
        x = torch.cat([image, self.direction(obs.direction), mission,
                       self.instruction(obs.instruction), self.teacher_belief(belief)], dim=-1)
        return Categorical(logits=self.actor(x)), self.critic(x).squeeze(-1)


def student_inputs(obs: dict, missions: list[str], instruction: np.ndarray, probs: np.ndarray,
                   value: np.ndarray, shown: np.ndarray, device="cpu") -> Batch:
    """The student's input batch. Where `shown` is false (or there is no teacher) the message is
    replaced by "no message": instruction index k and zero pi_T, V_T."""
    k = probs.shape[1]
    return Batch(
        image=torch.as_tensor(obs["image"], device=device),
        direction=torch.as_tensor(obs["direction"], device=device),
        mission=torch.as_tensor(mission_tokens(missions), device=device),
        instruction=torch.as_tensor(np.where(shown, instruction, k), device=device),
        teacher_probs=torch.as_tensor(probs * shown[:, None], dtype=torch.float32, device=device),
        teacher_value=torch.as_tensor(value * shown, dtype=torch.float32, device=device),
    )


def training_batch(rollout, advantages: np.ndarray, returns: np.ndarray, device="cpu") -> Batch:
    """A rollout's steps, flattened, as the student's update reads them: its inputs, plus the
    action, its behaviour log-probability, V_S, advantage, return and the teacher's pi_T."""
    def flat(a):
        return torch.as_tensor(a.reshape(-1, *a.shape[2:]), device=device)
    k = rollout.probs.shape[-1]
    batch = student_inputs({"image": rollout.image.reshape(-1, 7, 7, 3), "direction": rollout.direction.reshape(-1)},
                           [m for row in rollout.missions for m in row], rollout.instruction.reshape(-1),
                           rollout.probs.reshape(-1, k), rollout.teacher_value.reshape(-1), rollout.shown.reshape(-1),
                           device)
    batch.update(action=flat(rollout.action), logprob=flat(rollout.logprob), value=flat(rollout.value),
                 advantage=flat(advantages), returns=flat(returns), target_probs=flat(rollout.probs).float())
    return batch


@dataclass(frozen=True)
class StudentPPOSettings:
    """The student's PPO hyperparameters (rl_script_args.student_*)."""

    lr: float
    epochs: int
    minibatch_size: int
    clip_eps: float
    entropy_coef: float
    value_loss_coef: float
    max_grad_norm: float

    @classmethod
    def from_args(cls, args) -> StudentPPOSettings:
        """From the `rl_script_args` node."""
        return cls(**{f.name: args[f"student_{f.name}"] for f in fields(cls)})


LOSS_NAMES = ("student_policy_loss", "student_value_loss", "student_entropy", "kl_teacher_student",
              "student_approx_kl", "student_clipfrac")


def update_student(student: Student, optimizer: torch.optim.Optimizer, batch: Batch, settings: StudentPPOSettings,
                   distill: float, taught: bool, generator: torch.Generator) -> dict[str, float]:
    """PPO epochs over the rollout, plus distill * KL(pi_T || pi_S) on every step when there is a
    teacher (`taught`), its message shown to the student or not, so the student learns to act
    without it. Returns the mean losses."""
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    count = 0
    for _ in range(settings.epochs):
        for index in minibatches(len(batch), settings.minibatch_size, generator):
            mb = batch[index]
            dist, values = student(mb)
            entropy = dist.entropy().mean()
            logprobs = dist.log_prob(mb.action)
            p_loss = policy_loss(logprobs, mb.logprob, mb.advantage, settings.clip_eps)
            v_loss = value_loss(values, mb.value, mb.returns, settings.clip_eps)
            kl = kl_teacher_student(mb.target_probs, dist.logits) if taught else torch.zeros(())
            loss = p_loss - settings.entropy_coef * entropy + settings.value_loss_coef * v_loss + distill * kl
            parts = (p_loss, v_loss, entropy, kl)
            if not torch.isfinite(loss):  # stop before a step spreads it into the weights
                raise FloatingPointError(", ".join(f"{name} is {value.item()}" for name, value in zip(sums, parts)
                                                   if not torch.isfinite(value)))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), settings.max_grad_norm)
            optimizer.step()
            for name, value in zip(sums, (*parts, *approx_kl_and_clipfrac(logprobs, mb.logprob, settings.clip_eps))):
                sums[name] += value.item()
            count += 1
    return {name: total / max(count, 1) for name, total in sums.items()}


def kl_teacher_student(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(pi_T || pi_S) over the rows."""
    log_q = torch.log_softmax(student_logits, dim=-1)
    kl = (teacher_probs * (torch.log(teacher_probs.clamp(min=1e-12)) - log_q)).sum(-1)
    return kl.mean()
