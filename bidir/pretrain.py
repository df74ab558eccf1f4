"""Behavioural cloning of a teacher LLM on demonstrations of minigrid's BabyAI bot
(`bidir-teacher pretrain`): GLAM's BC-from-bot baseline, and the prior of the offline teacher.

The bot's action at each step becomes the target instruction for the teacher's prompt at that
step; the teacher is trained with cross-entropy over its candidate log-probabilities, as an
updater, so the same code trains any model under LocalCaller or Lamorel.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from minigrid.utils.baby_ai_bot import BabyAIBot
from omegaconf import OmegaConf
from tqdm import tqdm

from bidir.envs import INSTRUCTIONS, instruction_actions, make_text_env
from bidir.llm import BaseUpdater
from bidir.lora import LORA_DEFAULTS, trainable_parameters
from bidir.models import model_type_of, resolve_model_path
from bidir.prompts import PromptHistory
from bidir.teacher import start_llm

log = logging.getLogger("bidir")

PRETRAIN_LEVELS = ("BabyAI-GoToLocal-v0", "BabyAI-GoToObj-v0", "BabyAI-PickupLoc-v0")
"""Default demonstration levels: navigation and pick-up skills, none of them the target level."""


def bot_demonstrations(levels, episodes_per_level: int, seed: int, prompt_history: int = 1,
                       instructions=INSTRUCTIONS) -> tuple[list[str], list[int]]:
    """(prompt, instruction index) pairs from the BabyAI bot solving `episodes_per_level`
    episodes of each level. Steps whose bot action is not an instruction are dropped."""
    prompts, targets = [], []
    action_to_index = {a: i for i, a in enumerate(instruction_actions(instructions))}
    for level in levels:
        env = make_text_env(level)
        for episode in range(episodes_per_level):
            _, info = env.reset(seed=seed * 100_000 + episode)
            history = PromptHistory(1, prompt_history)
            history.start(0, info)
            bot = BabyAIBot(env.unwrapped)
            for _ in range(env.unwrapped.max_steps):
                action = int(bot.replan())
                if action not in action_to_index:
                    break
                index = action_to_index[action]
                prompts.append(history.prompt(0))
                targets.append(index)
                _, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
                history.advance(0, instructions[index], info)
        env.close()
    return prompts, targets


class BehaviourCloningUpdater(BaseUpdater):
    """Cross-entropy of the bot's instruction under pi_T (softmax over candidate log-probs).

    Keyword arguments: targets (tensor over all contexts), lr, batch_size; `save_pretrained_to`
    writes the LLM as a Hugging Face model directory instead of training (a LoRA teacher writes
    its adapter only: peft's adapter_config.json and weights, plus the tokenizer)."""

    def perform_update(self, contexts, candidates, _current_batch_ids, **kwargs):
        """One pass over this server's share of the data; returns the mean loss and accuracy."""
        module = getattr(self._llm_module, "module", self._llm_module)
        if kwargs.get("save_pretrained_to"):
            module._LLM_model.save_pretrained(kwargs["save_pretrained_to"])
            module._LLM_tokenizer.save_pretrained(kwargs["save_pretrained_to"])
            return {}
        if not hasattr(self, "optimizer"):
            self.optimizer = torch.optim.Adam(trainable_parameters(self._llm_module), lr=kwargs["lr"])
        targets = torch.as_tensor(kwargs["targets"])[torch.as_tensor(_current_batch_ids["contexts"])]
        losses, correct = [], 0
        for start in range(0, len(contexts), kwargs["batch_size"]):
            stop = start + kwargs["batch_size"]
            outputs = self._llm_module(["score"], contexts=contexts[start:stop], candidates=candidates[start:stop],
                                       require_grad=True, pad_contexts=True)
            scores = torch.stack([o["score"] for o in outputs])
            loss = torch.nn.functional.cross_entropy(scores, targets[start:stop])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            correct += int((scores.argmax(1) == targets[start:stop]).sum())
        return {"loss": float(np.mean(losses)), "accuracy": correct / max(len(contexts), 1)}


def pretrain(model_path: str, output: Path, levels=PRETRAIN_LEVELS, episodes_per_level: int = 100,
             epochs: int = 20, lr: float = 1e-3, batch_size: int = 64, seed: int = 0, prompt_history: int = 1,
             model_type: str | None = None, device: str = "cpu", lora: dict | None = None) -> Path:
    """Clones the bot into the teacher at `model_path` and writes the result to `output`: a full model,
    or with `lora` (keys of bidir.lora.LORA_DEFAULTS, enabled implied) a LoRA adapter for that model.
    `model_type` None: read from the model's config."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    prompts, targets = bot_demonstrations(levels, episodes_per_level, seed, prompt_history)
    log.info("%d demonstration steps from %s", len(prompts), ", ".join(levels))
    model_path = resolve_model_path(model_path)
    model_type = model_type or model_type_of(model_path)
    lora = {**LORA_DEFAULTS, **(lora or {}), "enabled": True} if lora is not None else {"enabled": False}
    config = OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": model_type, "model_path": model_path, "lora": lora,
        "pretrained": True, "minibatch_size": 1024, "pre_encode_inputs": False, "constructor_kwargs": None,
        "load_in_4bit": False, "synchronize_gpus_after_scoring": False, "empty_cuda_cache_after_scoring": False}},
        "distributed_setup_args": {"llm_processes": {"main_llm": {"n_processes": 1, "devices_per_process": [device]}}}})
    caller = start_llm(config, seed, BehaviourCloningUpdater())
    candidates = [list(INSTRUCTIONS)] * len(prompts)
    bar = tqdm(range(epochs), desc="pretrain", unit="epoch")
    for _ in bar:
        order = rng.permutation(len(prompts))
        result = caller.update([prompts[i] for i in order], candidates,
                               targets=torch.as_tensor(targets)[order], lr=lr, batch_size=batch_size)[0]
        bar.set_postfix(loss=f"{result['loss']:.3f}", accuracy=f"{result['accuracy']:.3f}")
    output.mkdir(parents=True, exist_ok=True)
    caller.update([""], [[""]], save_pretrained_to=str(output))
    caller.close()
    return output
