"""Shared-prefix scoring of Llama-shaped causal LMs (Llama, Qwen2, SmolLM): the numbers of the
full-sequence path, to float rounding, for a fraction of its work.

Lamorel's hf_llm handler (and LocalLLM, which mirrors it) runs a causal model on one full sequence
per (context, candidate) pair, context[:-1] left-padded then context[-1] + candidate right-padded,
and the LM head at every position. A teacher reads one prompt and scores six short instructions:
nearly all of that work repeats the prompt, and the LM head (SmolLM2's: 49,152 x 576) is wasted
everywhere but at the instructions' tokens. `SharedPrefixScoring`, installed on the model's forward
by the teacher's initializer on both backends (`install_shared_prefix`), leaves the work to the
module functions, which know where the contexts end (`SharedPrefixOutputs`):
- each distinct context[:-1] of a minibatch runs once, followed by its answer tree (`AnswerTree`):
  each distinct answer position whose output is read, once. A node is context[-1] plus the first
  tokens of a candidate; it attends to the context and to the nodes it extends. The six
  instructions share context[-1] and some first tokens ("turn left", "turn right"), and a
  candidate's last token predicts nothing: 5 nodes per prompt where the pairs have 18 positions;
- the LM head runs once per node;
- the top layer computes only the keys and values of context[:-1], whose outputs nothing reads;
- when the embeddings and the lowest layers train nothing (LoRA on the top layers only,
  `lora.layers`), their outputs for a prompt and its nodes never change: they are computed once
  per prompt, in one pass (alone, so the same whatever else is in the batch), and kept in a
  bounded cache (`frozen_cache_mb`), and only the top layers run, forward and backward.
Other readers of the outputs (`forward_outputs["logits"]`, e.g. the built-in `__score`) get the
model's usual forward.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

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


@dataclass
class AnswerTree:
    """Where a minibatch's answers (columns split.., context[-1] + candidate) are computed. Per
    distinct context[:-1] u (a prompt), its nodes: tuples of answer tokens whose last token's
    output is read (the answer's start, or a position that predicts a candidate token), sorted and
    padded to `width` slots. The joined sequence of prompt u is [context[:-1] left-padded to
    `context_width`, its node slots]."""

    contexts: list[tuple]       # u -> attended context[:-1] tokens
    nodes: list[list[tuple]]    # u -> its nodes
    context_width: int          # P, the minibatch's context[:-1] columns
    width: int                  # N, node slots per prompt
    first: torch.Tensor         # (U,) a row of each prompt
    node_tokens: torch.Tensor   # (U, N) each node's last token (0 in padding slots)
    node_positions: torch.Tensor  # (U, N) its position, counted over attended tokens
    ancestry: torch.Tensor      # (U, N, N) slot n attends to slot m
    node_of: torch.Tensor       # (B, A) the slot (u * N + n) whose output is row b's answer column j (0: none)


def answer_tree(input_ids, attention_mask, split: int) -> AnswerTree:
    """The `AnswerTree` of a scoring minibatch whose contexts end at column `split`."""
    ids, mask = input_ids.tolist(), attention_mask.tolist()  # one copy to the host: the layout is Python's work
    attended = lambda row, keep: tuple(t for t, k in zip(row, keep) if k)  # noqa: E731
    prompts, first, answers = {}, [], []
    for b, (row, keep) in enumerate(zip(ids, mask)):
        context, answer = attended(row[:split], keep[:split]), attended(row[split:], keep[split:])
        if context not in prompts:
            prompts[context] = set()
            first.append(b)
        # the start (context[-1]) and every position followed by a candidate token
        prompts[context].update(answer[:j + 1] for j in range(max(1, len(answer) - 1)))
        answers.append((context, answer))
    contexts, nodes = list(prompts), [sorted(s) for s in prompts.values()]
    width = max(len(n) for n in nodes)
    slots = {(c, n): u * width + i for u, (c, ns) in enumerate(zip(contexts, nodes)) for i, n in enumerate(ns)}
    node_of = [[slots.get((c, a[:j + 1]), 0) for j in range(len(ids[0]) - split)] for c, a in answers]
    rows = [node_rows(ns, width, len(c)) for c, ns in zip(contexts, nodes)]
    device = input_ids.device
    tensor = lambda x, dtype=torch.long: torch.tensor(x, dtype=dtype, device=device)  # noqa: E731
    return AnswerTree(contexts, nodes, split, width, tensor(first), tensor([r[0] for r in rows]),
                      tensor([r[1] for r in rows]), tensor([r[2] for r in rows], torch.bool), tensor(node_of))


def node_rows(nodes: list[tuple], width: int, context_length: int):
    """One prompt's nodes in `width` slots: (last tokens, positions, ancestry rows). Node n sees
    node m when m's tokens begin n's (itself included); a padding slot sees itself only."""
    pad = width - len(nodes)
    tokens = [n[-1] for n in nodes] + [0] * pad
    positions = [context_length + len(n) - 1 for n in nodes] + [0] * pad
    sees = lambda n, m: n == m or (max(n, m) < len(nodes) and nodes[n][:len(nodes[m])] == nodes[m])  # noqa: E731
    return tokens, positions, [[sees(n, m) for m in range(width)] for n in range(width)]


def joined_attention(context_mask, ancestry, node_positions, dtype):
    """(additive mask (U, 1, P + N, P + N), positions (U, P + N)) of the joined sequences
    [context[:-1], nodes]: the context causal over its attended tokens, each node on the whole
    context and on the nodes of its `ancestry`. A padding position sees itself (no empty softmax
    row); positions are counted over attended tokens, as `count_positions_over_attended_tokens`."""
    seen = context_mask.bool()
    units, width = seen.shape
    causal = torch.ones(width, width, dtype=torch.bool, device=seen.device).tril()
    context = (causal & seen[:, None, :]) | torch.eye(width, dtype=torch.bool, device=seen.device)
    allowed = torch.cat([torch.cat([context, seen.new_zeros(units, width, ancestry.shape[1])], 2),
                         torch.cat([seen[:, None, :].expand(-1, ancestry.shape[1], -1), ancestry], 2)], 1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=seen.device).masked_fill(~allowed, torch.finfo(dtype).min)
    positions = torch.cat([(context_mask.long().cumsum(-1) - 1).clamp(min=0), node_positions], 1)
    return mask[:, None], positions


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

    def answer_states(self, input_ids, attention_mask, split: int) -> tuple[AnswerTree, torch.Tensor]:
        """The minibatch's `AnswerTree` and its nodes' final hidden states (after the last norm),
        (U * N, H), in the order of its slots."""
        tree = answer_tree(input_ids, attention_mask, split)
        frozen = self.frozen_layers()
        if frozen:
            hidden = self.cache.lookup(self, tree, frozen)
        else:
            hidden = self.decoder.embed_tokens(torch.cat([input_ids[tree.first, :split], tree.node_tokens], 1))
        mask, positions = joined_attention(attention_mask[tree.first, :split], tree.ancestry, tree.node_positions,
                                           hidden.dtype)
        nodes = self.run_layers(frozen, len(self.decoder.layers), hidden, mask, positions, split, nodes_only=True)
        return tree, self.decoder.norm(nodes).flatten(0, 1)

    def run_layers(self, start, stop, hidden, mask, positions, context_width, nodes_only=False):
        """Layers start..stop-1 on the joined sequences `hidden` (U, P + N, H), P = `context_width`,
        under `joined_attention`'s mask and positions, built once for all layers. Returns every
        output, or with `nodes_only` the nodes' (U, N, H), the top layer then computing only the
        context's keys and values."""
        rotary = self.decoder.rotary_emb(hidden, position_ids=positions)
        layers = self.decoder.layers[start:stop]
        top = layers[-1] if nodes_only and len(layers) else None
        for layer in layers[:-1] if top is not None else layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
        if top is None:
            return hidden[:, context_width:] if nodes_only else hidden
        return self._nodes_of_layer(top, hidden, mask, positions, rotary, context_width)

    def _nodes_of_layer(self, layer, hidden, mask, positions, rotary, width):
        """`layer`'s outputs at the nodes (columns `width`..) of the joined sequences: of the context
        it computes the keys and values only, as Llama's attention computes them."""
        from transformers import DynamicCache
        from transformers.models.llama.modeling_llama import rotate_half

        attention = layer.self_attn
        context = layer.input_layernorm(hidden[:, :width])
        shape = (*context.shape[:-1], -1, attention.head_dim)
        keys = attention.k_proj(context).view(shape).transpose(1, 2)
        values = attention.v_proj(context).view(shape).transpose(1, 2)
        cos, sin = (r[:, None, :width] for r in rotary)
        cache = DynamicCache(config=self.decoder.config)
        cache.update(keys * cos + rotate_half(keys) * sin, values, attention.layer_idx)
        return layer(hidden[:, width:], attention_mask=mask[:, :, width:], position_ids=positions[:, width:],
                     position_embeddings=tuple(r[:, width:] for r in rotary), use_cache=True,
                     **{self.cache_arg: cache})


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
        tree, states = self._answer_states(split)
        return states[tree.node_of[:, 0]]

    def token_logprobs(self, split: int, pad_token: int) -> torch.Tensor:
        """(B, A - 1): log-probability of each candidate token (columns split+1..), 0 where the token
        is `pad_token`; the LM head runs once per node of the answer tree."""
        tree, states = self._answer_states(split)
        tokens = self.input_ids[:, split + 1:]
        real = tokens != pad_token
        logits = self.scoring.hf_model.get_output_embeddings()(states).float()
        # the log-softmax per candidate token, not per node: its backward then sums the tokens' gradients
        # as the full-sequence path does (Adam amplifies float noise where a gradient is near zero)
        logprobs = torch.log_softmax(logits[tree.node_of[:, :-1][real]], dim=-1)
        picked = logprobs.gather(1, tokens[real][:, None]).squeeze(1)
        return torch.zeros(tokens.shape, dtype=picked.dtype, device=picked.device).masked_scatter(real, picked)


class FrozenOutputs:
    """The frozen lower layers' outputs per prompt: {attended context[:-1] tokens: {"prefix": (P, H),
    node (tuple of answer tokens): (H,)}}, least recently used first out beyond `limit_bytes`."""

    def __init__(self, limit_mb: float):
        self.limit_bytes = int(limit_mb * 2**20)
        self.entries: OrderedDict[tuple, dict] = OrderedDict()
        self.bytes = 0

    def clear(self):
        """Forgets every prompt."""
        self.entries.clear()
        self.bytes = 0

    def lookup(self, scoring, tree: AnswerTree, frozen: int) -> torch.Tensor:
        """Inputs of layer `frozen` for the tree's joined sequences (U, P + N, H), computing what the
        cache lacks."""
        weight = scoring.decoder.embed_tokens.weight
        width = tree.context_width
        hidden = torch.zeros(len(tree.contexts), width + tree.width, weight.shape[1], dtype=weight.dtype,
                             device=weight.device)
        for u, (context, nodes) in enumerate(zip(tree.contexts, tree.nodes)):
            entry = self.entries.get(context)
            if entry is None or not set(nodes) <= entry.keys():
                entry = self._compute(scoring, context, set(nodes) | (set(entry or ()) - {"prefix"}), frozen)
            self.entries.move_to_end(context)
            if context:
                hidden[u, width - len(context):width] = entry["prefix"]
            hidden[u, width:width + len(nodes)] = torch.stack([entry[n] for n in nodes])
        return hidden

    @torch.no_grad()
    def _compute(self, scoring, context, nodes, frozen):
        """The lower layers on one prompt alone (no padding) and its nodes, in one pass; stored."""
        device = scoring.decoder.embed_tokens.weight.device
        nodes = sorted(nodes)
        tokens, positions, ancestry = node_rows(nodes, len(nodes), len(context))
        ids = torch.tensor([list(context) + tokens], dtype=torch.long, device=device)
        hidden = scoring.decoder.embed_tokens(ids)
        mask, positions = joined_attention(torch.ones(1, len(context), dtype=torch.long, device=device),
                                           torch.tensor([ancestry], device=device),
                                           torch.tensor([positions], device=device), hidden.dtype)
        out = scoring.run_layers(0, frozen, hidden, mask, positions, len(context))[0]
        entry = {"prefix": out[:len(context)]} | {n: out[len(context) + i] for i, n in enumerate(nodes)}
        if context in self.entries:
            self.bytes -= _size(self.entries.pop(context))
        self.entries[context] = entry
        self.bytes += _size(entry)
        while self.bytes > self.limit_bytes and len(self.entries) > 1:
            self.bytes -= _size(self.entries.popitem(last=False)[1])
        return entry


def _size(entry: dict) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())
