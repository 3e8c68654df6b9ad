"""The README says what the code does: its reference table and commands match the package."""

import re

from axolotl_maskthought.args import config_reference_markdown
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_config_reference_matches_the_models():
    assert config_reference_markdown().strip() in README


def test_first_lines_are_the_install_and_test_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert "pip install" in block[0] and block[0].endswith("axolotl-maskthought quickstart")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert block[1] in ci.splitlines(), "CI must run the README's test command verbatim"


def test_documented_log_keys_are_the_ones_the_trainer_writes():
    package = REPO_ROOT / "axolotl_maskthought"
    # The trainer code: the axolotl adapter, and the framework-neutral engine where there is one.
    sources = "".join(path.read_text(encoding="utf-8") for folder in ("adapters", "engine")
                      for path in (package / folder).rglob("*.py"))
    for key in re.findall(r"`((?:masked_thought|cot_removal)/[a-z_]+)`", README):
        assert f'"{key}"' in sources, key
