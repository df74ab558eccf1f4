"""The teacher's LLM side: what runs inside a Lamorel server (or in-process under LocalCaller).

Lamorel's three extension points, one each: the module functions `score` (log pi_T of each
candidate instruction) and `value` (V_T); the initializer, which adds a LoRA adapter when asked;
and the updater, which trains the teacher (PPO plus the critique's imitation term) and saves and
loads its checkpoint. The client side is bidir/teacher.py.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from bidir.llm import (BaseModelInitializer, BaseModuleFunction, BaseUpdater, answer_start_state,
                       candidate_token_logprobs, candidate_tokens, install_shared_prefix, supports_shared_prefix)
from bidir.lora import add_lora, load_trainable_state, lora_settings, trainable_parameters, trainable_state
from bidir.ppo import approx_kl_and_clipfrac, masked_mean, policy_loss, value_loss


CANDIDATE_SCORINGS = ("sum", "mean")
"""How a candidate's token log-probabilities make its score (llm config `candidate_scoring`)."""


class InstructionLogProbs(BaseModuleFunction):
    """A candidate's score, log pi(candidate | context) up to normalization: the sum of its token
    log-probabilities (`candidate_scoring: sum`, the default, also where the key is absent), or
    their mean (`mean`), which does not favour candidates of fewer tokens.
    Lamorel's built-in `__score` returns probabilities, which underflow; RL needs logs."""

    def initialize(self):
        """Nothing to build: the scores come from the LLM's own logits."""

    def forward(self, forward_outputs, minibatch, tokenized_contexts, **kwargs):
        """Returns a (B,) tensor of candidate log-probabilities."""
        logprobs = candidate_token_logprobs(self.llm_config, forward_outputs, minibatch, tokenized_contexts)
        total = logprobs.sum(-1)
        if self.llm_config.get("candidate_scoring", "sum") == "mean":
            tokens = candidate_tokens(self.llm_config, minibatch, tokenized_contexts)
            total = total / (tokens != self.llm_config.pad_token).sum(-1).clamp(min=1)
        return total.cpu()


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
        state = answer_start_state(self.llm_config, forward_outputs, tokenized_contexts)
        return self.head(state.float().to(self.device)).cpu()


def hidden_size(model_config) -> int:
    """Width of the LLM's hidden states, whatever the family calls it (T5 d_model, GPT-2 n_embd,
    Llama/Qwen2 hidden_size): transformers maps them all to the text config's `hidden_size`."""
    return model_config.get_text_config().hidden_size


def teacher_module_functions(seed: int = 0) -> dict:
    """The module functions every teacher LLM serves, keyed as the updater and client call them."""
    return {"score": InstructionLogProbs(), "value": TeacherValueHead(seed)}


class TeacherInitializer(BaseModelInitializer):
    """Adds the LoRA adapter when the LLM config asks for one (`lora.enabled`, see bidir/lora.py),
    then, for a Llama-shaped causal model, the shared-prefix scoring (`shared_prefix`, default on;
    bidir/llm/shared_prefix.py) with its cache of frozen layers' outputs (`frozen_cache_mb`)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def initialize_model(self, model):
        """Returns the model with its adapter (unchanged for a full fine-tune) and its scoring."""
        settings = lora_settings(self.llm_config)
        if settings["enabled"]:
            model = add_lora(model, settings, self.seed)
        hf_model = model._LLM_model
        hf_model = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model  # peft
        if (self.llm_config.model_type == "causal" and self.llm_config.get("shared_prefix", True)
                and supports_shared_prefix(hf_model)):
            install_shared_prefix(hf_model, self.llm_config.get("frozen_cache_mb", 1024))
        return model


@dataclass(frozen=True)
class TeacherPPOSettings:
    """The teacher's PPO hyperparameters (rl_script_args.teacher_*, critique_imitation)."""

    lr: float
    epochs: int
    minibatch_size: int        # contexts per optimizer step
    gradient_batch_size: int   # contexts per forward/backward (gradient accumulation)
    clip_eps: float
    entropy_coef: float
    value_loss_coef: float
    imitation_coef: float
    max_grad_norm: float

    @classmethod
    def from_args(cls, args) -> TeacherPPOSettings:
        """From the `rl_script_args` node."""
        names = {f.name: f"teacher_{f.name}" for f in fields(cls)} | {"imitation_coef": "critique_imitation"}
        return cls(**{name: args[key] for name, key in names.items()})


LOSS_NAMES = ("teacher_policy_loss", "teacher_value_loss", "teacher_entropy", "teacher_imitation_loss",
              "teacher_approx_kl", "teacher_clipfrac")


class TeacherPPOUpdater(BaseUpdater):
    """Trains the teacher and keeps its checkpoint.

    `caller.update(prompts, candidates, **rows)` runs GLAM's PPO loss on the LLM (clipped policy
    over the candidate distribution on the `ppo` rows, each times its importance weight, clipped
    value on every row, entropy bonus on the rows that train the policy) plus the critique's
    imitation term, -w * log pi_T(a), on rows with an imitation weight w > 0; gradient
    accumulation; grad-norm clipping. rows: actions, logprobs, values, advantages, returns, ppo
    (bool), weights (PPO's importance weights), imitation (weights), tensors over all contexts;
    all contexts share one candidate list (the instructions). On N servers each updates
    its share `_current_batch_ids` and DDP averages gradients.
    `caller.update([""], save=path)` / `load=path` write / read the trainable weights (all of the
    LLM and the value head, or a LoRA adapter and the head) with the optimizer's state."""

    def __init__(self, settings: TeacherPPOSettings):
        super().__init__()
        self.settings = settings

    def set_llm_module(self, llm_module):
        """Receives the LLM (wrapped in DDP under Lamorel) and builds the optimizer over what trains."""
        super().set_llm_module(llm_module)
        self.optimizer = torch.optim.Adam(trainable_parameters(llm_module), lr=self.settings.lr)

    def perform_update(self, contexts, candidates=None, _current_batch_ids=None, save=None, load=None, **rows):
        """A checkpoint save or load, or the PPO epochs on this server's share (mean losses).
        (Lamorel sends a server that gets no context of a call no candidates either.)"""
        module = getattr(self._llm_module, "module", self._llm_module)  # DDP under Lamorel
        if save:
            _save_atomically({"model": trainable_state(module), "optimizer": self.optimizer.state_dict()}, save)
            return {}
        if load:
            state = torch.load(load, map_location="cpu", weights_only=True)
            load_trainable_state(module, state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            return {}
        return self._ppo(contexts, candidates, _current_batch_ids, rows) if contexts else {}

    def _ppo(self, contexts, candidates, batch_ids, rows):
        s = self.settings
        mine = torch.as_tensor(batch_ids["contexts"])
        data = {k: torch.as_tensor(rows[k])[mine]
                for k in ("actions", "logprobs", "values", "advantages", "returns", "ppo", "weights", "imitation")}
        # every server splits its share into as many minibatches as the whole batch makes
        minibatches = max(1, math.ceil(len(rows["actions"]) / s.minibatch_size))
        # BabyAI prompts repeat: each distinct prompt is tokenized once per update, not once per epoch
        prompts, prompt_of_row = np.unique(contexts, return_inverse=True)
        tokenizer = getattr(self._llm_module, "module", self._llm_module)._LLM_tokenizer
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False, return_token_type_ids=False)["input_ids"]
        # the losses are summed on their device (in float64, as Python floats summed them) and read once, at the end
        sums, steps = dict.fromkeys(LOSS_NAMES, 0.0), 0
        for _ in range(s.epochs):
            for minibatch in np.array_split(np.arange(len(contexts)), minibatches):
                pieces = np.array_split(minibatch, max(1, math.ceil(len(minibatch) / s.gradient_batch_size)))
                self.optimizer.zero_grad()
                for number, piece in enumerate(pieces):
                    # Under DDP (N servers) only a minibatch's last piece all-reduces gradients: the
                    # servers' shares may split into different numbers of pieces.
                    sync = number == len(pieces) - 1 or not hasattr(self._llm_module, "no_sync")
                    with contextlib.nullcontext() if sync else self._llm_module.no_sync():
                        parts = self._losses(prompt_ids, prompt_of_row, candidates[piece[0]], piece, data)
                        loss = (parts[0] - s.entropy_coef * parts[2] + s.value_loss_coef * parts[1]
                                + s.imitation_coef * parts[3])
                        if not torch.isfinite(loss):  # report it to the client instead of stepping on it
                            return {name: value.item() for name, value in zip(LOSS_NAMES, parts)}
                        (loss * len(piece) / len(minibatch)).backward()
                    for name, value in zip(LOSS_NAMES, parts):
                        sums[name] = sums[name] + value.detach().double()
                    steps += 1
                torch.nn.utils.clip_grad_norm_(self._llm_module.parameters(), s.max_grad_norm)
                self.optimizer.step()
        return {name: float(total) / steps for name, total in sums.items()}

    def _losses(self, prompt_ids, prompt_of_row, instructions, piece, data):
        """(policy loss, value loss, entropy, imitation loss, approx KL, clip fraction) on the rows
        `piece`, row i's prompt being the token ids `prompt_ids[prompt_of_row[i]]`. One forward per
        distinct prompt, gathered back per row."""
        distinct, rows_of = np.unique(prompt_of_row[piece], return_inverse=True)
        outputs = self._llm_module(["score", "value"], contexts=[prompt_ids[i] for i in distinct],
                                   candidates=[instructions] * len(distinct), require_grad=True,
                                   pad_contexts=True)  # causal: one context end per minibatch
        dist = torch.distributions.Categorical(logits=torch.stack([o["score"] for o in outputs])[rows_of])
        values = torch.stack([o["value"][0, 0] for o in outputs])[rows_of]
        d = {k: v[piece] for k, v in data.items()}
        logprobs = dist.log_prob(d["actions"])
        ppo = d["ppo"].float()
        # the entropy bonus regularises the policy where it is trained: on other rows it alone
        # would pull a teacher that no longer acts back towards uniform
        trained = (d["ppo"] | (d["imitation"] > 0)).float()
        return (policy_loss(logprobs, d["logprobs"], d["advantages"], self.settings.clip_eps, mask=ppo,
                            weights=d["weights"]),
                value_loss(values, d["values"], d["returns"], self.settings.clip_eps),
                masked_mean(dist.entropy(), trained),
                -(d["imitation"] * logprobs).mean(),
                *approx_kl_and_clipfrac(logprobs, d["logprobs"], self.settings.clip_eps, mask=ppo))


def _save_atomically(state, path):
    """Every server may write the same checkpoint; a per-process temp file and a rename keep the
    file whole whoever writes last."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
