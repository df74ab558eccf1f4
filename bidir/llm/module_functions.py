"""Module functions every LLM serves, and the layout of Lamorel's scoring minibatches that module
functions read (Lamorel's `server/llms/module_functions`)."""
from __future__ import annotations

import torch

from bidir.llm.base import BaseModuleFunction
from bidir.llm.shared_prefix import SharedPrefixOutputs


class ProbabilityScore(BaseModuleFunction):
    """The built-in `__score`: product of candidate token probabilities (pads count as 1)."""

    def initialize(self):
        pass

    def forward(self, forward_outputs, minibatch, tokenized_contexts, current_minibatch_ids=None, **kwargs):
        logits, tokens = candidate_logits_and_tokens(self.llm_config, forward_outputs, minibatch, tokenized_contexts)
        probs = logits.softmax(-1).gather(2, tokens[:, :, None]).squeeze(-1)
        return probs.masked_fill(tokens == self.llm_config.pad_token, 1.0).prod(-1).cpu()


def candidate_logits_and_tokens(llm_config, forward_outputs, minibatch, tokenized_contexts):
    """Logits that predict each candidate token, and those tokens (pads included), Lamorel's layout.

    seq2seq: decoder input is [pad] + candidate. causal: the minibatch is context[:-1] + (context[-1]
    + candidate), contexts padded to one length; with `pre_encode_inputs` only the second part.
    """
    tokens = candidate_tokens(llm_config, minibatch, tokenized_contexts)
    if llm_config.model_type == "seq2seq":
        return forward_outputs["logits"][:, :-1, :], tokens
    return forward_outputs["logits"][:, causal_context_end(llm_config, tokenized_contexts):-1, :], tokens


def candidate_tokens(llm_config, minibatch, tokenized_contexts) -> torch.Tensor:
    """(B, L): each pair's candidate tokens, pads included, read from Lamorel's minibatch layout."""
    if llm_config.model_type == "seq2seq":
        return minibatch["decoder_input_ids"][:, 1:]
    return minibatch["input_ids"][:, causal_context_end(llm_config, tokenized_contexts) + 1:]


def candidate_token_logprobs(llm_config, forward_outputs, minibatch, tokenized_contexts) -> torch.Tensor:
    """(B, L): log-probability of each candidate token, 0 at pads (tokens equal to the pad token).
    From the shared-prefix scoring when the teacher's initializer installed it, else from the logits."""
    if isinstance(forward_outputs, SharedPrefixOutputs):
        return forward_outputs.token_logprobs(causal_context_end(llm_config, tokenized_contexts), llm_config.pad_token)
    logits, tokens = candidate_logits_and_tokens(llm_config, forward_outputs, minibatch, tokenized_contexts)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(2, tokens.unsqueeze(-1)).squeeze(-1)
    return logprobs.masked_fill(tokens == llm_config.pad_token, 0.0)


def answer_start_state(llm_config, forward_outputs, tokenized_contexts) -> torch.Tensor:
    """(B, H): the LLM's last hidden state where the answer starts (causal: at the last context
    token; seq2seq: the decoder's first position)."""
    if isinstance(forward_outputs, SharedPrefixOutputs):
        return forward_outputs.answer_start_states(causal_context_end(llm_config, tokenized_contexts))
    if llm_config.model_type == "causal":
        return forward_outputs["hidden_states"][-1][:, causal_context_end(llm_config, tokenized_contexts), :]
    return forward_outputs["decoder_hidden_states"][-1][:, 0, :]


def causal_context_end(llm_config, tokenized_contexts) -> int:
    """Position of the last context token in a causal minibatch (where the answer starts).

    Contexts must share one length: an updater calling the LLM module directly must pass
    `pad_contexts=True` (the handler's default is False, the Caller's True), else the answer of
    every context but the first would be read at the wrong position."""
    if llm_config.get("pre_encode_inputs", False):
        return 0
    lengths = {len(c["input_ids"]) for c in tokenized_contexts}
    if len(lengths) > 1:
        raise ValueError(f"causal contexts of different lengths {sorted(lengths)} in one minibatch: call the LLM "
                         f"module with pad_contexts=True")
    return lengths.pop()

