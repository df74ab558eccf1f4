"""The LLM side of bidir, split as Lamorel splits its server: extension points (`base`), module
functions (`module_functions`), the in-process `hf_llm` handler (`hf_llm`) and the Caller
(`caller`: Lamorel's under lamorel_launcher, else the in-process `LocalCaller`).
"""
from bidir.llm.base import LAMOREL_AVAILABLE, BaseModelInitializer, BaseModuleFunction, BaseUpdater
from bidir.llm.caller import LamorelCompat, LocalCaller, make_caller, under_lamorel_launcher
from bidir.llm.hf_llm import LocalLLM, count_positions_over_attended_tokens
from bidir.llm.module_functions import (ProbabilityScore, answer_start_state, candidate_logits_and_tokens,
                                        candidate_token_logprobs, candidate_tokens, causal_context_end)
from bidir.llm.shared_prefix import (SharedPrefixOutputs, SharedPrefixScoring, install_shared_prefix,
                                     supports_shared_prefix)

__all__ = ["LAMOREL_AVAILABLE", "BaseModelInitializer", "BaseModuleFunction", "BaseUpdater", "LamorelCompat",
           "LocalCaller", "LocalLLM", "ProbabilityScore", "SharedPrefixOutputs", "SharedPrefixScoring",
           "answer_start_state", "candidate_logits_and_tokens", "candidate_token_logprobs", "candidate_tokens",
           "causal_context_end",
           "count_positions_over_attended_tokens", "install_shared_prefix", "make_caller", "supports_shared_prefix",
           "under_lamorel_launcher"]
