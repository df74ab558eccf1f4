"""The Caller: Lamorel's under `lamorel_launcher`, else `LocalCaller`, an in-process implementation
of Lamorel v0.3's Caller API over the same module functions, updaters and initializers, so both
backends give the same numbers (within float rounding). `update` gives the updater
`_current_batch_ids` and returns one result per LLM process, as Lamorel does.
"""
from __future__ import annotations

import atexit
import copy
import gc
import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf

from bidir.llm.base import LAMOREL_AVAILABLE, BaseModelInitializer, BaseModuleFunction, BaseUpdater
from bidir.llm.hf_llm import LocalLLM, count_positions_over_attended_tokens
from bidir.llm.module_functions import ProbabilityScore

logger = logging.getLogger("bidir")


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
