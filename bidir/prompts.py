"""The teacher's prompts: what the LLM reads about an environment, in one of three formats
(`rl_script_args.prompt_format`), and the per-environment text history they are written from."""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

PROMPT_FORMATS = ("bidir", "glam", "chat")
"""bidir: goal, observations, `Action:` (the project's own); glam: GLAM's BabyAI-Text prompt, which
lists the possible actions first; chat: GLAM's content as a question in the model's chat template."""

PromptBuilder = Callable[[str, list, list], str]
"""(mission, observations, actions) -> prompt; see `build_prompt` for the arguments."""


def build_prompt(mission: str, observations: list[list[str]], actions: list[str]) -> str:
    """The teacher's prompt: goal, the recent observations (oldest first) with the instruction
    given after each past one, then `Action:`.

    `observations` holds lists of BabyAI-Text sentences; `actions` the instructions that followed
    all but the last observation."""
    lines = [f"Goal of the agent: {mission}"]
    for step, sentences in enumerate(observations):
        lines.append(f"Observation {step}: " + ", ".join(sentences))
        if step < len(actions):
            lines.append(f"Action {step}: {actions[step]}")
    lines.append("Action:")
    return "\n".join(lines)


def _glam_lines(mission: str, observations: list[list[str]], actions: list[str],
                instructions: Sequence[str]) -> list[str]:
    """GLAM's content up to the last observation: the possible actions, the goal, then each
    observation with the action taken after it."""
    lines = ["Possible actions of the agent: " + ", ".join(instructions), f"Goal of the agent: {mission}"]
    for step, sentences in enumerate(observations):
        lines.append(f"Observation {step}: " + ", ".join(sentences))
        if step < len(actions):
            lines.append(f"Action {step}: {actions[step]}")
    return lines


def build_glam_prompt(mission: str, observations: list[list[str]], actions: list[str],
                      instructions: Sequence[str]) -> str:
    """GLAM's BabyAI-Text prompt (Carta et al. 2023): the possible actions, the goal, each recent
    observation followed by `Action N:` and the action taken, the last one left open. GLAM
    separates lines with " \\n " and ends on a space; plain newlines and no trailing space here,
    so that a BPE tokenizer does not end the prompt on a lone space token."""
    lines = _glam_lines(mission, observations, actions, instructions)
    return "\n".join(lines + [f"Action {len(observations) - 1}:"])


def chat_question(mission: str, observations: list[list[str]], actions: list[str],
                  instructions: Sequence[str]) -> str:
    """The user's turn of the chat format: GLAM's content, then the question and the answers allowed."""
    lines = _glam_lines(mission, observations, actions, instructions)
    return "\n".join(lines + [f"What should the agent do next? Answer with one of: {', '.join(instructions)}."])


def prompt_builder(prompt_format: str, instructions: Sequence[str], tokenizer=None) -> PromptBuilder:
    """The builder of `prompt_format`; `chat` needs the teacher's tokenizer (its chat template)."""
    instructions = list(instructions)
    if prompt_format == "bidir":
        return build_prompt
    if prompt_format == "glam":
        return lambda mission, observations, actions: build_glam_prompt(mission, observations, actions,
                                                                         instructions)
    if prompt_format == "chat":
        if tokenizer is None or not tokenizer.chat_template:
            raise ValueError("prompt_format chat needs a model whose tokenizer has a chat template")
        return lambda mission, observations, actions: tokenizer.apply_chat_template(
            [{"role": "user", "content": chat_question(mission, observations, actions, instructions)}],
            tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt format {prompt_format!r}; one of {', '.join(PROMPT_FORMATS)}")


def configured_prompt_builder(config) -> PromptBuilder:
    """The builder a run's configuration asks for (`rl_script_args.prompt_format`); the chat
    format reads the tokenizer of the teacher's model (`model_path`, resolved)."""
    args = config.rl_script_args
    tokenizer = None
    if args.prompt_format == "chat":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.lamorel_args.llm_configs.main_llm.model_path)
    return prompt_builder(args.prompt_format, list(args.instructions), tokenizer)


class PromptHistory:
    """Per environment: the mission, the last `length` observations (BabyAI-Text sentences) and the
    instructions carried out between them; `build` writes them as a prompt."""

    def __init__(self, n_envs: int, length: int, build: PromptBuilder = build_prompt):
        self.length = length
        self.build = build
        self.missions = [""] * n_envs
        self.observations = [deque(maxlen=length) for _ in range(n_envs)]
        self.actions = [deque(maxlen=max(length - 1, 0)) for _ in range(n_envs)]
    def start(self, env: int, info: dict):
        """A new episode begins in `env` with this reset info."""
        self.missions[env] = info["mission"]
        self.observations[env].clear()
        self.actions[env].clear()
        self.observations[env].append(info["descriptions"])

    def advance(self, env: int, action: str, info: dict):
        """`env` carried out `action` and now sees `info`'s descriptions."""
        if self.length > 1:
            self.actions[env].append(action)
        self.observations[env].append(info["descriptions"])

    def prompt(self, env: int) -> str:
        """The teacher's prompt for `env` now."""
        return self.build(self.missions[env], list(self.observations[env]), list(self.actions[env]))

    def state(self) -> dict:
        """Plain lists (loadable with torch.load(weights_only=True))."""
        return {"missions": list(self.missions), "observations": [list(o) for o in self.observations],
                "actions": [list(a) for a in self.actions]}

    def load(self, state: dict):
        """Restores what `state()` returned."""
        self.missions = list(state["missions"])
        for queue, saved in zip(self.observations, state["observations"]):
            queue.clear()
            queue.extend(saved)
        for queue, saved in zip(self.actions, state["actions"]):
            queue.clear()
            queue.extend(saved)
