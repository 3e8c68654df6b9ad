"""axolotl-maskthought: Masked Thought and Stepwise Internalization for axolotl."""

from setuptools import find_packages, setup

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
        # 0.19 is what is tested; 0.20/0.21 were read for the hooks and imports we use.
        "axolotl>=0.19.0,<0.22",
        "torch>=2.6",
        "pydantic>=2",
        "pyyaml",
        "matplotlib",  # plots are part of the product: `schedule --plot`, the quickstart
    ],
    extras_require={
        # openai-whisper ships GPT-2's BPE ranks (whisper/assets/gpt2.tiktoken): the tests
        # check the ICoT layout on GPT-2's real tokenizer, offline.
        "tests": ["pytest>=8", "matplotlib", "openai-whisper"],
        "dev": ["pytest>=8", "matplotlib", "openai-whisper"],
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
