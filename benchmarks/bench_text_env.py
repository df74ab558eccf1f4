"""Cost of the BabyAI-Text wrapper per step, against minigrid's own step.

    python benchmarks/bench_text_env.py [--env-id ID] [--steps N] [--repeats R]

Both envs take the same random actions (turn/forward/pick up/drop/toggle) and reset at episode
end. Repeats alternate between the two so that drift in machine load hits both alike; the best
of ``repeats`` timings is kept, as the least disturbed by other load.
"""

import argparse
import datetime
import platform
import time

import gymnasium
import numpy as np

from bidir.envs import describe, make_text_env


def time_steps(env: gymnasium.Env, actions: np.ndarray) -> float:
    """Seconds to take ``actions`` in ``env``, resetting at each episode end."""
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="BabyAI-GoToRedBallNoDists-v0")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    actions = np.random.default_rng(0).integers(6, size=args.steps).tolist()
    plain, text = gymnasium.make(args.env_id), make_text_env(args.env_id)
    plain_s, text_s = [], []
    for _ in range(args.repeats):
        plain_s.append(time_steps(plain, actions))
        text_s.append(time_steps(text, actions))
    best_plain, best_text = min(plain_s), min(text_s)

    observation, _ = text.reset(seed=0)
    start = time.perf_counter()
    for _ in range(args.steps):
        describe(observation["image"], None)
    describe_s = time.perf_counter() - start

    per_step = 1e6 / args.steps
    print(f"{datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}  "
          f"python {platform.python_version()}  numpy {np.__version__}")
    print(f"{args.env_id}: {args.steps} random steps, best of {args.repeats}")
    print(f"  minigrid step       {best_plain * per_step:7.1f} us/step")
    print(f"  text wrapper step   {best_text * per_step:7.1f} us/step")
    print(f"  overhead            {(best_text - best_plain) * per_step:7.1f} us/step (target <= 50)")
    print(f"  describe() alone    {describe_s * per_step:7.1f} us/call")


if __name__ == "__main__":
    main()
