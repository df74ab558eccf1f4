"""The teacher's scores, values and one PPO update under `lamorel_launcher` (bidir.teacher.start_llm:
shared-prefix scoring, LoRA on the top layers, frozen layers' outputs cached), dumped as JSON.

Run by tests/test_shared_prefix_lamorel.py, which recomputes `run_teacher` in-process on the
full-sequence path and compares.
"""

import hydra
import numpy as np

from bidir.critique import TeacherRows
from bidir.prompts import build_prompt
from bidir.teacher import Teacher, start_llm
from bidir.teacher_llm import TeacherPPOSettings, TeacherPPOUpdater
from script_output import write_result  # this folder: the script's directory

INSTRUCTIONS = ["turn left", "turn right", "go forward", "pick up", "drop", "toggle"]
PROMPTS = [build_prompt("go to the red ball", [["You see a red ball 2 steps forward"]], []),
           build_prompt("go to the red ball", [["You see a wall 1 step left", "You see a red ball 3 steps right"]], []),
           build_prompt("pick up the blue key", [["You see a blue key 1 step forward"]], []),
           build_prompt("go to the red ball", [["You see a red ball 2 steps forward"]], [])]
SETTINGS = TeacherPPOSettings(lr=1e-2, epochs=2, minibatch_size=3, gradient_batch_size=2, clip_eps=0.2,
                              entropy_coef=0.01, value_loss_coef=0.5, imitation_coef=1.0, max_grad_norm=10.0)


def run_teacher(caller) -> dict:
    """pi_T and V_T of PROMPTS, one PPO update, then pi_T and V_T again."""
    teacher = Teacher(caller, INSTRUCTIONS)
    probs, values = teacher.advise(PROMPTS)
    n, actions = len(PROMPTS), np.array([2, 0, 3, 2])
    losses = teacher.update(TeacherRows(PROMPTS, actions, np.log(probs[np.arange(n), actions]), values,
                                        np.array([1.0, -0.5, 0.3, 1.0]), values + 1.0, np.ones(n, bool),
                                        np.full(n, 0.5), np.ones(n), np.zeros(n, int), np.arange(n)))
    after, values_after = teacher.advise(PROMPTS)
    return {"probs": probs.tolist(), "values": values.tolist(), "losses": losses, "probs_after": after.tolist(),
            "values_after": values_after.tolist()}


@hydra.main(version_base=None, config_path=None, config_name=None)
def main(config):
    caller = start_llm(config.lamorel_args, 0, TeacherPPOUpdater(SETTINGS))
    result = run_teacher(caller)
    write_result(caller, result, config.rl_script_args.output)


if __name__ == "__main__":
    main()
