"""The README cannot rot: its cheap commands run (tiny budgets), and every help shows an example."""

import re
import shlex
from pathlib import Path

from kava.cli import build_parser, main

ROOT = Path(__file__).parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("kava ")]


def test_readme_has_the_quick_start_commands():
    cmds = _readme_commands()
    assert any(c.startswith("kava train --config tiny ") for c in cmds)
    assert any(c.startswith("kava evaluate") for c in cmds)
    assert any(c.startswith("kava infer") for c in cmds)


def test_readme_tiny_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    budget = {"train": ["train.max_steps=2", "data.max_train_examples=16"], "evaluate": [], "infer": [], "export": []}
    ran = []
    for cmd in _readme_commands():
        if "outputs/tiny" not in cmd:
            continue
        argv = shlex.split(cmd.replace("outputs/tiny", str(tmp_path / "tiny")))[1:]
        if argv[0] == "evaluate":
            argv = [a if a != "50" else "2" for a in argv] + ["--no-progress"]
        if argv[0] == "train":
            argv += ["--no-progress"]
        argv += budget[argv[0]]
        assert main(argv) == 0, cmd
        ran.append(argv[0])
    assert ran == ["train", "evaluate", "infer", "export"]
    out = capsys.readouterr().out
    assert "forward passes" in out


def _subparsers(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_subcommand_help_shows_an_example():
    parser = build_parser()
    assert "example" in parser.format_help()
    names = []
    for name, sub in _subparsers(parser):
        names.append(name)
        assert "example" in sub.format_help(), f"kava {name} --help has no example"
    for required in ("train", "evaluate", "infer", "demo", "bench"):
        assert required in names


def test_the_readme_lists_every_doc():
    text = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name})" not in text]
    assert not missing, f"add to the README's documentation list: {missing}"


def test_the_demo_help_gives_the_readmes_time():
    """`kava demo --help` quotes the time the README measured (it said 15 min, the README 9 min 28 s)."""
    measured = re.search(r"\*\*(\d+ min \d+ s)\*\* for the whole `make demo`", (ROOT / "README.md").read_text())
    parser = build_parser()
    demo = dict(_subparsers(parser))["demo"]
    assert measured and measured.group(1) in " ".join(demo.format_help().split())
