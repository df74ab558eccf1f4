"""Shared-prefix scoring of Llama-shaped causal LMs (Llama, Qwen2, SmolLM): the numbers of the
full-sequence path, to float rounding, for a fraction of its work.

Lamorel's hf_llm handler (and LocalLLM, which mirrors it) runs a causal model on one full sequence
per (context, candidate) pair, context[:-1] left-padded then context[-1] + candidate right-padded,
and the LM head at every position. A teacher reads one prompt and scores six short instructions:
nearly all of that work repeats the prompt, and the LM head (SmolLM2's: 49,152 x 576) is wasted
everywhere but at the instructions' tokens. `SharedPrefixScoring`, installed on the model's forward
by the teacher's initializer on both backends (`install_shared_prefix`), leaves the work to the
module functions, which know where the contexts end (`SharedPrefixOutputs`):
- each distinct context[:-1] of a minibatch runs once; its candidates' rows (context[-1] +
  candidate) then run on its keys and values;
- the LM head runs only where it predicts a candidate token;
- when the embeddings and the lowest layers train nothing (LoRA on the top layers only,
  `lora.layers`), their outputs for a prompt and its candidates never change: they are computed
  once per prompt (alone, so the same whatever else is in the batch) and kept in a bounded cache
  (`frozen_cache_mb`), and only the top layers run, forward and backward.
Other readers of the outputs (`forward_outputs["logits"]`, e.g. the built-in `__score`) get the
model's usual forward.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping

import torch


def supports_shared_prefix(hf_model) -> bool:
    """True for causal LMs built as Llama is (embeddings, decoder layers, final norm, rotary)."""
    decoder = getattr(hf_model, "model", None)
    return all(hasattr(decoder, name) for name in ("embed_tokens", "layers", "norm", "rotary_emb"))


def install_shared_prefix(hf_model, cache_mb: float) -> SharedPrefixScoring:
    """Installs shared-prefix scoring as `hf_model.forward` (with a cache of `cache_mb` MiB for the
    frozen layers' outputs); returns it."""
    scoring = SharedPrefixScoring(hf_model, cache_mb)
    hf_model.forward = scoring.forward
    return scoring


class SharedPrefixScoring:
    """The forward `install_shared_prefix` puts in place of `hf_model.forward`: scoring calls (ids and
    attention mask only) are left to the module functions; any other call (generate, a key/value
    cache) goes to the forward it replaced."""

    def __init__(self, hf_model, cache_mb: float):
        self.hf_model = hf_model
        self.decoder = hf_model.model
        self.plain_forward = hf_model.forward
        self.cache = FrozenOutputs(cache_mb)
        # transformers 5 renamed the layers' `past_key_values` argument to `cache`
        self.cache_arg = "cache" if "cache" in inspect.signature(self.decoder.layers[0].forward).parameters \
            else "past_key_values"

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, **kwargs):
        """The installed forward: `SharedPrefixOutputs` for a scoring call, else the model's own."""
        if input_ids is None or attention_mask is None or any(v is not None for v in kwargs.values()):
            return self.plain_forward(input_ids=input_ids, attention_mask=attention_mask,
                                      output_hidden_states=output_hidden_states, **kwargs)
        return SharedPrefixOutputs(self, input_ids, attention_mask, lambda: self.plain_forward(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states))

    def frozen_layers(self) -> int:
        """How many of the lowest layers, with the embeddings, train nothing (0 without the cache)."""
        if self.cache.limit_bytes <= 0 or any(p.requires_grad for p in self.decoder.embed_tokens.parameters()):
            return 0
        count = 0
        for layer in self.decoder.layers:
            if any(p.requires_grad for p in layer.parameters()):
                break
            count += 1
        return count

    def answer_states(self, input_ids, attention_mask, split: int) -> torch.Tensor:
        """Final hidden states (after the last norm) of every row's columns `split`.. (context[-1] +
        candidate), each distinct prefix (columns ..split, context[:-1]) run once."""
        prefix_ids, prefix_mask = input_ids[:, :split], attention_mask[:, :split]
        keys = prefix_ids.masked_fill(prefix_mask == 0, -1)
        _, inverse = torch.unique(keys, dim=0, return_inverse=True)
        rows = torch.arange(len(inverse), device=inverse.device)
        first = torch.full((int(inverse.max()) + 1,), len(inverse), device=inverse.device)
        first = first.scatter_reduce(0, inverse, rows, "amin")  # a row of each distinct prefix
        frozen = self.frozen_layers()
        if frozen:
            prefix, answers = self.cache.lookup(self, prefix_ids[first], prefix_mask[first], input_ids[:, split:],
                                                attention_mask[:, split:], inverse, frozen)
        else:
            embed = self.decoder.embed_tokens
            prefix, answers = embed(prefix_ids[first]), embed(input_ids[:, split:])
        _, answers = self.run_layers(frozen, len(self.decoder.layers), prefix, prefix_mask[first], answers,
                                     attention_mask, inverse)
        return self.decoder.norm(answers)

    def run_layers(self, start: int, stop: int, prefix, prefix_mask, answers, mask, inverse):
        """Layers start..stop-1 on the distinct prefixes (U, P, H), then on every row's answer part
        (B, A, H) with the keys and values of its prefix (`inverse`: row -> prefix); `mask` is the
        rows' whole attention mask (B, P + A). Returns both outputs."""
        from transformers import DynamicCache

        if start == stop:
            return prefix, answers
        config = self.decoder.config
        shared = DynamicCache(config=config)
        prefix = self._layers(start, stop, prefix, prefix_mask, shared)
        expanded = DynamicCache(config=config)
        for index in range(start, stop):
            layer = shared.layers[index]
            expanded.update(layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse), index)
        return prefix, self._layers(start, stop, answers, mask, expanded)

    def _layers(self, start, stop, hidden, mask, cache):
        from transformers.masking_utils import create_causal_mask

        # positions over attended tokens, as `count_positions_over_attended_tokens` numbers them
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -hidden.shape[1]:]
        causal_mask = create_causal_mask(config=self.decoder.config, inputs_embeds=hidden, attention_mask=mask,
                                         position_ids=positions, layer_idx=start, **{self.cache_arg: cache})
        rotary = self.decoder.rotary_emb(hidden, position_ids=positions)
        for layer in self.decoder.layers[start:stop]:
            hidden = layer(hidden, attention_mask=causal_mask, position_ids=positions, position_embeddings=rotary,
                           use_cache=True, **{self.cache_arg: cache})
        return hidden


class SharedPrefixOutputs(Mapping):
    """What the installed forward returns: the minibatch, scored on demand by the module functions
    (`token_logprobs`, `answer_start_states`), once per minibatch whoever asks first. As a mapping
    it is the model's usual output, computed on first access."""

    def __init__(self, scoring: SharedPrefixScoring, input_ids, attention_mask, plain_forward):
        self.scoring, self.input_ids, self.attention_mask = scoring, input_ids, attention_mask
        self.plain_forward = plain_forward
        self._plain, self._states = None, {}

    def _outputs(self):
        if self._plain is None:
            self._plain = self.plain_forward()
        return self._plain

    def __getitem__(self, key):
        return self._outputs()[key]

    def __iter__(self):
        return iter(self._outputs())

    def __len__(self):
        return len(self._outputs())

    def _answer_states(self, split: int):
        if split not in self._states:
            self._states[split] = self.scoring.answer_states(self.input_ids, self.attention_mask, split)
        return self._states[split]

    def answer_start_states(self, split: int) -> torch.Tensor:
        """(B, H): the last hidden state at column `split` (context[-1]), where the answer starts."""
        return self._answer_states(split)[:, 0]

    def token_logprobs(self, split: int, pad_token: int) -> torch.Tensor:
        """(B, A - 1): log-probability of each candidate token (columns split+1..), 0 where the token
        is `pad_token`; the LM head runs at those tokens only."""
        states = self._answer_states(split)[:, :-1]
        tokens = self.input_ids[:, split + 1:]
        real = tokens != pad_token
        logits = self.scoring.hf_model.get_output_embeddings()(states[real]).float()
        picked = torch.log_softmax(logits, dim=-1).gather(1, tokens[real][:, None]).squeeze(1)
        return torch.zeros(tokens.shape, dtype=picked.dtype, device=picked.device).masked_scatter(real, picked)


class FrozenOutputs:
    """The frozen lower layers' outputs per prompt: {attended context[:-1] tokens: {"prefix": (P, H),
    attended answer tokens: (A, H)}}, least recently used first out beyond `limit_bytes`."""

    def __init__(self, limit_mb: float):
        self.limit_bytes = int(limit_mb * 2**20)
        self.entries: OrderedDict[tuple, dict] = OrderedDict()
        self.bytes = 0

    def clear(self):
        """Forgets every prompt."""
        self.entries.clear()
        self.bytes = 0

    def lookup(self, scoring, prefix_ids, prefix_mask, answer_ids, answer_mask, inverse, frozen):
        """Inputs of layer `frozen` for the distinct prefixes (U, P, H, left-padded) and the rows'
        answer parts (B, A, H, right-padded), computing what the cache lacks."""
        width = scoring.decoder.config.hidden_size
        prefix = torch.zeros(*prefix_ids.shape, width, dtype=scoring.decoder.embed_tokens.weight.dtype,
                             device=prefix_ids.device)
        answers = prefix.new_zeros(*answer_ids.shape, width)
        attended = lambda ids, mask: tuple(ids[mask.bool()].tolist())  # noqa: E731
        row_answers = [attended(ids, mask) for ids, mask in zip(answer_ids, answer_mask)]
        for u in range(len(prefix_ids)):
            context = attended(prefix_ids[u], prefix_mask[u])
            rows = (inverse == u).nonzero()[:, 0].tolist()
            wanted = {row_answers[r] for r in rows}
            entry = self.entries.get(context)
            if entry is None or not wanted <= entry.keys():
                entry = self._compute(scoring, context, wanted | (set(entry or ()) - {"prefix"}), frozen)
            self.entries.move_to_end(context)
            if context:
                prefix[u, -len(context):] = entry["prefix"]
            for r in rows:
                answers[r, :len(row_answers[r])] = entry[row_answers[r]]
        return prefix, answers

    @torch.no_grad()
    def _compute(self, scoring, context, answer_tokens, frozen):
        """The lower layers on one prompt alone (no padding) and its answers, stored."""
        device = scoring.decoder.embed_tokens.weight.device
        answer_tokens = sorted(answer_tokens)
        width = max(len(a) for a in answer_tokens)
        ids = torch.tensor([list(a) + [0] * (width - len(a)) for a in answer_tokens], dtype=torch.long, device=device)
        mask = torch.tensor([[1] * len(context) + [1] * len(a) + [0] * (width - len(a)) for a in answer_tokens],
                            device=device)
        embed = scoring.decoder.embed_tokens
        prompt = embed(torch.tensor([context], dtype=torch.long, device=device))
        prefix, answers = scoring.run_layers(0, frozen, prompt, mask[:1, :len(context)], embed(ids), mask,
                                             torch.zeros(len(answer_tokens), dtype=torch.long, device=device))
        entry = {"prefix": prefix[0]} | {a: answers[i, :len(a)].clone() for i, a in enumerate(answer_tokens)}
        if context in self.entries:
            self.bytes -= _size(self.entries.pop(context))
        self.entries[context] = entry
        self.bytes += _size(entry)
        while self.bytes > self.limit_bytes and len(self.entries) > 1:
            self.bytes -= _size(self.entries.popitem(last=False)[1])
        return entry


def _size(entry: dict) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())
