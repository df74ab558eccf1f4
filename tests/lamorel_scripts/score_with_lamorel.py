"""Scores fixed prompts with the LLM behind `bidir.llm.make_caller` and dumps them as JSON.

Run by tests/test_lamorel.py under `lamorel_launcher` (1 RL + 1 or 2 LLM processes); the test
recomputes the same calls with LocalCaller and compares. With `rl_script_args.gloo_threads_dir`
every process records, as it exits, the gloo threads it still runs.
"""
import atexit
import os
from pathlib import Path

import hydra
import torch

from bidir.llm import BaseModuleFunction, candidate_logits_and_tokens, make_caller
from script_output import write_result  # this folder: the script's directory

CONTEXTS = [
    "Goal of the agent: go to the red ball. Observation 0: You see a wall 2 steps forward, "
    "You see a red ball 1 step left and 3 steps forward. Action:",
    "Goal of the agent: pick up a key. Action:",
    "open the door on your left, then go to a box",
]
CANDIDATES = [["turn left", "turn right", "go forward", "pick up", "drop", "toggle"],
              ["drop", "toggle", "go forward"],
              ["go forward"]]


class LogProb(BaseModuleFunction):
    """Sum of candidate-token log-probabilities."""

    def initialize(self):
        pass

    def forward(self, forward_outputs, minibatch, tokenized_contexts, **kwargs):
        logits, tokens = candidate_logits_and_tokens(self.llm_config, forward_outputs, minibatch, tokenized_contexts)
        logp = logits.log_softmax(-1).gather(2, tokens[:, :, None]).squeeze(-1)
        return logp.masked_fill(tokens == self.llm_config.pad_token, 0.0).sum(-1)


def run_calls(caller, model_type):
    """The calls compared across backends; Lamorel v0.3's built-in score fails on causal models."""
    result = {"contexts": CONTEXTS, "candidates": CANDIDATES}
    if model_type == "seq2seq":
        result["score"] = [s.tolist() for s in caller.score(CONTEXTS, CANDIDATES)]
        both = caller.score(CONTEXTS, CANDIDATES, return_logprobs=True, additional_module_function_keys=["logprob"])
        result["score_with_logprob_flag"] = [o["__score"].tolist() for o in both]
        result["logprob_via_score"] = [o["logprob"].tolist() for o in both]
    out = caller.custom_module_fns(["logprob"], contexts=CONTEXTS, candidates=CANDIDATES)
    result["logprob"] = [o["logprob"].tolist() for o in out]
    result["logprob_minibatch_2"] = [o["logprob"].tolist() for o in caller.custom_module_fns(
        ["logprob"], contexts=CONTEXTS, candidates=CANDIDATES, minibatch_size=2)]
    return result


def record_gloo_threads(directory: str):
    """Writes how many gloo threads this process still runs to `directory`/rank<RANK>.txt."""
    names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
    (Path(directory) / f"rank{os.environ['RANK']}.txt").write_text(str(sum("gloo" in n for n in names)))


@hydra.main(version_base=None, config_path=None, config_name=None)
def main(config):
    torch.manual_seed(0)
    if config.rl_script_args.gloo_threads_dir:
        # Registered before make_caller's own exit handler, so it runs after it (atexit is LIFO).
        atexit.register(record_gloo_threads, config.rl_script_args.gloo_threads_dir)
    caller = make_caller(config.lamorel_args, custom_module_functions={"main_llm": {"logprob": LogProb()}})
    result = run_calls(caller, config.lamorel_args.llm_configs.main_llm.model_type)
    write_result(caller, result, config.rl_script_args.output)


if __name__ == "__main__":
    main()
