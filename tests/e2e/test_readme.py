"""The README says what the code does: its reference table and commands match the package."""

import json
import re

from paths import REPO_ROOT

from axolotl_maskthought.config import config_reference_markdown

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
CONTRIBUTING = (REPO_ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
CI = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _ci_runs(command: str) -> bool:
    """A line of .ci/run is ``command`` verbatim, alone or followed by ``||``/``&&`` handling."""
    line = re.compile(rf"\s*{re.escape(command)}\s*(?:(?:\|\||&&).*)?")
    return any(line.fullmatch(text) for text in CI.splitlines())


def _section(title: str, text: str = README, name: str = "README") -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"{name} has no section `## {title}`"
    return match.group(1)


def test_config_reference_matches_the_models():
    assert config_reference_markdown().strip() in README


def test_first_lines_are_the_install_and_test_commands():
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert "pip install" in block[0] and block[0].endswith("axolotl-maskthought quickstart")
    assert _ci_runs(block[1]), "CI must run the README's test command verbatim"


def test_ci_installs_and_tests_every_stack_as_the_readme_says():
    section = _section("Install: two supported stacks", CONTRIBUTING, "CONTRIBUTING.md")
    lines = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    installs, tests = lines[0::2], lines[1::2]
    rows = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(installs) == len(tests) == len(rows) >= 2, "one install line and one test line per stack"
    for install, test, row in zip(installs, tests, rows):
        venv = re.match(r"python3\.\d+ -m venv (\S+) && (\S+)/bin/pip install ", install)
        assert venv and venv.group(1) == venv.group(2), install
        assert test == f"{venv.group(1)}/bin/python -m pytest tests -q", test
        axolotl = re.search(r"axolotl==(\S+)", install).group(1)
        assert f" {axolotl} " in row, f"stack row {row!r} does not name axolotl {axolotl}"
        assert _ci_runs(install), f"CI does not install with the README's line: {install}"
        assert _ci_runs(test), f"CI does not run the README's test line: {test}"


def test_documented_log_keys_are_the_ones_the_trainer_writes():
    package = REPO_ROOT / "axolotl_maskthought"
    # The trainer code: the axolotl adapter, and the framework-neutral engine where there is one.
    sources = "".join(
        path.read_text(encoding="utf-8")
        for folder in ("adapters", "engine")
        for path in (package / folder).rglob("*.py")
    )
    keys = re.findall(r"`((?:masked_thought|cot_removal)/[a-z_]+)`", README)
    # the README documents both blocks' keys: a changed pattern or README must not pass with none checked
    for block in ("masked_thought", "cot_removal"):
        assert sum(key.startswith(f"{block}/") for key in keys) >= 1, f"README documents no `{block}/` log key"
    for key in keys:
        assert f'"{key}"' in sources, key


def test_transformers_example_runs(shared_data, tmp_path, monkeypatch):
    """The README's plain-transformers example, on a tiny local model, 2 steps, 16 rows."""
    from axolotl_maskthought.data.files import read_jsonl
    from axolotl_maskthought.toy.tiny import build_tiny

    code = re.search(r"## Without axolotl.*?```python\n(.*?)```", README, re.S).group(1)
    rows = read_jsonl(shared_data / "gsm8k" / "train.jsonl", limit=16)
    model = build_tiny(
        tmp_path / "model", [r["question"] + r["answer"] for r in rows], vocab_size=300, hidden=32, layers=1, heads=2
    )
    (tmp_path / "gsm8k_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    replacements = {
        '"Qwen/Qwen2.5-0.5B"': repr(str(model)),
        "num_train_epochs=3": "max_steps=2, use_cpu=True, report_to=[], logging_steps=1",
    }
    for old, new in replacements.items():
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    # 4 micro-batches an epoch and Δ 8: the official schedule removes one more token every micro-batch
    assert trainer.state.global_step == 2 and trainer.applied_counts == {0: 1, 1: 2}
    assert any("masked_thought/masked_fraction" in entry for entry in trainer.state.log_history)
