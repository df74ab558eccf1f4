"""The LLM side of bidir: Lamorel's extension points and an in-process Caller.

Everything the teacher computes (candidate scores, value head, PPO update) is written as a
Lamorel module function or updater. `make_caller` hands those to Lamorel's `Caller` when the
process was started by `lamorel_launcher`, and to `LocalCaller` otherwise: an in-process
implementation of Lamorel v0.3's Caller API with the same forward semantics as its `hf_llm`
handler, so both backends give the same numbers (within float rounding).

Lamorel v0.3 behaviours mirrored on purpose (module functions written for Lamorel rely on them):
- contexts and candidates are tokenized without special tokens; seq2seq decoder input is
  `[pad] + candidate tokens`; causal sequences are `context[:-1]` (left-padded) followed by
  `context[-1:] + candidate` (right-padded);
- the built-in `__score` returns the product of token probabilities; `return_logprobs=True`
  reaches custom module functions (as a kwarg) but not `__score`. Use a log-prob module
  function for RL (probabilities underflow for long candidates);
- `forced_context_len` / `forced_sequence_len` in `score` / `custom_module_fns` are accepted
  and dropped, as Lamorel's Caller does not forward them to the server;
- `update` gives the updater `_current_batch_ids` and returns one result per LLM process.
Where Lamorel v0.3 fails (built-in `__score` on causal models, causal `pre_encode_inputs` on
transformers 5), LocalCaller computes what Lamorel intends; see `LocalLLM.forward`. One deliberate
change on both backends: causal models number positions over attended tokens only, so left
padding does not shift a prompt's positions (`count_positions_over_attended_tokens`).
"""
from __future__ import annotations

import atexit
import copy
import gc
import logging
import os
from contextlib import nullcontext

import torch
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger("bidir")

try:
    from lamorel import BaseModelInitializer, BaseModuleFunction, BaseUpdater

    LAMOREL_AVAILABLE = True
except ImportError:
    LAMOREL_AVAILABLE = False

    class BaseModuleFunction(torch.nn.Module):
        """A module computed on the LLM's outputs (Lamorel's extension point, same attributes)."""

        def __init__(self):
            super().__init__()
            self.llm_config = None
            self.model_config = None
            self.device = None
            self.current_process_config = None

        def initialize(self):
            """Create parameters; called once `llm_config`, `model_config` and `device` are set."""
            raise NotImplementedError()

        def forward(self, forward_outputs, minibatch, tokenized_contexts, current_minibatch_ids, **kwargs):
            raise NotImplementedError()

    class BaseUpdater:
        """Trains the LLM (and module functions) when `Caller.update` is called."""

        def __init__(self):
            self._llm_module = None
            self.llm_config = None
            self.current_process_config = None
            self.model_config = None

        def set_llm_module(self, llm_module):
            """Receive the callable LLM module whose parameters the updater trains."""
            self._llm_module = llm_module

        def perform_update(self, contexts, candidates, _current_batch_ids, **kwargs):
            """Run an update; the default (no updater given) does nothing."""
            logger.warning("Calling update but no updater was provided, ignoring.")

    class BaseModelInitializer:
        """Modifies the LLM module once loaded (e.g. loads weights, adds adapters)."""

        def __init__(self):
            self.llm_config = None
            self.model_config = None
            self.current_process_config = None

        def initialize_model(self, model):
            """Return the (possibly modified or replaced) model."""
            raise NotImplementedError()


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
    if llm_config.model_type == "seq2seq":
        return forward_outputs["logits"][:, :-1, :], minibatch["decoder_input_ids"][:, 1:]
    start = causal_context_end(llm_config, tokenized_contexts)
    return forward_outputs["logits"][:, start:-1, :], minibatch["input_ids"][:, start + 1:]


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


def _pad(ids, mask, size, pad_token, right=True):
    fill = size - len(ids)
    if right:
        return ids + [pad_token] * fill, mask + [0] * fill
    return [pad_token] * fill + ids, [0] * fill + mask


def _load_model_and_tokenizer(llm_config, device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = llm_config.model_path
    model_class = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}[llm_config.model_type]
    kwargs = {"trust_remote_code": True}
    if llm_config.get("constructor_kwargs") is not None:
        kwargs.update(OmegaConf.to_container(llm_config.constructor_kwargs)
                      if isinstance(llm_config.constructor_kwargs, DictConfig) else llm_config.constructor_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    if llm_config.get("pretrained", True):
        model = model_class.from_pretrained(path, device_map=str(device), **kwargs)
    else:
        model = model_class.from_config(AutoConfig.from_pretrained(path, trust_remote_code=True), **kwargs).to(device)
    return model, tokenizer


class LocalLLM(torch.nn.Module):
    """An HF model plus its module functions, callable like Lamorel's `HF_LLM` handler.

    Attribute names (`_LLM_model`, `_module_functions`) match Lamorel's, so state dicts (and
    checkpoints saved under Lamorel, minus DDP's `module.` prefix) are interchangeable.
    """

    def __init__(self, llm_config, device="cpu"):
        super().__init__()
        if llm_config.model_type not in ("causal", "seq2seq"):
            raise NotImplementedError(f"model_type must be 'causal' or 'seq2seq', got {llm_config.model_type!r}")
        self.model_type = llm_config.model_type
        self.main_device = device
        self._LLM_model, self._LLM_tokenizer = _load_model_and_tokenizer(llm_config, device)
        if self.model_type == "causal":
            count_positions_over_attended_tokens(self._LLM_model)
        self._scoring_minibatch_size = llm_config.get("minibatch_size", 64)
        self._pre_encode_inputs = bool(llm_config.get("pre_encode_inputs", False))
        if self._LLM_tokenizer.pad_token is not None:
            self.pad_token = self._LLM_tokenizer.pad_token_id
        elif llm_config.get("pad_token_id") is not None:
            self.pad_token = self._LLM_tokenizer.pad_token_id = llm_config.pad_token_id
        else:
            self.pad_token = self._LLM_tokenizer.pad_token_id = self._LLM_tokenizer.eos_token_id
        self._module_functions = torch.nn.ModuleDict()

    def get_model_config(self):
        """The HF model's config (module functions read e.g. `hidden_size` from it)."""
        return self._LLM_model.config

    def get_additional_llm_config(self):
        """Keys the server adds to the llm_config handed to module functions and updaters."""
        return {"pad_token": self.pad_token}

    def register_module_functions(self, module_functions):
        """Own the module functions so their parameters are trained and saved with the LLM."""
        self._module_functions = torch.nn.ModuleDict(module_functions)

    def _tokenize(self, texts):
        return self._LLM_tokenizer(list(texts), add_special_tokens=False, return_token_type_ids=False)["input_ids"]

    def forward(self, module_function_keys, contexts, candidates=None, require_grad=False, minibatch_size=None,
                add_eos_on_candidates=False, peft_adapter=None, pad_contexts=False, forced_context_len=None,
                forced_sequence_len=None, **kwargs):
        """Score every (context, candidate) pair and apply the module functions; Lamorel's HF_LLM.forward.

        Returns one dict per context, `{key: tensor (or dict of tensors) with one row per candidate}`.
        Pairs are processed in minibatches of `minibatch_size` (default: the config's), contexts
        and candidates flattened in order, like Lamorel, so per-minibatch padding is the same.
        Speed: a seq2seq context is encoded once and its encoder output reused for all its
        candidates (Lamorel re-encodes it per candidate unless `pre_encode_inputs`); a causal
        context is run once when `pre_encode_inputs`, its key/value cache shared by its candidates.
        Differences from Lamorel v0.3: a context with no candidates yields empty tensors (Lamorel
        stops at it); causal `pre_encode_inputs` works on transformers 5 (Lamorel's fails).
        """
        if not contexts:
            return [{}]
        if peft_adapter is not None and hasattr(self._LLM_model, "set_adapter"):
            self._LLM_model.set_adapter(peft_adapter)
        if candidates is None:
            candidates = [[""] for _ in contexts]
        if add_eos_on_candidates:
            candidates = [[c + self._LLM_tokenizer.eos_token for c in cands] for cands in candidates]
        mb_size = minibatch_size if minibatch_size is not None else self._scoring_minibatch_size
        causal = self.model_type == "causal"

        with nullcontext() if require_grad else torch.no_grad():
            if all(not isinstance(c, str) for c in contexts):  # already tokenized
                ctx_ids = [list(c) for c in contexts]
            else:
                ctx_ids = self._tokenize(contexts)
            if pad_contexts or self._pre_encode_inputs or not causal:
                size = max(len(c) for c in ctx_ids)
                if forced_context_len is not None:
                    assert forced_context_len >= size
                    size = forced_context_len
                ctx_sizes = [size] * len(ctx_ids)
            else:
                ctx_sizes = [len(c) for c in ctx_ids]

            unique_cands = sorted({c for cands in candidates for c in cands})
            cand_tokens = dict(zip(unique_cands, self._tokenize(unique_cands))) if unique_cands else {}

            # Flatten (context, candidate) pairs; inputs[i] is the padded context part of pair i.
            inputs, outputs, pair_context, ids_tables = [], [], [], []
            for w, cands in enumerate(candidates):
                ids_tables.append(list(range(len(outputs), len(outputs) + len(cands))))
                ids = ctx_ids[w]
                if causal:
                    in_ids, in_mask = _pad(ids[:-1], [1] * (len(ids) - 1), ctx_sizes[w] - 1, self.pad_token, right=False)
                    prefix = ids[-1:]
                else:
                    in_ids, in_mask = _pad(ids, [1] * len(ids), ctx_sizes[w], self.pad_token)
                    prefix = []
                context_input = {"input_ids": in_ids, "attention_mask": in_mask}
                for c in cands:
                    inputs.append(context_input)
                    outputs.append(prefix + cand_tokens[c])
                    pair_context.append(w)

            hidden = module_function_keys != ["__score"]
            encoded = self._encode_contexts(inputs, ids_tables, mb_size, hidden) if inputs else None

            results = {k: [] for k in module_function_keys}
            for start in range(0, len(outputs), mb_size):
                stop = min(start + mb_size, len(outputs))
                minibatch, model_inputs = self._build_minibatch(
                    inputs[start:stop], outputs[start:stop], pair_context[start:stop], encoded, forced_sequence_len)
                if hidden:
                    minibatch["output_hidden_states"] = torch.tensor(True)
                    model_inputs["output_hidden_states"] = True
                model_outputs = self._LLM_model(**model_inputs)
                minibatch_ids = list(range(start, stop))
                for key in module_function_keys:
                    fn = self._module_functions[key]
                    if key == "__score":  # Lamorel passes no kwargs to it (hence no return_logprobs)
                        r = fn(model_outputs, minibatch, inputs[start:stop], current_minibatch_ids=minibatch_ids)
                    else:
                        r = fn(model_outputs, minibatch=minibatch, tokenized_contexts=inputs[start:stop],
                               current_minibatch_ids=minibatch_ids, **kwargs)
                    if isinstance(r, dict):
                        if not results[key]:
                            results[key] = {k: [] for k in r}
                        for k, v in r.items():
                            results[key][k].append(v)
                    else:
                        results[key].append(r)

            for key, v in results.items():
                if isinstance(v, dict):
                    results[key] = {k: torch.cat(vv) for k, vv in v.items()}
                elif v:
                    results[key] = torch.cat(v)

            per_context = []
            for indices in ids_tables:
                entry = {}
                for key, v in results.items():
                    if not indices:
                        entry[key] = torch.tensor([])
                    elif isinstance(v, dict):
                        entry[key] = {k: vv[indices] for k, vv in v.items()}
                    else:
                        entry[key] = v[indices]
                per_context.append(entry)
        return per_context

    def _encode_contexts(self, inputs, ids_tables, mb_size, hidden):
        """Run each context's input part once, `mb_size` contexts at a time (as Lamorel pre-encodes).

        seq2seq: encoder outputs (and hidden states when the decoder call would return them).
        causal with pre_encode_inputs: per-layer keys/values of context[:-1]. Else None.
        """
        if self.model_type == "causal" and not self._pre_encode_inputs:
            return None
        firsts = [table[0] for table in ids_tables if table]
        if self.model_type == "causal" and len(inputs[0]["input_ids"]) == 0:
            return None  # one-token contexts: nothing precedes the last token
        last, layers, rows = [], [], {}
        for start in range(0, len(firsts), mb_size):
            chunk = firsts[start:start + mb_size]
            batch = {k: torch.tensor([inputs[i][k] for i in chunk], device=self.main_device)
                     for k in ("input_ids", "attention_mask")}
            if self.model_type == "seq2seq":
                out = self._LLM_model.get_encoder()(**batch, output_hidden_states=hidden and not self._pre_encode_inputs,
                                                    return_dict=True)
                last.append(out.last_hidden_state)
                if out.hidden_states is not None:
                    layers.append(out.hidden_states)
            else:
                cache = self._LLM_model(**batch, use_cache=True).past_key_values
                layers.append([(layer.keys, layer.values) for layer in cache.layers])
        # Map pair -> row of the encoded contexts.
        row = 0
        for w, table in enumerate(ids_tables):
            if table:
                rows[w] = row
                row += 1
        if self.model_type == "seq2seq":
            states = tuple(torch.cat(h) for h in zip(*layers)) if layers else None
            return {"rows": rows, "last": torch.cat(last), "hidden_states": states}
        kv = [(torch.cat([c[i][0] for c in layers]), torch.cat([c[i][1] for c in layers]))
              for i in range(len(layers[0]))]
        return {"rows": rows, "kv": kv}

    def _build_minibatch(self, inputs, outputs, pair_context, encoded, forced_sequence_len):
        """(minibatch as module functions see it under Lamorel, kwargs for the model call)."""
        from transformers.modeling_outputs import BaseModelOutput

        tensor = lambda x: torch.tensor(x, device=self.main_device)
        if self.model_type == "seq2seq":
            size = max(len(o) for o in outputs) + 1
            dec = [_pad([self.pad_token] + o, [1] * (len(o) + 1), size, self.pad_token) for o in outputs]
            minibatch = {"decoder_input_ids": tensor([d[0] for d in dec]),
                         "decoder_attention_mask": tensor([d[1] for d in dec]),
                         "attention_mask": tensor([i["attention_mask"] for i in inputs])}
            index = tensor([encoded["rows"][w] for w in pair_context])
            last = encoded["last"].index_select(0, index)
            states = encoded["hidden_states"]
            encoder_outputs = BaseModelOutput(
                last_hidden_state=last,
                hidden_states=tuple(h.index_select(0, index) for h in states) if states is not None else None)
            if self._pre_encode_inputs:
                minibatch["encoder_outputs"] = (last,)
            else:
                minibatch["input_ids"] = tensor([i["input_ids"] for i in inputs])
            model_inputs = {k: v for k, v in minibatch.items() if k not in ("input_ids", "encoder_outputs")}
            model_inputs["encoder_outputs"] = encoder_outputs
            return minibatch, model_inputs

        if encoded is not None:  # causal, pre-encoded: the minibatch holds context[-1] + candidate only
            from transformers import DynamicCache

            if forced_sequence_len is not None:
                raise NotImplementedError("Unable to force size when contexts are padded")
            size = max(len(o) for o in outputs)
            padded = [_pad(o, [1] * len(o), size, self.pad_token) for o in outputs]
            minibatch = {"input_ids": tensor([p[0] for p in padded]),
                         "attention_mask": tensor([i["attention_mask"] + p[1] for i, p in zip(inputs, padded)])}
            index = tensor([encoded["rows"][w] for w in pair_context])
            cache = DynamicCache([(k.index_select(0, index), v.index_select(0, index)) for k, v in encoded["kv"]])
            minibatch["past_key_values"] = cache
            return minibatch, dict(minibatch)

        size = max(len(i["input_ids"]) + len(o) for i, o in zip(inputs, outputs))
        if forced_sequence_len is not None:
            assert forced_sequence_len > size
            size = forced_sequence_len
        full = [_pad(i["input_ids"] + o, i["attention_mask"] + [1] * len(o), size, self.pad_token)
                for i, o in zip(inputs, outputs)]
        minibatch = {"input_ids": tensor([f[0] for f in full]), "attention_mask": tensor([f[1] for f in full])}
        return minibatch, dict(minibatch)

    def generate(self, contexts, return_logprobs=False, peft_adapter=None, **kwargs):
        """Generate from each context; Lamorel's structure: per context, a list of dicts per sequence."""
        if not contexts:
            return [{}]
        if peft_adapter is not None and hasattr(self._LLM_model, "set_adapter"):
            self._LLM_model.set_adapter(peft_adapter)
        causal = self.model_type == "causal"
        enc = self._LLM_tokenizer(list(contexts), return_tensors="pt", padding=True, add_special_tokens=False,
                                  padding_side="left" if causal else "right").to(self.main_device)
        out = self._LLM_model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                       return_dict_in_generate=True, output_scores=True, **kwargs)
        sequences = out.sequences[:, enc["input_ids"].shape[-1]:] if causal else out.sequences[:, 1:]
        logits = torch.stack(out.scores, dim=1)
        if return_logprobs:
            token_scores = logits.log_softmax(-1).gather(2, sequences[:, :, None]).squeeze(-1)
            total, names = token_scores.sum(-1), ("text_logprob", "tokens_logprob")
        else:
            token_scores = logits.softmax(-1).gather(2, sequences[:, :, None]).squeeze(-1)
            total, names = token_scores.prod(-1), ("text_probability", "tokens_probability")
        n_return = kwargs.get("num_return_sequences", 1)
        beams = getattr(out, "sequences_scores", None)
        generations = []
        for i in range(len(contexts)):
            per_context = []
            for j in range(i * n_return, (i + 1) * n_return):
                g = {"text": self._LLM_tokenizer.decode(sequences[j], skip_special_tokens=True),
                     "tokens": sequences[j],
                     names[0]: total[j].detach().cpu().numpy(),
                     names[1]: token_scores[j].detach().cpu().numpy()}
                if beams is not None:
                    g["beam_score"] = beams[j].detach().cpu().item()
                per_context.append(g)
            generations.append(per_context)
        return generations


def _device_for(config, name):
    """First device of the LLM's first process in `distributed_setup_args` (Lamorel's choice), else CPU."""
    try:
        devices = config.distributed_setup_args.llm_processes[name].devices_per_process[0]
    except (AttributeError, KeyError, IndexError, TypeError):
        return "cpu"
    if devices == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{list(devices)[0]}"


class LocalCaller:
    """In-process implementation of Lamorel v0.3's `Caller`: same constructor, methods and results.

    `config` is the `lamorel_args` node: `llm_configs.<name>` (handler, model_type, model_path,
    pretrained, minibatch_size, pre_encode_inputs, constructor_kwargs, ...) and, optionally,
    `distributed_setup_args.llm_processes.<name>.devices_per_process` (first device is used).
    The custom dicts are keyed by LLM name. The updater's module is the `LocalLLM` itself (no DDP,
    hence no `.module`: use `getattr(module, "module", module)` to reach the model).
    """

    def __init__(self, config, custom_updater={}, custom_module_functions={}, custom_model_initializer={}):
        config = config if isinstance(config, DictConfig) else OmegaConf.create(config)
        if config.get("llm_configs") is None:
            raise ValueError("lamorel_args needs llm_configs.<name> (Lamorel v0.3 layout)")
        self._models, self._updaters = {}, {}
        for name, llm_config in config.llm_configs.items():
            self._start_llm(name, llm_config, _device_for(config, name), custom_updater.get(name),
                            dict(custom_module_functions.get(name, {})), custom_model_initializer.get(name))

    def _start_llm(self, name, llm_config, device, updater, module_functions, initializer):
        handler = llm_config.get("handler", "hf_llm")
        if handler != "hf_llm":
            raise NotImplementedError(f"LocalCaller implements the 'hf_llm' handler only, not {handler!r}")
        model = LocalLLM(llm_config, device)
        fn_config = copy.deepcopy(llm_config)
        OmegaConf.set_struct(fn_config, False)
        for key, value in model.get_additional_llm_config().items():
            fn_config[key] = value
        process_config = {"llm": name, "process_index": 0}
        module_functions["__score"] = ProbabilityScore()
        for key, fn in module_functions.items():
            if not isinstance(fn, BaseModuleFunction):
                raise TypeError(f"module function {key!r} of LLM {name!r} is not a BaseModuleFunction")
            fn.device, fn.llm_config, fn.current_process_config = model.main_device, fn_config, process_config
            fn.model_config = model.get_model_config()
            fn.initialize()
        model.register_module_functions(module_functions)
        for part in (initializer, updater):
            if part is not None:
                part.llm_config, part.current_process_config = fn_config, process_config
                part.model_config = model.get_model_config()
        if initializer is not None:
            model = initializer.initialize_model(model)
        if updater is None:
            updater = BaseUpdater()
        elif not isinstance(updater, BaseUpdater):
            raise TypeError(f"updater of LLM {name!r} is not a BaseUpdater")
        updater.set_llm_module(model)
        self._models[name], self._updaters[name] = model, updater

    def _llm(self, llm_to_call):
        if llm_to_call is None:
            if len(self._models) != 1:
                raise Exception("Multiple LLMs exist, please specify which one to call")
            llm_to_call = next(iter(self._models))
        if llm_to_call not in self._models:
            raise KeyError(f"unknown LLM {llm_to_call!r}; configured: {sorted(self._models)}")
        return llm_to_call

    def score(self, contexts, candidates=None, pad_contexts=True, forced_context_len=None, forced_sequence_len=None,
              add_eos_on_candidates=False, require_grad=False, minibatch_size=None,
              additional_module_function_keys=[], peft_adapter=None, llm_to_call=None, **kwargs):
        """Built-in score of each candidate after its context (probabilities; see module docstring).

        Returns, per context, a tensor with one score per candidate; with
        `additional_module_function_keys`, a dict per context with `__score` and those keys.
        """
        keys = ["__score"] + list(additional_module_function_keys)
        result = self.custom_module_fns(keys, contexts, candidates, pad_contexts=pad_contexts,
                                        add_eos_on_candidates=add_eos_on_candidates, require_grad=require_grad,
                                        minibatch_size=minibatch_size, peft_adapter=peft_adapter,
                                        llm_to_call=llm_to_call, **kwargs)
        if not additional_module_function_keys:
            result = [r["__score"] for r in result]
        return result

    def custom_module_fns(self, module_function_keys, contexts, candidates=None, pad_contexts=True,
                          forced_context_len=None, forced_sequence_len=None, add_eos_on_candidates=False,
                          require_grad=False, minibatch_size=None, peft_adapter=None, llm_to_call=None, **kwargs):
        """Forward pass + the named module functions; per context, a dict {key: result per candidate}.

        `forced_context_len` / `forced_sequence_len` are dropped, as by Lamorel's Caller.
        """
        model = self._models[self._llm(llm_to_call)]
        return model(module_function_keys, contexts=contexts, candidates=candidates,
                     add_eos_on_candidates=add_eos_on_candidates, require_grad=require_grad,
                     minibatch_size=minibatch_size, peft_adapter=peft_adapter, pad_contexts=pad_contexts, **kwargs)

    def generate(self, contexts, return_logprobs=False, peft_adapter=None, llm_to_call=None, **kwargs):
        """Per context, a list (one per returned sequence) of dicts: text, tokens, and probabilities
        (`text_probability`, `tokens_probability`) or log-probs (`text_logprob`, `tokens_logprob`)."""
        model = self._models[self._llm(llm_to_call)]
        with torch.no_grad():
            return model.generate(contexts, return_logprobs=return_logprobs, peft_adapter=peft_adapter, **kwargs)

    def update(self, contexts, candidates=None, llm_to_call=None, **kwargs):
        """Call the updater's `perform_update`; returns `[result]` (one per LLM process, as Lamorel)."""
        updater = self._updaters[self._llm(llm_to_call)]
        if candidates is not None:
            candidate_ids = [list(range(len(c))) for c in candidates]
        else:
            candidate_ids = [None for _ in contexts]
        batch_ids = {"contexts": list(range(len(contexts))), "candidates": candidate_ids}
        return [updater.perform_update(contexts=contexts, candidates=candidates, _current_batch_ids=batch_ids,
                                       **kwargs)]

    def close(self, llm_to_call=None):
        """Release the LLM(s); later calls to a closed LLM raise KeyError."""
        names = [self._llm(llm_to_call)] if llm_to_call is not None else list(self._models)
        for name in names:
            del self._models[name], self._updaters[name]


def count_positions_over_attended_tokens(hf_model):
    """Causal LMs: when no `position_ids` are given, number positions over the attended tokens only
    (as `generate` does), so a left-padded context gets the positions it has alone.

    Lamorel v0.3 left-pads causal contexts to one length and passes no position ids; the model then
    counts pads as positions, and a prompt's scores depend on the longest prompt in its minibatch
    (by up to 5e-2 in log-prob on a tiny GPT-2). Installed on the model's forward by both backends.
    """
    original_forward = hf_model.forward

    def forward(*args, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None and attention_mask is not None and input_ids is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        return original_forward(*args, input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids, **kwargs)

    hf_model.forward = forward
    return hf_model


class LamorelCompat(BaseModelInitializer):
    """Lets Lamorel v0.3's hf_llm handler call transformers 5 models, then applies `inner` (if any).

    Lamorel passes `output_hidden_states=torch.tensor(True)` to the model whenever a custom
    module function is called; transformers 5 iterates that flag and fails. The model's forward
    is wrapped to turn a tensor flag into a bool, and causal models count positions as LocalLLM
    does (`count_positions_over_attended_tokens`). `make_caller` installs this under Lamorel.
    """

    def __init__(self, inner=None):
        super().__init__()
        self.inner = inner

    def initialize_model(self, model):
        hf_model = model._LLM_model
        original_forward = hf_model.forward

        def forward(*args, output_hidden_states=None, **kwargs):
            if isinstance(output_hidden_states, torch.Tensor):
                output_hidden_states = bool(output_hidden_states)
            return original_forward(*args, output_hidden_states=output_hidden_states, **kwargs)

        hf_model.forward = forward
        if model.model_type == "causal":
            count_positions_over_attended_tokens(hf_model)
        if self.inner is None:
            return model
        self.inner.llm_config, self.inner.model_config = self.llm_config, self.model_config
        self.inner.current_process_config = self.current_process_config
        return self.inner.initialize_model(model)


def under_lamorel_launcher() -> bool:
    """True in a process started by torchrun/lamorel_launcher (RANK and WORLD_SIZE set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def release_process_groups():
    """Destroys torch.distributed's process groups and frees what still holds them, so that gloo's
    worker threads are joined while the interpreter still runs (registered at exit by `make_caller`).

    A gloo worker frees the tensors of the collective it ran just after that collective returns. After
    the last one (the RL process's CLOSE to the LLM servers, a server's CLOSE to the other servers)
    the process exits at once; a worker that got no CPU in between frees those tensors while Python
    finalizes, cannot take the GIL their Python objects need, and the process aborts (SIGABRT,
    torch 2.13, Python 3.11). Destroying the groups here joins the workers first."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # a group held only through reference cycles (a Caller, a server, their modules) goes too


def make_caller(lamorel_args, custom_updater={}, custom_module_functions={}, custom_model_initializer={}):
    """Lamorel's Caller under lamorel_launcher, else a LocalCaller, with the same extension objects."""
    if under_lamorel_launcher():
        if not LAMOREL_AVAILABLE:
            raise RuntimeError("started by a distributed launcher (RANK/WORLD_SIZE set) but lamorel is not "
                               "importable: install Lamorel v0.3 (pip install -e <lamorel>/lamorel) or run "
                               "without the launcher to use the in-process LocalCaller")
        from lamorel import Caller

        # Before Caller: on an LLM server it serves until the RL process closes it, then exits.
        atexit.register(release_process_groups)
        logger.info("LLM backend: lamorel.Caller (rank %s of %s)", os.environ["RANK"], os.environ["WORLD_SIZE"])
        initializers = {name: LamorelCompat(custom_model_initializer.get(name)) for name in lamorel_args.llm_configs}
        return Caller(lamorel_args, custom_updater=custom_updater, custom_module_functions=custom_module_functions,
                      custom_model_initializer=initializers)
    logger.info("LLM backend: in-process LocalCaller")
    return LocalCaller(lamorel_args, custom_updater=custom_updater, custom_module_functions=custom_module_functions,
                       custom_model_initializer=custom_model_initializer)
