"""Why a prompt fails zero-shot (the SmolLM2 study): on the BabyAI bot's states of the tuning episodes, the
probability each prompt format and scoring gives the bot's action, how often its most likely
instruction is the bot's, and its mean distribution over the instructions. A second candidate
spelling, with a leading space (" turn left"), tests the token boundary: after `Action:` a BPE
model expects " turn", while the candidates are tokenized alone ("turn"; "toggle" as "t", "oggle").

    python experiments/prompting_agreement.py --model /work/models/smollm2 [--seeds 1001 1002]

Writes <out>/agreement.json (per state and per variant) and agreement.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from minigrid.utils.baby_ai_bot import BabyAIBot
from omegaconf import OmegaConf
from prompting import ENV_ID, llm_args  # experiments/ is the script's directory
from transformers import AutoTokenizer

from bidir.checks import quiet_libraries
from bidir.envs import INSTRUCTIONS, instruction_actions, make_text_env
from bidir.evaluate import EVAL_SEED_BASE
from bidir.prompts import PROMPT_FORMATS, prompt_builder
from bidir.teacher import start_llm

VARIANTS = [(f, spaced) for f in PROMPT_FORMATS for spaced in (False, True) if not (f == "chat" and spaced)]
"""(format, leading space on the candidates); a chat answer starts a line, where no space is expected."""


def bot_states(seeds, episodes: int) -> list[dict]:
    """(mission, descriptions, bot's instruction index) at every step of the bot's episodes in the
    environments `play_episodes` uses for each seed (their first episodes)."""
    index = {action: i for i, action in enumerate(instruction_actions(INSTRUCTIONS))}
    states = []
    for seed in seeds:
        for i in range(episodes):
            env = make_text_env(ENV_ID, seed=(EVAL_SEED_BASE + seed) * 10_000 + i)
            _, info = env.reset()
            bot = BabyAIBot(env.unwrapped)
            for _ in range(env.unwrapped.max_steps):
                action = index[int(bot.replan())]
                states.append({"mission": info["mission"], "descriptions": info["descriptions"], "bot": action})
                _, _, terminated, truncated, info = env.step(instruction_actions(INSTRUCTIONS)[action])
                if terminated or truncated:
                    break
            env.close()
    return states


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1001, 1002], help="tuning seeds only")
    parser.add_argument("--episodes", type=int, default=10, help="per seed")
    parser.add_argument("--out", type=Path, default=Path("experiments/prompting"))
    options = parser.parse_args()
    torch.set_num_threads(1)
    quiet_libraries()
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    caller = start_llm(OmegaConf.create(llm_args(options.model, "causal")), 0)
    states = bot_states(options.seeds, options.episodes)
    rows = {}
    for prompt_format, spaced in VARIANTS:
        build = prompt_builder(prompt_format, INSTRUCTIONS, tokenizer)
        candidates = [(" " + c) if spaced else c for c in INSTRUCTIONS]
        lengths = torch.tensor([len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in candidates])
        prompts = [build(s["mission"], [s["descriptions"]], []) for s in states]
        distinct = list(dict.fromkeys(prompts))
        outputs = caller.custom_module_fns(["score"], contexts=distinct, candidates=[candidates] * len(distinct))
        summed = dict(zip(distinct, (o["score"] for o in outputs)))
        name = prompt_format + (" (space)" if spaced else "")
        for scoring in ("sum", "mean"):
            probs = np.stack([torch.softmax(summed[p] / (lengths if scoring == "mean" else 1), -1).numpy()
                              for p in prompts])
            bot = np.array([s["bot"] for s in states])
            row = {"states": len(states), "p_bot": float(probs[np.arange(len(bot)), bot].mean()),
                   "argmax_bot": float((probs.argmax(1) == bot).mean()), "mean_pi": probs.mean(0).round(3).tolist(),
                   "p_bot_per_state": probs[np.arange(len(bot)), bot].round(4).tolist()}
            rows[f"{name}/{scoring}"] = row
            print(f"{name}/{scoring}: P(bot action) {row['p_bot']:.3f}", flush=True)
    data = {"seeds": options.seeds, "episodes": options.episodes, "states": states, "variants": rows}
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "agreement.json").write_text(json.dumps(data, indent=1))
    (options.out / "agreement.md").write_text(agreement_table(data))
    print(agreement_table(data))


def agreement_table(data: dict) -> str:
    """agreement.md from agreement.json: P(bot action) is the mean of the per-state probabilities,
    the bot's row counts the states' bot actions; argmax = bot and mean pi_T are as stored."""
    lines = ["| variant | scoring | states | P(bot action) | argmax = bot | mean pi_T over "
             + ", ".join(INSTRUCTIONS) + " |", "|---|---|---|---|---|---|"]
    for key, row in data["variants"].items():
        name, scoring = key.rsplit("/", 1)
        lines.append(f"| {name} | {scoring} | {len(row['p_bot_per_state'])} | {np.mean(row['p_bot_per_state']):.3f} | "
                     f"{row['argmax_bot']:.3f} | {', '.join(f'{p:.2f}' for p in row['mean_pi'])} |")
    states = data["states"]
    bot_share = np.bincount([s["bot"] for s in states], minlength=len(INSTRUCTIONS)) / len(states)
    lines.append(f"| bot's own actions | | {len(states)} | | | {', '.join(f'{p:.2f}' for p in bot_share)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
