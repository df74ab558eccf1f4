"""Lamorel v0.3's extension points: module functions, updaters and model initializers.

With Lamorel installed these are Lamorel's own classes, so the same subclasses run on its servers;
without it, stand-ins with the same attributes let `LocalCaller` run them in-process.
"""
from __future__ import annotations

import logging

import torch

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

