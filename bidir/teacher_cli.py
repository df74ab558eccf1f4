"""`bidir-teacher`: build a teacher model (`build`) or clone the BabyAI bot into one (`pretrain`).

  bidir-teacher build --output DIR [--shape NAME] [--seed N]    a randomly initialised model
  bidir-teacher build --list                                     the shapes, with parameter counts
  bidir-teacher pretrain --model NAME --output DIR [--lora]      behavioural cloning of the bot
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bidir.checks import UsageError, positive_int
from bidir.envs import babyai_env_ids
from bidir.lora import LORA_DEFAULTS
from bidir.models import OFFLINE_TEACHER, SHAPES, build_model, shape_parameters
from bidir.pretrain import PRETRAIN_LEVELS, pretrain


def _cmd_build(args) -> None:
    if args.list:
        for shape, (model_type, _) in SHAPES.items():
            print(f"{shape:14s} {model_type:8s} {shape_parameters(shape) / 1e6:8.2f}M parameters")
        return
    if not args.output:
        raise UsageError("build: --output is required (or --list)")
    print(build_model(args.output, args.shape, seed=args.seed))


def _add_build(subparsers) -> None:
    p = subparsers.add_parser("build", help="build a randomly initialised teacher of a given shape into a directory")
    p.add_argument("--output", help="directory to write model and tokenizer into")
    p.add_argument("--shape", default=OFFLINE_TEACHER, choices=list(SHAPES),
                   help=f"architecture (default {OFFLINE_TEACHER}, the offline teacher)")
    p.add_argument("--list", action="store_true", help="list the shapes with their parameter counts")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    p.set_defaults(func=_cmd_build)


def _add_pretrain(subparsers):
    parser = subparsers.add_parser("pretrain", help="behavioural cloning of a teacher on the BabyAI bot")
    parser.add_argument("--model", default="tiny-t5", help="teacher to start from: hub id, local model directory "
                        "or a built-in name (default: tiny-t5, untrained)")
    parser.add_argument("--model-type", choices=["seq2seq", "causal"],
                        help="seq2seq (T5 family) or causal (decoder-only) model (default: read from the model's config)")
    parser.add_argument("--output", type=Path, required=True, help="model directory to write")
    parser.add_argument("--levels", nargs="+", default=list(PRETRAIN_LEVELS),
                        help="BabyAI levels the bot demonstrates (default: %(default)s)")
    parser.add_argument("--episodes-per-level", type=positive_int, default=100,
                        help="bot episodes per level (default: %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=20, help="passes over the demonstrations (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="prompts per optimizer step (default: %(default)s)")
    parser.add_argument("--prompt-history", type=positive_int, default=1,
                        help="past observations in each prompt; match rl_script_args.prompt_history "
                        "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of demonstrations and training (default: %(default)s)")
    parser.add_argument("--device", default="cpu",
                        help="torch device of the teacher, e.g. cpu or cuda:0 (default: %(default)s)")
    parser.add_argument("--lora", action="store_true",
                        help="train and write a LoRA adapter (use it as lora.adapter_path) instead of the whole model")
    parser.add_argument("--lora-r", type=positive_int, default=LORA_DEFAULTS["r"], help="adapter rank (default: %(default)s)")
    parser.add_argument("--lora-alpha", type=float, default=LORA_DEFAULTS["alpha"],
                        help="adapter scaling alpha (default: %(default)s)")
    parser.add_argument("--lora-target-modules", nargs="+", help="module names (default: peft's for the model family)")
    parser.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(a) -> None:
    unknown = [level for level in a.levels if level not in babyai_env_ids()]
    if unknown:
        raise UsageError(f"--levels: unknown BabyAI level {unknown[0]!r}; known levels look like "
                         f"BabyAI-GoToLocal-v0 (see bidir.envs.babyai_env_ids())")
    print(pretrain(
        a.model, a.output, a.levels, a.episodes_per_level, a.epochs, a.lr, a.batch_size, a.seed,
        a.prompt_history, a.model_type, a.device,
        {"r": a.lora_r, "alpha": a.lora_alpha, "target_modules": a.lora_target_modules} if a.lora else None))


def main(argv=None) -> None:
    """`bidir-teacher` command line; bad input exits with 2 and one line."""
    parser = argparse.ArgumentParser(prog="bidir-teacher", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_build(subparsers)
    _add_pretrain(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    try:
        args.func(args)
    except UsageError as error:
        print(f"bidir-teacher: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
