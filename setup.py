"""axolotl-maskthought: Masked Thought and Stepwise Internalization for axolotl."""

from setuptools import find_packages, setup

OPTIMIZER_PACKAGES = ["galore-torch", "apollo-torch", "lomo-optim", "grokadamw", "torch-optimi", "came-pytorch", "scao"]

setup(
    name="axolotl-maskthought",
    version="0.1.0",
    description=(
        "Masked Thought (MFT) and Stepwise Internalization (ICoT-SI) "
        "chain-of-thought training as an axolotl plugin"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["axolotl_maskthought", "axolotl_maskthought.*"]),
    install_requires=[
        # What CI tests: 0.19 (Python 3.11) and 0.21 (Python >= 3.12). 0.20 was never run
        # with the package, so it is left out; README "Supported stacks".
        "axolotl>=0.19.0,!=0.20.*,<0.22",
        "torch>=2.6",
        "pydantic>=2",
        "pyyaml",
        "matplotlib",  # plots are part of the product: `schedule --plot`, the quickstart
    ],
    extras_require={
        # openai-whisper ships GPT-2's BPE ranks (whisper/assets/gpt2.tiktoken): the tests
        # check the ICoT layout on GPT-2's real tokenizer, offline.
        # the optimizers axolotl offers whose packages it does not install: the tests check
        # that a CoT-removal reset returns each to a freshly built one
        "optimizers": OPTIMIZER_PACKAGES,
        "tests": ["pytest>=8", "matplotlib", "openai-whisper", *OPTIMIZER_PACKAGES],
        "dev": ["pytest>=8", "matplotlib", "openai-whisper", *OPTIMIZER_PACKAGES],
        "plot": ["matplotlib"],
        "deepspeed": ["deepspeed>=0.17"],
        "flash-attn": ["flash-attn>=2.6"],
        "vllm": ["vllm"],
    },
    entry_points={
        "console_scripts": ["axolotl-maskthought=axolotl_maskthought.cli:main"],
        "axolotl.plugins": ["maskthought=axolotl_maskthought:MaskThoughtPlugin"],
    },
)
