"""The causal teacher's fast path, each optimization's own effect, A/B inside one process.

    python benchmarks/bench_scoring.py [--model smollm2-135m-instruct] [--prompts 32] [--gradient-batch 16]
        [--repeats 3] [--layers 2] [--device cpu|cuda] [--autocast] [--json FILE]

Variants of one teacher (LoRA r=8, the teacher's module functions, in-process), timed on the same
BabyAI-Text prompts (random play in BabyAI-GoToRedBallNoDists-v0, 6 instructions), interleaved
(each repetition runs every variant once, in turn; the table gives the median; on CPU the seconds
are the process's CPU time, which a loaded machine does not inflate):
- `full-sequence`: today's path, one full sequence per (prompt, instruction) (`shared_prefix=false`);
- `shared-prefix`: each prompt once, LM head at the instructions' tokens (same numbers);
- `top-K cold` / `top-K warm`: LoRA on the top K layers only, the frozen layers' cache empty / filled.
Two workloads: scoring `--prompts` prompts without gradients (the rollout's LLM calls), and one
forward + backward of `--gradient-batch` prompts (a teacher PPO step's piece). Apart, the LM head
alone: over every position of the full sequences against only at the instructions' tokens.
Peak RSS is the process's (every variant's model loaded at once).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from bidir.envs import make_text_env
from bidir.llm import LocalCaller
from bidir.models import resolve_model_path
from bidir.prompts import PromptHistory
from bidir.teacher_llm import TeacherInitializer, teacher_module_functions

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]


def babyai_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` distinct teacher prompts met by a random agent."""
    env, rng = make_text_env("BabyAI-GoToRedBallNoDists-v0", seed=seed), np.random.default_rng(seed)
    history, prompts = PromptHistory(1, 1), []
    _, info = env.reset(seed=seed)
    history.start(0, info)
    while len(prompts) < count:
        prompt = history.prompt(0)
        if prompt not in prompts:
            prompts.append(prompt)
        _, _, terminated, truncated, info = env.step(int(rng.integers(3)))
        if terminated or truncated:
            _, info = env.reset()
            history.start(0, info)
        else:
            history.advance(0, "", info)
    return prompts


def make_variant(path, shared_prefix, layers, device, minibatch_size=512):
    config = OmegaConf.create({"llm_configs": {"main_llm": {
        "handler": "hf_llm", "model_type": "causal", "model_path": path, "pretrained": True,
        "minibatch_size": minibatch_size, "pre_encode_inputs": False, "constructor_kwargs": None,
        "shared_prefix": shared_prefix, "frozen_cache_mb": 1024,
        "lora": {"enabled": True, "r": 8, "alpha": 16.0, "layers": layers}}},
        "distributed_setup_args": {"llm_processes": {"main_llm": {"devices_per_process": [device]}}}})
    return LocalCaller(config, custom_module_functions={"main_llm": teacher_module_functions(0)},
                       custom_model_initializer={"main_llm": TeacherInitializer(0)})._models["main_llm"]


def scorer_of(module):
    return module._LLM_model.get_base_model().forward.__self__


def timed(fn, device):
    """Seconds of `fn`: on CPU the process's CPU time (one thread: what a quiet core takes, whatever
    the machine's load), on GPU wall time."""
    if device == "cpu":
        started = time.process_time()
        fn()
        return time.process_time() - started
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def score(module, prompts):
    with torch.no_grad():
        module(["score", "value"], contexts=prompts, candidates=[INSTRUCTIONS] * len(prompts), pad_contexts=True)


def gradient_step(module, prompts):
    out = module(["score", "value"], contexts=prompts, candidates=[INSTRUCTIONS] * len(prompts),
                 require_grad=True, pad_contexts=True)
    loss = sum(o["score"].sum() + o["value"].sum() for o in out)
    loss.backward()
    module.zero_grad()


def lm_head_times(module, prompts, device):
    """(every position, instruction tokens only) seconds of the LM head forward + backward on the
    full sequences of `prompts` x INSTRUCTIONS."""
    hf = module._LLM_model.get_base_model()
    tokenizer = module._LLM_tokenizer
    rows = [tokenizer(p + " " + i, add_special_tokens=False)["input_ids"] for p in prompts for i in INSTRUCTIONS]
    width = max(len(r) for r in rows)
    states = torch.randn(len(rows), width, hf.config.hidden_size, device=device, requires_grad=True)
    head = hf.get_output_embeddings()
    candidate_tokens = sum(len(tokenizer(i, add_special_tokens=False)["input_ids"]) for i in INSTRUCTIONS)
    # as many positions as the instructions have tokens, gathered into one matrix as token_logprobs does
    picked = states[:, :max(1, round(candidate_tokens / len(INSTRUCTIONS)))].reshape(-1, states.shape[-1])

    def run(hidden):
        def step():
            head(hidden).float().log_softmax(-1)[..., 0].sum().backward()
        return step
    return timed(run(states), device), timed(run(picked), device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--gradient-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=2, help="K of the top-K LoRA variants")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    prompts = babyai_prompts(args.prompts)
    device = "cpu" if args.device == "cpu" else 0
    variants = {"full-sequence": make_variant(path, False, None, device),
                "shared-prefix": make_variant(path, True, None, device),
                f"top-{args.layers} cold": make_variant(path, True, args.layers, device)}
    variants[f"top-{args.layers} warm"] = variants[f"top-{args.layers} cold"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.autocast)
    times = {name: {"score": [], "gradient": []} for name in variants}
    head_times = []
    for _ in range(args.repeats):
        for name, module in variants.items():
            if name.endswith("cold"):
                scorer_of(module).cache.clear()
            if name.endswith("warm"):
                score(module, prompts)  # every prompt cached (untimed)
            with autocast:
                times[name]["score"].append(timed(lambda: score(module, prompts), args.device))
                if name.endswith("cold"):
                    scorer_of(module).cache.clear()
                times[name]["gradient"].append(
                    timed(lambda: gradient_step(module, prompts[:args.gradient_batch]), args.device))
        head_times.append(lm_head_times(variants["full-sequence"], prompts[:args.gradient_batch], device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = (torch.cuda.get_device_name(0) if args.device != "cpu" else
               f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} {machine}, torch "
          f"{torch.__version__}, {args.threads} thread(s), {args.model}, LoRA r=8, {args.prompts} prompts x "
          f"{len(INSTRUCTIONS)} instructions, gradient batch {args.gradient_batch}, median of {args.repeats}"
          f"{', bf16 autocast' if args.autocast else ''}; peak RSS {rss:.0f} MB\n")
    print("| variant | scoring s | forward+backward s | scoring speed-up | fwd+bwd speed-up |\n"
          "|---|---:|---:|---:|---:|")
    base = {k: statistics.median(v) for k, v in times["full-sequence"].items()}
    result = {"machine": machine, "args": vars(args), "peak_rss_mb": rss, "variants": {}}
    for name, t in times.items():
        m = {k: statistics.median(v) for k, v in t.items()}
        result["variants"][name] = t
        print(f"| {name} | {m['score']:.2f} | {m['gradient']:.2f} | {base['score'] / m['score']:.1f}x | "
              f"{base['gradient'] / m['gradient']:.1f}x |")
    every, picked = (statistics.median(x) for x in zip(*head_times))
    result["lm_head"] = head_times
    print(f"\nLM head fwd+bwd on {args.gradient_batch} prompts' full sequences: every position {every:.3f} s, "
          f"instruction tokens only {picked:.3f} s ({every / picked:.0f}x)")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
