"""BabyAI-Text descriptions, the text wrapper and TextVecEnv, checked against docs/design.md, "BabyAI-Text".

Hand-built views use minigrid's layout: ``image[x, y]`` with the agent at (3, 6) facing
decreasing y, so a cell (3, y) is ``6 - y`` steps forward and (x, 6) is ``|x - 3|`` steps
left (x < 3) or right (x > 3).
"""

import numpy as np
import pytest
from minigrid.core.grid import Grid
from minigrid.core.world_object import Ball, Box, Door, Floor, Goal, Key, Lava, Wall
from minigrid.utils.baby_ai_bot import BabyAIBot

from bidir.envs import (
    INSTRUCTION_ACTIONS,
    INSTRUCTIONS,
    TextVecEnv,
    babyai_env_ids,
    describe,
    instruction_actions,
    make_text_env,
)

LEVEL = "BabyAI-GoToRedBallNoDists-v0"
EMPTY, UNSEEN = (1, 0, 0), (0, 0, 0)


def view(cells: dict, fill=EMPTY) -> np.ndarray:
    """A 7x7x3 egocentric image, ``fill`` everywhere except ``cells`` {(x, y): WorldObj or tuple}."""
    image = np.empty((7, 7, 3), dtype=np.uint8)
    image[:, :] = fill
    for (x, y), cell in cells.items():
        image[x, y] = cell if isinstance(cell, tuple) else cell.encode()
    return image


# --- describe: golden cases -------------------------------------------------------------------


def test_empty_view_says_nothing():
    assert describe(view({}), None) == []


def test_wall_forward_plural_and_singular():
    # The whole far row is wall: straight ahead the first wall is at y=2, 6 - 2 = 4 steps.
    walls = {(x, 2): Wall() for x in range(7)}
    assert describe(view(walls), None)[0] == "You see a wall 4 steps forward"
    # A wall right in front (y=5) is 1 step, singular.
    assert describe(view({(3, 5): Wall()}), None) == ["You see a wall 1 step forward"]


def test_walls_left_and_right_on_agent_row():
    # (0, 6) is 3 columns left of the agent, (4, 6) one column right.
    image = view({(0, 6): Wall(), (4, 6): Wall()})
    assert describe(image, None) == ["You see a wall 3 steps left", "You see a wall 1 step right"]


def test_wall_hidden_behind_object_is_not_described():
    # Ball 2 ahead stands between the agent and the wall 4 ahead: only the ball is described.
    image = view({(3, 2): Wall(), (3, 4): Ball("red")})
    assert describe(image, None) == ["You see a red ball 2 steps forward"]


def test_wall_seen_past_empty_cells_but_not_past_a_door():
    # Left: empty cells (2, 6), (1, 6) then a wall at (0, 6) -> described.
    # Right: closed door at (5, 6) hides the wall at (6, 6).
    image = view({(0, 6): Wall(), (5, 6): Door("blue", is_open=False), (6, 6): Wall()})
    assert describe(image, None) == [
        "You see a wall 3 steps left",
        "You see a closed blue door 2 steps right",
    ]


def test_carrying_comes_first_and_own_cell_is_skipped():
    # minigrid draws the carried key in the agent's own cell (3, 6); it is described only as carried.
    key = Key("yellow")
    image = view({(3, 6): key, (3, 3): Box("green")})
    assert describe(image, key) == ["You carry a yellow key", "You see a green box 3 steps forward"]


@pytest.mark.parametrize(
    "door, word",
    [
        (Door("red", is_open=True), "open"),  # BabyAI-Text keeps the ungrammatical "a open"
        (Door("red", is_open=False), "closed"),
        (Door("red", is_open=False, is_locked=True), "locked"),
    ],
)
def test_door_states(door, word):
    assert describe(view({(3, 1): door}), None) == [f"You see a {word} red door 5 steps forward"]


def test_object_positions_ahead_on_row_and_diagonal():
    image = view(
        {
            (3, 5): Ball("blue"),  # straight ahead, adjacent: 1 step forward
            (1, 6): Key("purple"),  # agent's row, 2 columns left
            (6, 6): Box("grey"),  # agent's row, 3 columns right
            (2, 5): Ball("green"),  # diagonal, 1 left and 1 forward (singular both)
            (5, 0): Key("red"),  # diagonal, 2 right and 6 forward
        }
    )
    assert describe(image, None) == [
        "You see a purple key 2 steps left",
        "You see a green ball 1 step left and 1 step forward",
        "You see a blue ball 1 step forward",
        "You see a red key 2 steps right and 6 steps forward",
        "You see a grey box 3 steps right",
    ]


def test_order_is_column_by_column_then_far_row_first():
    # Insertion order scrambled on purpose; expected: x=0 (y=1, then y=4), x=2, x=6.
    image = view({(6, 0): Ball("red"), (0, 4): Box("blue"), (2, 2): Key("grey"), (0, 1): Ball("green")})
    assert describe(image, None) == [
        "You see a green ball 3 steps left and 5 steps forward",
        "You see a blue box 3 steps left and 2 steps forward",
        "You see a grey key 1 step left and 4 steps forward",
        "You see a red ball 3 steps right and 6 steps forward",
    ]


def test_goal_lava_floor_are_objects_unseen_is_not():
    # BabyAI-Text skips only unseen, empty and wall cells; goal, lava and floor are named.
    image = view({(0, 0): Goal(), (1, 0): Lava(), (2, 0): Floor("purple"), (3, 0): UNSEEN})
    assert describe(image, None) == [
        "You see a green goal 3 steps left and 6 steps forward",
        "You see a red lava 2 steps left and 6 steps forward",
        "You see a purple floor 1 step left and 6 steps forward",
    ]


def test_describe_reads_a_real_minigrid_observation():
    # A hand-placed grid in a real env checks the [x, y] orientation of minigrid's obs["image"].
    env = make_text_env(LEVEL, seed=0)
    env.reset()
    grid_env = env.unwrapped
    grid = Grid(8, 8)
    grid.wall_rect(0, 0, 8, 8)
    grid.set(5, 3, Ball("red"))
    grid_env.grid = grid
    grid_env.agent_pos, grid_env.agent_dir = (3, 5), 3  # facing up (-y), the room's top wall at y=0
    image = grid_env.gen_obs()["image"]
    assert describe(image, None) == [
        "You see a wall 5 steps forward",
        "You see a wall 3 steps left",
        "You see a red ball 2 steps right and 2 steps forward",
    ]


# --- instructions and ids ---------------------------------------------------------------------


def test_instruction_actions_follow_minigrid_action_order():
    assert instruction_actions(INSTRUCTIONS) == [0, 1, 2, 3, 4, 5]
    assert instruction_actions(["done", "go forward"]) == [6, 2]
    assert set(INSTRUCTIONS) < set(INSTRUCTION_ACTIONS)


def test_unknown_instruction_lists_valid_ones():
    with pytest.raises(ValueError, match=r"\['jump'\].*valid instructions: turn left, turn right"):
        instruction_actions(["go forward", "jump"])


def test_babyai_env_ids():
    ids = babyai_env_ids()
    assert LEVEL in ids and "BabyAI-BossLevel-v0" in ids
    assert all(i.startswith("BabyAI-") for i in ids) and ids == sorted(ids)


def test_unknown_env_id_names_closest():
    with pytest.raises(ValueError, match="closest: BabyAI-GoToRedBallNoDists-v0"):
        make_text_env("BabyAI-GoToRedBalNoDists-v0")


# --- make_text_env ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id",
    [LEVEL, "BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-OpenDoor-v0", "BabyAI-UnlockLocal-v0"],
)
def test_text_env_infos_match_describe(env_id):
    env = make_text_env(env_id, seed=1)
    obs, info = env.reset()
    assert set(obs) == {"image", "direction", "mission"}
    rng = np.random.default_rng(0)
    for _ in range(30):
        assert info["mission"] == obs["mission"] == env.unwrapped.mission
        assert info["descriptions"] == describe(obs["image"], env.unwrapped.carrying)
        obs, _, terminated, truncated, info = env.step(int(rng.integers(6)))
        if terminated or truncated:
            obs, info = env.reset()
    env.close()


def test_text_env_seed_seeds_first_reset_only():
    seeded, plain = make_text_env(LEVEL, seed=5), make_text_env(LEVEL)
    first, _ = seeded.reset()
    np.testing.assert_array_equal(first["image"], plain.reset(seed=5)[0]["image"])
    # Second reset continues the RNG seeded by the first, as gymnasium does.
    np.testing.assert_array_equal(seeded.reset()[0]["image"], plain.reset()[0]["image"])


# --- TextVecEnv -------------------------------------------------------------------------------


def test_vec_reset_shapes_and_seed_rule():
    vec = TextVecEnv(LEVEL, n_envs=3, seed=7)
    obs, infos = vec.reset()
    assert obs["image"].shape == (3, 7, 7, 3) and obs["image"].dtype == np.uint8
    assert obs["direction"].shape == (3,) and obs["direction"].dtype == np.int64
    assert len(infos) == 3
    for i in range(3):  # env i is first reset with seed 7 * 10_000 + i
        single_obs, single_info = make_text_env(LEVEL).reset(seed=70_000 + i)
        np.testing.assert_array_equal(obs["image"][i], single_obs["image"])
        assert obs["direction"][i] == single_obs["direction"]
        assert infos[i]["descriptions"] == single_info["descriptions"]
        assert infos[i]["mission"] == single_info["mission"]


def test_vec_same_seed_same_run_other_seed_differs():
    def run(seed):
        vec = TextVecEnv(LEVEL, n_envs=4, seed=seed)
        images = [vec.reset()[0]["image"]]
        for t in range(20):
            images.append(vec.step(np.full(4, t % 3))[0]["image"])
        return np.stack(images)

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_vec_timeout_auto_resets_with_episode_stats():
    # Turning left forever never succeeds: every episode is truncated at max_steps = 64.
    vec = TextVecEnv(LEVEL, n_envs=2, seed=0)
    vec.reset()
    turn_left = np.zeros(2, dtype=np.int64)
    for _ in range(63):
        _, rewards, dones, infos = vec.step(turn_left)
        assert not dones.any() and not any("episode" in info for info in infos)
    obs, rewards, dones, infos = vec.step(turn_left)
    assert dones.tolist() == [True, True] and rewards.tolist() == [0.0, 0.0]
    for i in range(2):
        assert infos[i]["episode"] == {"return": 0.0, "length": 64, "success": False, "level": LEVEL}
        # The returned obs is already the second episode's first obs of env i.
        single = make_text_env(LEVEL, seed=i)
        single.reset()
        second_obs, second_info = single.reset()
        np.testing.assert_array_equal(obs["image"][i], second_obs["image"])
        assert infos[i]["descriptions"] == second_info["descriptions"]
    assert vec.envs[0].unwrapped.step_count == 0


def test_vec_bot_success_return_and_reward_scale():
    # BabyAIBot reaches the red ball; minigrid pays 1 - 0.9 * steps / max_steps on success.
    scaled = TextVecEnv(LEVEL, n_envs=1, seed=3, reward_scale=20.0)
    scaled.reset()
    bot = BabyAIBot(scaled.envs[0].unwrapped)
    done, steps, action = False, 0, None
    while not done:
        action = bot.replan(action)
        _, rewards, dones, infos = scaled.step(np.array([int(action)]))  # INSTRUCTIONS follow action ids
        done, steps = bool(dones[0]), steps + 1
    expected = 1 - 0.9 * steps / 64
    assert 0 < steps < 64
    assert infos[0]["episode"]["length"] == steps
    assert infos[0]["episode"]["success"] is True
    assert infos[0]["episode"]["return"] == pytest.approx(expected, rel=1e-12)  # unscaled
    assert rewards.dtype == np.float32
    assert rewards[0] == np.float32(20.0) * np.float32(infos[0]["episode"]["return"])


def test_vec_get_set_state_resumes_bit_identically():
    vec = TextVecEnv(LEVEL, n_envs=3, seed=11)
    vec.reset()
    rng = np.random.default_rng(0)
    for _ in range(10):
        vec.step(rng.integers(6, size=3))
    state = vec.get_state()
    actions = rng.integers(6, size=(100, 3))  # long enough to cross episode ends

    def play(env):
        out = [env.step(a) for a in actions]
        return (
            np.stack([o["image"] for o, _, _, _ in out]),
            np.stack([r for _, r, _, _ in out]),
            np.stack([d for _, _, d, _ in out]),
            [infos for _, _, _, infos in out],
        )

    first = play(vec)
    assert first[2].any(), "the replay should include an auto-reset"
    vec.set_state(state)
    fresh = TextVecEnv(LEVEL, n_envs=3, seed=99)
    fresh.set_state(state)
    for replay in (play(vec), play(fresh)):
        for a, b in zip(first[:3], replay[:3]):
            np.testing.assert_array_equal(a, b)
        assert first[3] == replay[3]


def test_vec_set_state_rejects_other_configuration():
    state = TextVecEnv(LEVEL, n_envs=2, seed=0).get_state()
    with pytest.raises(ValueError, match="state is for 2 x"):
        TextVecEnv(LEVEL, n_envs=3, seed=0).set_state(state)


def test_vec_custom_instructions():
    vec = TextVecEnv(LEVEL, n_envs=1, seed=0, instructions=("go forward", "turn right"))
    assert vec.instructions == ("go forward", "turn right")
    vec.reset()
    direction = vec.envs[0].unwrapped.agent_dir
    assert vec.step(np.array([1]))[0]["direction"][0] == (direction + 1) % 4  # index 1 = turn right


def test_vec_errors():
    with pytest.raises(ValueError, match="n_envs must be at least 1, got 0"):
        TextVecEnv(LEVEL, n_envs=0, seed=0)
    with pytest.raises(ValueError, match="valid instructions"):
        TextVecEnv(LEVEL, n_envs=1, seed=0, instructions=("fly",))
    vec = TextVecEnv(LEVEL, n_envs=2, seed=0)
    vec.reset()
    with pytest.raises(ValueError, match=r"expected 2 instruction ids, got shape \(3,\)"):
        vec.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\), got \[ 0 -1\]"):
        vec.step(np.array([0, -1]))


MIX = "BabyAI-GoToLocal-v0+BabyAI-PickupLoc-v0"


def first_words(env_id, episodes, seed=3):
    """The first word of each of `episodes` missions of one env of a TextVecEnv."""
    envs = TextVecEnv(env_id, 1, seed)
    _, infos = envs.reset()
    words = [infos[0]["mission"].split()[0]]
    while len(words) < episodes:
        _, _, done, infos = envs.step(np.array([0]))  # turning left forever: every episode times out
        if done[0]:
            words.append(infos[0]["mission"].split()[0])
    return words


def test_a_mix_draws_each_level_per_episode_reproducibly():
    words = first_words(MIX, 12)
    assert set(words) == {"go", "pick"}  # GoToLocal's missions say "go to", PickupLoc's "pick up"
    assert first_words(MIX, 12) == words  # the same seed draws the same levels and episodes
    assert first_words(MIX, 12, seed=4) != words


def test_each_episode_names_the_level_it_was_drawn_from():
    envs = TextVecEnv(MIX, 1, 3)
    _, infos = envs.reset()
    verb, pairs = infos[0]["mission"].split()[0], []
    while len(pairs) < 8:
        _, _, done, infos = envs.step(np.array([0]))
        if done[0]:
            pairs.append((verb, infos[0]["episode"]["level"]))
            verb = infos[0]["mission"].split()[0]
    assert {level for _, level in pairs} == set(MIX.split("+"))
    assert all(level == {"go": "BabyAI-GoToLocal-v0", "pick": "BabyAI-PickupLoc-v0"}[verb] for verb, level in pairs)


def test_a_mix_resumes_bit_exactly():
    envs = TextVecEnv(MIX, 2, 5)
    envs.reset()
    for _ in range(70):  # past the first episodes: each env has drawn a second level
        envs.step(np.array([2, 0]))
    state = envs.get_state()
    after = [envs.step(np.array([a, 1])) for a in range(3)]
    envs.set_state(state)
    again = [envs.step(np.array([a, 1])) for a in range(3)]
    for (obs, rewards, dones, infos), (obs2, rewards2, dones2, infos2) in zip(after, again):
        np.testing.assert_array_equal(obs["image"], obs2["image"])
        assert infos == infos2 and (rewards == rewards2).all() and (dones == dones2).all()


def test_a_minigrid_level_that_is_not_babyai_is_refused():
    # MiniGrid-Empty's mission is outside BabyAI's: a run there trained to 0.0 without a word
    with pytest.raises(ValueError, match="env_id 'MiniGrid-Empty-5x5-v0' is not a BabyAI level"):
        make_text_env("MiniGrid-Empty-5x5-v0")


def test_an_unknown_level_in_a_mix_is_named():
    with pytest.raises(ValueError, match="Unknown env_id 'BabyAI-GoToLocl-v0'; closest: BabyAI-GoToLocal-v0"):
        make_text_env("BabyAI-GoToRedBall-v0+BabyAI-GoToLocl-v0")


def test_long_missions_are_read_whole_and_too_long_ones_refused():
    from bidir.student import MISSION_WORDS, mission_tokens
    boss = ("put the red key next to a yellow ball and pick up the green box after you open a door and open "
            "the grey door on your left")
    assert (mission_tokens([boss])[0] > 0).sum() == len(boss.split())
    with pytest.raises(ValueError, match=f"longer than the student reads \\({MISSION_WORDS}\\)"):
        mission_tokens([" ".join(["go"] * (MISSION_WORDS + 1))])
