"""The RL student: a small actor-critic over BabyAI's symbolic view, its mission and the teacher's
message, trained with PPO plus a distillation term KL(pi_T || pi_S) that fades out."""
from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from bidir.ppo import Batch, minibatches, policy_loss, value_loss

MISSION_BUCKETS = 512
MISSION_WORDS = 16


def mission_tokens(missions: list[str]) -> np.ndarray:
    """Hash each mission's words into bucket ids (0 is padding): a vocabulary-free encoding that
    covers every BabyAI level. crc32, unlike hash(), is the same in every process."""
    tokens = np.zeros((len(missions), MISSION_WORDS), dtype=np.int64)
    for row, mission in enumerate(missions):
        words = mission.lower().split()[:MISSION_WORDS]
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


def update_student(student: Student, optimizer: torch.optim.Optimizer, batch: Batch, args,
                   distill: float, generator: torch.Generator) -> dict[str, float]:
    """PPO epochs over the rollout, plus distill * KL(pi_T || pi_S) on every step the teacher was
    consulted, shown to the student or not (so the student learns to act without the message).

    batch holds the student's inputs plus action, logprob, value, advantage, returns,
    target_probs (pi_T) and taught (whether pi_T exists for the step)."""
    sums = {"student_policy_loss": 0.0, "student_value_loss": 0.0, "student_entropy": 0.0, "kl_teacher_student": 0.0}
    count = 0
    for _ in range(args.student_epochs):
        for index in minibatches(len(batch), args.student_minibatch_size, generator):
            mb = batch[index]
            dist, values = student(mb)
            entropy = dist.entropy().mean()
            p_loss = policy_loss(dist.log_prob(mb.action), mb.logprob, mb.advantage, args.student_clip_eps)
            v_loss = value_loss(values, mb.value, mb.returns, args.student_clip_eps)
            kl = kl_teacher_student(mb.target_probs, dist.logits, mb.taught)
            loss = (p_loss - args.student_entropy_coef * entropy + args.student_value_loss_coef * v_loss
                    + distill * kl)
            if not torch.isfinite(loss):  # stop before a step spreads it into the weights
                parts = dict(zip(sums, (p_loss, v_loss, entropy, kl)))
                raise FloatingPointError(", ".join(f"{name} is {value.item()}" for name, value in parts.items()
                                                   if not torch.isfinite(value)))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(student.parameters(), args.student_max_grad_norm)
            optimizer.step()
            for name, value in zip(sums, (p_loss, v_loss, entropy, kl)):
                sums[name] += value.item()
            count += 1
    return {name: total / max(count, 1) for name, total in sums.items()}


def kl_teacher_student(teacher_probs: torch.Tensor, student_logits: torch.Tensor,
                       has_teacher: torch.Tensor) -> torch.Tensor:
    """Mean KL(pi_T || pi_S) over the rows where the teacher spoke (0 when it never did)."""
    if not has_teacher.any():
        return student_logits.sum() * 0.0
    p = teacher_probs[has_teacher]
    log_q = torch.log_softmax(student_logits[has_teacher], dim=-1)
    kl = (p * (torch.log(p.clamp(min=1e-12)) - log_q)).sum(-1)
    return kl.mean()
