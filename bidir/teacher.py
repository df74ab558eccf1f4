"""The LLM teacher.

LLM side (runs inside a Lamorel server, or in-process under LocalCaller): the module functions
`score` (log pi_T of each candidate instruction) and `value` (V_T), the initializer that restores
a checkpoint, and the PPO updater. Client side: `Teacher`, which writes prompts, asks the LLM for
messages (memoized while the weights stay fixed) and sends rollouts to the updater.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from bidir.llm import (BaseModelInitializer, BaseModuleFunction, BaseUpdater, candidate_logits_and_tokens,
                       causal_context_end)
from bidir.lora import add_lora, load_trainable_state, lora_settings, trainable_parameters, trainable_state
from bidir.ppo import masked_mean, policy_loss, value_loss

TEACHER_CHECKPOINT = "teacher.pt"


def build_prompt(mission: str, observations: list[list[str]], actions: list[str],
                 critique: str | None = None) -> str:
    """The teacher's prompt: goal, the recent observations (oldest first) with the instruction
    given after each past one, the last critique when there is one, then `Action:`.

    `observations` holds lists of BabyAI-Text sentences; `actions` the instructions that followed
    all but the last observation."""
    lines = [f"Goal of the agent: {mission}"]
    for step, sentences in enumerate(observations):
        lines.append(f"Observation {step}: " + ", ".join(sentences))
        if step < len(actions):
            lines.append(f"Action {step}: {actions[step]}")
    if critique:
        lines.append(f"Critique: {critique}")
    lines.append("Action:")
    return "\n".join(lines)


class InstructionLogProbs(BaseModuleFunction):
    """log pi(candidate | context): the sum of the candidate's token log-probabilities.
    Lamorel's built-in `__score` returns probabilities, which underflow; RL needs logs."""

    def initialize(self):
        """Nothing to build: the scores come from the LLM's own logits."""

    def forward(self, forward_outputs, minibatch, tokenized_contexts, **kwargs):
        """Returns a (B,) tensor of candidate log-probabilities."""
        logits, tokens = candidate_logits_and_tokens(self.llm_config, forward_outputs, minibatch, tokenized_contexts)
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(2, tokens.unsqueeze(-1)).squeeze(-1)
        logprobs = logprobs.masked_fill(tokens == self.llm_config.pad_token, 0.0)
        return logprobs.sum(-1).cpu()


class TeacherValueHead(BaseModuleFunction):
    """V_T(prompt): an MLP on the LLM's last hidden state where the answer starts."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def initialize(self):
        """Builds the head on the server's device, sized to the LLM's hidden state. Its own seed
        makes the head the same on every server and backend, whatever their RNG state."""
        hidden = hidden_size(self.model_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = torch.nn.Sequential(
                torch.nn.Linear(hidden, 256), torch.nn.Sigmoid(), torch.nn.Linear(256, 1)).to(self.device)

    def forward(self, forward_outputs, minibatch, tokenized_contexts, **kwargs):
        """Returns a (B, 1) tensor of values."""
        if self.llm_config.model_type == "causal":
            state = forward_outputs["hidden_states"][-1][:, causal_context_end(self.llm_config, tokenized_contexts), :]
        else:
            state = forward_outputs["decoder_hidden_states"][-1][:, 0, :]
        return self.head(state.float().to(self.device)).cpu()


def hidden_size(model_config) -> int:
    """Width of the LLM's hidden states, whatever the family calls it (T5 d_model, GPT-2 n_embd,
    Llama/Qwen2 hidden_size): transformers maps them all to the text config's `hidden_size`."""
    return model_config.get_text_config().hidden_size


class TeacherInitializer(BaseModelInitializer):
    """Adds the LoRA adapter when the LLM config asks for one (`lora.enabled`, see bidir/lora.py),
    then loads a teacher checkpoint (LLM or adapter, and value head), if given."""

    def __init__(self, checkpoint: str | None, seed: int = 0):
        super().__init__()
        self.checkpoint = checkpoint
        self.seed = seed

    def initialize_model(self, model):
        """Returns the model with its adapter and the weights saved by TeacherPPOUpdater; unchanged
        for a full fine-tune without checkpoint."""
        settings = lora_settings(self.llm_config)
        if settings["enabled"]:
            model = add_lora(model, settings, self.seed)
        if self.checkpoint:
            state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
            load_trainable_state(model, state["model"])
        return model


class TeacherPPOUpdater(BaseUpdater):
    """GLAM's PPO loss on the LLM (clipped policy over the candidate distribution on the `ppo`
    rows, clipped value on every row, entropy bonus on the rows that train the policy) plus the
    critique's imitation term, -w * log pi_T(a), on rows with an imitation weight w > 0; gradient
    accumulation; grad-norm clipping. The optimizer lives here, across calls. On N servers each
    updates its share `_current_batch_ids` and DDP averages gradients.

    All contexts share one candidate list (the instructions).
    Keyword arguments of `caller.update(contexts, candidates, ...)`: actions, logprobs, values,
    advantages, returns, ppo (bool), imitation (weights) (tensors over all contexts), lr, epochs,
    minibatches (count per epoch), gradient_batch_size, clip_eps, entropy_coef, value_loss_coef,
    imitation_coef, max_grad_norm; `save_to` (write a checkpoint after the update) and
    `resume_from` (optimizer state to load first).
    Only parameters that require gradients train (all of them, or a LoRA adapter + the value head),
    and only those are checkpointed when part of the LLM is frozen."""

    def perform_update(self, contexts, candidates, _current_batch_ids, **kwargs):
        """Runs the PPO epochs on this server's share and returns mean losses."""
        module = getattr(self._llm_module, "module", self._llm_module)  # DDP under Lamorel
        if not hasattr(self, "optimizer"):
            self.optimizer = torch.optim.Adam(trainable_parameters(self._llm_module), lr=kwargs["lr"])
            if kwargs.get("resume_from") and os.path.exists(kwargs["resume_from"]):
                state = torch.load(kwargs["resume_from"], map_location="cpu", weights_only=True)
                self.optimizer.load_state_dict(state["optimizer"])
        losses = self._ppo(contexts, candidates, _current_batch_ids, kwargs) if contexts else {}
        if kwargs.get("save_to") and all(math.isfinite(v) for v in losses.values()):
            _save_atomically({"model": trainable_state(module), "optimizer": self.optimizer.state_dict()},
                             kwargs["save_to"])
        return losses

    def _ppo(self, contexts, candidates, batch_ids, kw):
        rows = torch.as_tensor(batch_ids["contexts"])
        data = {k: torch.as_tensor(kw[k])[rows]
                for k in ("actions", "logprobs", "values", "advantages", "returns", "ppo", "imitation")}
        sums = {"teacher_policy_loss": 0.0, "teacher_value_loss": 0.0, "teacher_entropy": 0.0,
                "teacher_imitation_loss": 0.0}
        steps = 0
        for _ in range(kw["epochs"]):
            for minibatch in np.array_split(np.arange(len(contexts)), kw["minibatches"]):
                pieces = np.array_split(minibatch, max(1, math.ceil(len(minibatch) / kw["gradient_batch_size"])))
                self.optimizer.zero_grad()
                for number, piece in enumerate(pieces):
                    # Under DDP (N servers) only a minibatch's last piece all-reduces gradients: the
                    # servers' shares may split into different numbers of pieces.
                    sync = number == len(pieces) - 1 or not hasattr(self._llm_module, "no_sync")
                    with contextlib.nullcontext() if sync else self._llm_module.no_sync():
                        parts = self._losses(contexts, candidates[piece[0]], piece, data, kw)
                        loss = (parts[0] - kw["entropy_coef"] * parts[2] + kw["value_loss_coef"] * parts[1]
                                + kw["imitation_coef"] * parts[3])
                        if not torch.isfinite(loss):  # report it to the client instead of stepping on it
                            return {name: value.item() for name, value in zip(sums, parts)}
                        (loss * len(piece) / len(minibatch)).backward()
                    for name, value in zip(sums, parts):
                        sums[name] += value.item()
                    steps += 1
                torch.nn.utils.clip_grad_norm_(self._llm_module.parameters(), kw["max_grad_norm"])
                self.optimizer.step()
        return {name: total / steps for name, total in sums.items()}

    def _losses(self, contexts, instructions, piece, data, kw):
        """(policy loss, value loss, entropy, imitation loss) on the rows `piece`. BabyAI prompts
        repeat: one forward per distinct prompt, gathered back per row."""
        distinct, rows_of = np.unique([contexts[i] for i in piece], return_inverse=True)
        outputs = self._llm_module(["score", "value"], contexts=list(distinct),
                                   candidates=[instructions] * len(distinct), require_grad=True,
                                   pad_contexts=True)  # causal: one context end per minibatch
        dist = torch.distributions.Categorical(logits=torch.stack([o["score"] for o in outputs])[rows_of])
        values = torch.stack([o["value"][0, 0] for o in outputs])[rows_of]
        d = {k: v[piece] for k, v in data.items()}
        logprobs = dist.log_prob(d["actions"])
        # the entropy bonus regularises the policy where it is trained: on other rows it alone
        # would pull a teacher that no longer acts back towards uniform
        trained = (d["ppo"] | (d["imitation"] > 0)).float()
        return (policy_loss(logprobs, d["logprobs"], d["advantages"], kw["clip_eps"], mask=d["ppo"].float()),
                value_loss(values, d["values"], d["returns"], kw["clip_eps"]),
                masked_mean(dist.entropy(), trained),
                -(d["imitation"] * logprobs).mean())


def _save_atomically(state, path):
    """Every server may write the same checkpoint; a per-process temp file and a rename keep the
    file whole whoever writes last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def teacher_module_functions(seed: int = 0) -> dict:
    """The module functions every teacher LLM serves, keyed as the updater and client call them."""
    return {"score": InstructionLogProbs(), "value": TeacherValueHead(seed)}


class Teacher:
    """Client side of the teacher: messages (pi_T, V_T) for prompts, and PPO updates.

    Within an iteration the teacher's weights are fixed, so a prompt seen before gets the same
    answer: outputs are memoized until `forget()` (called after each update)."""

    def __init__(self, caller, instructions: list[str]):
        self.caller = caller
        self.instructions = list(instructions)
        self.memo: dict[str, tuple[np.ndarray, float]] = {}
        self.llm_contexts = 0  # contexts actually sent to the LLM, for speed accounting

    def advise(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """pi_T over the instructions (n, k) and V_T (n,) for each prompt."""
        if not prompts:
            return np.zeros((0, len(self.instructions))), np.zeros(0, np.float32)
        missing = list(dict.fromkeys(p for p in prompts if p not in self.memo))
        if missing:
            outputs = self.caller.custom_module_fns(
                ["score", "value"], contexts=missing, candidates=[self.instructions] * len(missing))
            self.llm_contexts += len(missing)
            for prompt, output in zip(missing, outputs):
                probs = torch.softmax(output["score"].double(), dim=-1).numpy()
                self.memo[prompt] = (probs, float(output["value"][0, 0]))
        probs = np.stack([self.memo[p][0] for p in prompts])
        values = np.array([self.memo[p][1] for p in prompts], dtype=np.float32)
        return probs, values

    def forget(self):
        """Drops memoized outputs: call after the teacher's weights change."""
        self.memo.clear()

    def update(self, prompts: list[str], actions, logprobs, values, advantages, returns, ppo, imitation, args,
               save_to: str | None, resume_from: str | None) -> dict[str, float]:
        """Sends one update to the LLM server(s): PPO on the rows where `ppo` is true, imitation
        of `actions` weighted by `imitation`, value regression on every row. Returns the mean
        losses across servers."""
        minibatches = max(1, math.ceil(len(prompts) / args.teacher_minibatch_size))
        results = self.caller.update(
            prompts, [self.instructions] * len(prompts),
            actions=torch.as_tensor(actions), logprobs=torch.as_tensor(logprobs, dtype=torch.float32),
            values=torch.as_tensor(values, dtype=torch.float32),
            advantages=torch.as_tensor(advantages, dtype=torch.float32),
            returns=torch.as_tensor(returns, dtype=torch.float32), ppo=torch.as_tensor(ppo, dtype=torch.bool),
            imitation=torch.as_tensor(imitation, dtype=torch.float32), imitation_coef=args.critique_imitation,
            lr=args.teacher_lr, epochs=args.teacher_epochs, minibatches=minibatches,
            gradient_batch_size=args.teacher_gradient_batch_size, clip_eps=args.teacher_clip_eps,
            entropy_coef=args.teacher_entropy_coef, value_loss_coef=args.teacher_value_loss_coef,
            max_grad_norm=args.teacher_max_grad_norm, save_to=save_to, resume_from=resume_from)
        self.forget()
        results = [r for r in results if r]  # one per server; a server with no rows returns {}
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]} if results else {}
