"""Lazy package root and CLI: `import trl_omni`, `trl-omni --help`, `trl-omni COMMAND --help` and a misspelled flag
import neither torch nor transformers nor TRL; every public name still resolves."""

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trl_omni
from trl_omni.cli import main as cli_main
from trl_omni.cli.main import BUILTIN_COMMANDS
from trl_omni.cli.options import command_options, environment_key


ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "trl", "accelerate", "datasets", "peft")
REPORT = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def fresh_python(code: str) -> tuple[list[str], str]:
    """Runs `code` in a new interpreter; returns the heavy modules it imported and its stdout + stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code + "\n" + REPORT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    *output, last = result.stdout.strip().splitlines()
    return json.loads(last), "\n".join(output) + result.stderr


def cli(*args: str) -> str:
    return (
        f"import sys\nfrom trl_omni.cli.main import main\ntry:\n    code = main({list(args)!r})\nexcept SystemExit as e:\n"
        "    code = e.code\nprint('exit', code)\n"
    )


@pytest.mark.parametrize("package", ["trl_omni", "trl_omni.models", "trl_omni.models.vq_decoder"])
def test_import_trl_omni_imports_no_heavy_module(package):
    imported, _ = fresh_python(f"import {package}")
    assert imported == []


def test_every_public_name_resolves():
    assert len(trl_omni.__all__) == len(set(trl_omni.__all__)) > 40
    for name in trl_omni.__all__:
        assert getattr(trl_omni, name) is not None, name
    assert set(trl_omni.__all__) <= set(dir(trl_omni))
    with pytest.raises(AttributeError, match="no attribute 'PeSFTTrainr'"):
        trl_omni.PeSFTTrainr  # noqa: B018
    # The same objects as the submodules'.
    from trl_omni.trainers import PeSFTTrainer

    assert trl_omni.PeSFTTrainer is PeSFTTrainer


@pytest.mark.parametrize("package", ["trl_omni", "trl_omni.models", "trl_omni.models.vq_decoder"])
def test_type_checking_imports_match_the_lazy_exports(package):
    """The `if TYPE_CHECKING:` block (what IDEs and type checkers read) names exactly the lazily exported names."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text())
    block = next(
        node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    imported = {node.module: sorted(alias.name for alias in node.names) for node in block.body}
    exports = {submodule: sorted(names) for submodule, names in module._EXPORTS.items()}
    assert imported == exports


def test_the_root_exports_the_whole_image_token_core():
    import trl_omni.models

    assert set(trl_omni.models.__all__) <= set(trl_omni.__all__)
    for name in trl_omni.models.__all__:
        assert getattr(trl_omni, name) is getattr(trl_omni.models, name), name


def test_cli_help_and_a_misspelled_flag_import_nothing_heavy(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_OMNI_CACHE", str(tmp_path / "cache"))
    sft = next(command for command in BUILTIN_COMMANDS if command.name == "sft")
    # The first use builds the options from the real parser (this process already imported TRL) and caches them.
    options = command_options(sft)
    cached = list((tmp_path / "cache" / "cli").glob("*.json"))
    assert [path.stem for path in cached] == [environment_key()]
    assert options.classes == ["OmniScriptArguments", "PeSFTConfig", "ModelConfig"]
    assert {"--perception_loss_weight", "--use_peft", "--load_in_4bit", "--dataset_format"} <= set(options.options)
    assert "--num_processes" in options.launch_options and "--accelerate_config" in options.launch_options

    imported, out = fresh_python(cli("--help"))
    assert imported == [] and "exit 0" in out and "  sft " in out

    imported, out = fresh_python(cli("sft", "--help"))
    assert imported == [] and "exit 0" in out
    assert out.startswith("usage: trl-omni sft") and "--perception_loss_weight" in out and "--load_in_4bit" in out

    config = tmp_path / "pesft.yaml"
    config.write_text("learning_rate: 1.0e-5\nnum_processes: 2\nlora_rr: 8\nenv:\n  OMP_NUM_THREADS: 1\n")
    imported, out = fresh_python(cli("sft", "--config", str(config), "--lerning_rate", "1", "--learning_rate=2"))
    assert imported == [] and "exit 2" in out
    assert f"key 'lora_rr' of {config} (did you mean --lora_r?)" in out
    assert "'--lerning_rate' (did you mean --learning_rate?)" in out
    assert "num_processes" not in out and "'--learning_rate'" not in out  # launch options and real flags pass

    imported, out = fresh_python(cli("sft", "--config", str(tmp_path / "missing.yaml")))
    assert imported == [] and "exit 2" in out and "cannot be read" in out


def test_cached_help_is_the_parsers_help(tmp_path, monkeypatch, capsys):
    """Served from the cache, `--help` prints what the command's own parser prints, for every built-in command."""
    import importlib

    monkeypatch.setenv("TRL_OMNI_CACHE", str(tmp_path / "cache"))
    for command in BUILTIN_COMMANDS:
        parser = importlib.import_module(command.module).make_parser(prog=f"trl-omni {command.name}")
        assert command_options(command).help == parser.format_help(), command.name
        with pytest.raises(SystemExit) as exit_info:
            cli_main([command.name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == parser.format_help()


def test_dotted_paths_resolve_or_name_the_problem():
    import os.path

    from trl_omni.utils.imports import resolve_dotted_path

    assert resolve_dotted_path("os.path:join") is os.path.join
    assert resolve_dotted_path("os.path.join") is os.path.join
    assert resolve_dotted_path("trl_omni.cli.options:CommandOptions.is_known_flag") is not None
    with pytest.raises(ValueError, match=r"quality_fn='nodots' is not a dotted path"):
        resolve_dotted_path("nodots", argument="quality_fn")
    with pytest.raises(ValueError, match=r"module 'no_such_module_xyz' could not be imported"):
        resolve_dotted_path("no_such_module_xyz:fn")
    with pytest.raises(ValueError, match=r"'os.path' has no attribute 'joinx'"):
        resolve_dotted_path("os.path:joinx")
    with pytest.raises(ValueError, match="names a str, which is not callable"):
        resolve_dotted_path("os:sep", require_callable=True)
