"""LoRA adapters on the teacher LLM (peft), configured by `lamorel_args.llm_configs.<llm>.lora`.

With `lora.enabled`, the LLM's own weights are frozen and a peft LoRA adapter is added to it;
the PPO and behaviour-cloning updaters then train only what still requires gradients (the adapter
and the value head), and teacher checkpoints hold only those tensors (`trainable_state`).
Applied by the teacher's model initializer, so the same code runs in-process and on every
Lamorel server (where DDP then averages the adapter's gradients only).

The teacher stays in eval mode, as the fully fine-tuned one does (its PPO ratio starts at exactly
1, and no RNG is drawn inside the LLM, which keeps resumed runs bit-exact): peft's `lora_dropout`
would do nothing there, so it is not a key.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

LORA_DEFAULTS = {"enabled": False, "r": 8, "alpha": 16.0, "target_modules": None, "layers": None,
                 "adapter_path": None}


def lora_settings(llm_config) -> dict:
    """The `lora` block of an LLM config with defaults filled in ({"enabled": False} when absent)."""
    block = llm_config.get("lora") if llm_config is not None else None
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    settings = {**LORA_DEFAULTS, **(block or {})}
    unknown = set(settings) - set(LORA_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown lora keys {sorted(unknown)}; known: {sorted(LORA_DEFAULTS)}")
    return settings


def add_lora(model, settings: dict, seed: int = 0):
    """Wraps `model._LLM_model` (Lamorel's handler or LocalLLM) in a peft LoRA adapter, in place.

    A fresh adapter (`target_modules` null: peft's default for the model family, e.g. T5 q, v;
    GPT-2 c_attn; Llama/Qwen2 q_proj, v_proj) is initialised under `seed`, so every backend and
    every server starts from the same adapter, on every layer or on the top `layers` only;
    `adapter_path` loads a saved one instead (e.g. from `bidir-teacher pretrain --lora`). Module
    functions (the value head) stay trainable.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    hf_model = model._LLM_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if settings["adapter_path"]:
            peft_model = PeftModel.from_pretrained(hf_model, settings["adapter_path"], is_trainable=True)
        else:
            target = settings["target_modules"]
            config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=0.0, bias="none",
                                target_modules=list(target) if target is not None else None,
                                layers_to_transform=top_layers(hf_model, settings["layers"]))
            peft_model = get_peft_model(hf_model, config)
    peft_model.eval()  # peft switches to training mode; the teacher never uses dropout
    model._modules["_LLM_model"] = peft_model
    return model


def top_layers(hf_model, count: int | None) -> list[int] | None:
    """Indices of the model's top `count` layers (None: every layer). Below them the LLM is frozen
    whole, so a causal teacher caches those layers' outputs per prompt (bidir/llm/shared_prefix.py)."""
    if count is None:
        return None
    layers = hf_model.config.get_text_config().num_hidden_layers
    if not 1 <= count <= layers:
        raise ValueError(f"lora.layers must be between 1 and the model's {layers} layers, got {count}")
    return list(range(layers - count, layers))


def has_frozen_parameters(module: torch.nn.Module) -> bool:
    """True when part of the LLM is frozen (a LoRA teacher)."""
    return any(not p.requires_grad for p in module.parameters())


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the updaters train: every parameter of a full fine-tune; adapter + value head with LoRA."""
    return [p for p in module.parameters() if p.requires_grad]


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The checkpointed weights: the whole state dict of a fully trained model; with LoRA, only the
    trainable tensors (adapter and value head), detached copies."""
    if not has_frozen_parameters(module):
        return module.state_dict()
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]):
    """Loads what `trainable_state` saved; a LoRA checkpoint must cover every trainable tensor and
    nothing else (a full checkpoint loads strictly)."""
    if not has_frozen_parameters(module):
        if any("lora_" in name for name in state):
            raise ValueError("teacher checkpoint holds a LoRA adapter but this teacher has none: set "
                             "lamorel_args.llm_configs.main_llm.lora.enabled=true (with the run's lora settings)")
        module.load_state_dict(state, strict=True)
        return
    expected = {name for name, p in module.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"teacher checkpoint does not match this LoRA teacher: missing {missing[:3]} "
                         f"({len(missing)}), unexpected {extra[:3]} ({len(extra)}); was it saved with the "
                         f"same lora settings?")
    module.load_state_dict(state, strict=False)
