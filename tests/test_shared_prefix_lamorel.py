"""Under lamorel_launcher (1 RL + 1 CPU LLM process), the teacher's shared-prefix path (LoRA on the
top 2 layers of a tiny Llama, frozen layers cached) gives the in-process full-sequence path's
scores and values, before and after a PPO update (so its gradients too, through DDP)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("lamorel")
pytest.importorskip("peft")

from bidir.models import build_model  # noqa: E402
from bidir.teacher import start_llm  # noqa: E402
from bidir.teacher_llm import TeacherPPOUpdater  # noqa: E402

SCRIPTS = Path(__file__).parent / "lamorel_scripts"
sys.path.insert(0, str(SCRIPTS))
from teacher_with_lamorel import SETTINGS, run_teacher  # noqa: E402

pytestmark = [pytest.mark.lamorel, pytest.mark.slow]  # Lamorel's servers start in processes of their own


def test_lamorel_shared_prefix_matches_local_full_sequences(tmp_path):
    path = build_model(tmp_path / "tiny-llama", "tiny-llama")
    command = [sys.executable, "-m", "lamorel_launcher.launch", "--config-path", str(SCRIPTS),
               "--config-name", "teacher_config", f"rl_script_args.path={SCRIPTS / 'teacher_with_lamorel.py'}",
               f"rl_script_args.output={tmp_path / 'out.json'}", f"lamorel_args.llm_configs.main_llm.model_path={path}"]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    under_lamorel = json.loads((tmp_path / "out.json").read_text())
    assert under_lamorel["backend"] == "lamorel.caller.Caller"

    config = OmegaConf.load(SCRIPTS / "teacher_config.yaml").lamorel_args
    config.llm_configs.main_llm.model_path = str(path)
    config.llm_configs.main_llm.shared_prefix = False
    local = run_teacher(start_llm(config, 0, TeacherPPOUpdater(SETTINGS)))
    for key in ("probs", "values", "probs_after", "values_after"):
        torch.testing.assert_close(torch.tensor(under_lamorel[key]), torch.tensor(local[key]), atol=1e-5, rtol=0,
                                   msg=key)
    assert torch.tensor(local["probs_after"]).sub(torch.tensor(local["probs"])).abs().max() > 1e-3  # it trained
