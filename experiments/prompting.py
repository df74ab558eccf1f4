"""Zero-shot prompting of a real LLM teacher (the SmolLM2 study): the teacher-alone held-out return, before
any training, of each prompt format (bidir, glam, chat) with each candidate scoring (sum, mean),
and three references on the same episodes: uniform instructions, the offline teacher tiny-t5-bc
(its own prompt and scoring) and minigrid's BabyAI bot. Tuning seeds only: evaluation seeds
1001 and up (bidir-eval and the study use seed 0).

    python experiments/prompting.py --model /work/models/smollm2 [--formats bidir glam chat]
        [--chunks 2] [--chunk-episodes 10] [--out experiments/prompting] [--env-id LEVEL]
    python experiments/prompting.py --formats --references --env-id LEVEL --out DIR   # references only

Episodes run in chunks of `--chunk-episodes` environments, chunk c on evaluation seed
`--first-seed` + c, every choice on the same chunks. Each (choice, chunk) is written to
<out>/episodes/<choice>_seed<s>.json when it ends and skipped when a rerun finds it, so a stopped
run resumes, and processes given different `--formats` can share the work. The table
(<out>/table.md, table.json) is computed from the episode files, over the seeds every choice
completed, so that all rows are the same episodes; `--table` only recomputes it.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from minigrid.utils.baby_ai_bot import BabyAIBot
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from bidir.checks import positive_int, quiet_libraries
from bidir.compare import mean_ci
from bidir.envs import INSTRUCTIONS, TextVecEnv, instruction_actions, make_text_env
from bidir.evaluate import EVAL_SEED_BASE, play_episodes
from bidir.models import resolve_model_path
from bidir.prompts import PROMPT_FORMATS, build_prompt, prompt_builder
from bidir.teacher import Teacher, start_llm

ENV_ID = "BabyAI-GoToRedBallNoDists-v0"
SCORINGS = ("sum", "mean")
REFERENCES = ("uniform", "tiny-t5-bc", "bot")


def llm_args(model_path: str, model_type: str) -> dict:
    """lamorel_args for one in-process LLM; a causal context is encoded once for its candidates."""
    return {"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": model_type, "model_path": resolve_model_path(model_path),
        "pretrained": True, "minibatch_size": 512, "pre_encode_inputs": True, "candidate_scoring": "sum"}}}


class SharedScores:
    """Scores each prompt once, with candidate_scoring=sum, for both scorings: the mean is the sum
    over the candidate's token count, which is what InstructionLogProbs computes with
    candidate_scoring=mean (tests/test_prompts.py checks it)."""

    def __init__(self, caller, tokenizer, instructions):
        self.llm, self.memo = caller, {}
        self.tokens = torch.tensor([len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in instructions],
                                   dtype=torch.float32)

    def outputs(self, keys, contexts, candidates) -> list[dict]:
        """The LLM's outputs (summed scores) for `contexts`, each computed once."""
        missing = list(dict.fromkeys(c for c in contexts if c not in self.memo))
        if missing:
            outputs = self.llm.custom_module_fns(keys, contexts=missing, candidates=candidates[:len(missing)])
            self.memo.update(zip(missing, outputs))
        return [self.memo[c] for c in contexts]


class ScoringCaller:
    """The caller a `Teacher` asks: SharedScores' outputs under one scoring."""

    def __init__(self, shared: SharedScores, scoring: str):
        self.shared, self.divisor = shared, shared.tokens if scoring == "mean" else 1.0

    def custom_module_fns(self, module_function_keys, contexts, candidates):
        """Lamorel's call, answered from the shared scores."""
        return [{"score": out["score"] / self.divisor, "value": out["value"]}
                for out in self.shared.outputs(module_function_keys, contexts, candidates)]


class UniformTeacher:
    """The uniform policy over the instructions, as a teacher that `play_episodes` can consult."""

    build_prompt = staticmethod(build_prompt)

    def __init__(self, k: int):
        self.k = k

    def advise(self, prompts):
        """Uniform pi_T and zero V_T for every prompt."""
        return np.full((len(prompts), self.k), 1.0 / self.k), np.zeros(len(prompts), np.float32)


def bot_episodes(env_id: str, instructions, episodes: int, seed: int) -> list[dict]:
    """The BabyAI bot acting in the environments `play_episodes` would use for `seed`."""
    envs = TextVecEnv(env_id, episodes, EVAL_SEED_BASE + seed, instructions)
    envs.reset()
    bots = [BabyAIBot(env.unwrapped) for env in envs.envs]
    index = {action: i for i, action in enumerate(instruction_actions(instructions))}
    results = [None] * episodes
    while any(r is None for r in results):
        actions = [index[int(bot.replan())] if r is None else 0 for bot, r in zip(bots, results)]
        _, _, done, infos = envs.step(np.array(actions))
        for e in np.flatnonzero(done):
            results[e] = results[e] or infos[e]["episode"]
    envs.close()
    return results


def summary(episodes: list[dict]) -> dict:
    """n, mean return with its 95% CI, success rate with a Wilson 95% CI, mean length."""
    n, successes = len(episodes), sum(e["success"] for e in episodes)
    mean, half = mean_ci([e["return"] for e in episodes])  # the studies' CI (Student's t)
    p, z = successes / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "return_mean": mean, "return_ci95": [mean - half, mean + half],
            "success_rate": p, "success_ci95": [max(0.0, centre - spread), min(1.0, centre + spread)],
            "length_mean": float(np.mean([e["length"] for e in episodes]))}


def tables(out: Path) -> dict[str, str]:
    """The table recomputed from every episode file under `out`: file name -> text."""
    records = [json.loads(path.read_text()) for path in sorted((out / "episodes").glob("*.json"))]
    levels = sorted({record["env_id"] for record in records})
    if len(levels) > 1:
        raise ValueError(f"{out / 'episodes'} mixes episodes of {', '.join(levels)}: one level per --out")
    seeds: dict[str, set] = {}
    for record in records:
        seeds.setdefault(record["choice"], set()).add(record["seed"])
    common = set.intersection(*seeds.values()) if seeds else set()  # every row on the same episodes
    episodes: dict[str, list] = {}
    for record in records:
        if record["seed"] in common:
            episodes.setdefault(record["choice"], []).extend(record["episodes"])
    order = [f"{f}/{s}" for f in PROMPT_FORMATS for s in SCORINGS] + list(REFERENCES)
    rows = {choice: summary(episodes[choice]) for choice in order if choice in episodes}
    lines = ["| choice | n | return | 95% CI | success | 95% CI (Wilson) | length |", "|---|---|---|---|---|---|---|"]
    for choice, r in rows.items():
        lines.append(f"| {choice} | {r['n']} | {r['return_mean']:.3f} | [{r['return_ci95'][0]:.3f}, "
                     f"{r['return_ci95'][1]:.3f}] | {r['success_rate']:.3f} | [{r['success_ci95'][0]:.3f}, "
                     f"{r['success_ci95'][1]:.3f}] | {r['length_mean']:.1f} |")
    return {"table.md": "\n".join(lines) + "\n", "table.json": json.dumps(rows, indent=2)}


def write_table(out: Path) -> str:
    """Writes the table recomputed from the episode files under `out`; returns it as markdown."""
    for name, text in tables(out).items():
        (out / name).write_text(text)
    return (out / "table.md").read_text()


def run_chunk(out: Path, env_id: str, choice: str, seed: int, play) -> None:
    """Plays one chunk of `choice` on `env_id` unless its file exists; writes its episodes."""
    path = out / "episodes" / f"{choice.replace('/', '_')}_seed{seed}.json"
    if path.exists():
        return
    start = time.time()
    episodes = play()
    path.write_text(json.dumps({"choice": choice, "seed": seed, "env_id": env_id, "episodes": episodes,
                                "wall_s": round(time.time() - start, 1)}))
    r = summary(episodes)
    print(f"{choice:12s} seed {seed}: return {r['return_mean']:.3f} success {r['success_rate']:.2f} "
          f"({time.time() - start:.0f} s)", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the causal LLM's directory (SmolLM2-135M-Instruct)")
    parser.add_argument("--formats", nargs="*", default=list(PROMPT_FORMATS), choices=PROMPT_FORMATS)
    parser.add_argument("--references", action="store_true", help="also run uniform, tiny-t5-bc and the bot")
    parser.add_argument("--chunks", type=positive_int, default=2)
    parser.add_argument("--chunk-episodes", type=positive_int, default=10)
    parser.add_argument("--first-seed", type=int, default=1001, help="tuning seeds only: keep above 1000")
    parser.add_argument("--out", type=Path, default=Path("experiments/prompting"))
    parser.add_argument("--table", action="store_true", help="only recompute the table")
    parser.add_argument("--env-id", default=ENV_ID, help="the level, or a mix (default: %(default)s)")
    options = parser.parse_args()
    try:  # bad input: one line and exit 2, before any folder is made
        make_text_env(options.env_id).close()
    except ValueError as error:
        parser.error(f"--env-id: {error}")
    if not options.table and options.formats and not options.model:
        parser.error("--model is required to play the formats (or give --formats with none, or --table)")
    torch.set_num_threads(1)  # small models gain nothing from more; the machine is shared
    quiet_libraries()
    (options.out / "episodes").mkdir(parents=True, exist_ok=True)
    if not options.table:
        instructions = list(INSTRUCTIONS)
        teachers = {}
        if options.formats:
            tokenizer = AutoTokenizer.from_pretrained(options.model)
            shared = SharedScores(start_llm(OmegaConf.create(llm_args(options.model, "causal")), 0), tokenizer,
                                  instructions)
            for prompt_format in options.formats:
                build = prompt_builder(prompt_format, instructions, tokenizer)
                for scoring in SCORINGS:
                    caller = ScoringCaller(shared, scoring)
                    teachers[f"{prompt_format}/{scoring}"] = Teacher(caller, instructions, build)
        if options.references:
            teachers["uniform"] = UniformTeacher(len(instructions))
            teachers["tiny-t5-bc"] = Teacher(start_llm(OmegaConf.create(llm_args("tiny-t5-bc", "seq2seq")), 0),
                                             instructions)
        for chunk in range(options.chunks):  # chunk by chunk: every choice has as many episodes when stopped
            seed = options.first_seed + chunk
            for choice, teacher in teachers.items():
                run_chunk(options.out, options.env_id, choice, seed, lambda: play_episodes(
                    "teacher_alone", options.env_id, instructions, options.chunk_episodes, seed, teacher=teacher))
            if options.references:
                run_chunk(options.out, options.env_id, "bot", seed,
                          lambda: bot_episodes(options.env_id, instructions, options.chunk_episodes, seed))
    print(write_table(options.out))


if __name__ == "__main__":
    main()
