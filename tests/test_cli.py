"""The ``racnn`` command line as a whole: help without torch, one set of flags, --print-config, --quiet/--verbose,
the lazy package root, and the run's time-left arithmetic."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import racnn
from racnn import precision
from racnn.cli import COMMANDS, DATA_COMMANDS, get_args_parser, main
from racnn.cli import export as export_cli
from racnn.cli import flags as cli_flags
from racnn.cli import verify as verify_cli
from racnn.cli.flags import configure_logging
from racnn.config import RECIPES, PhaseConfig
from racnn.training.run_files import eta_text, format_duration
from racnn.training.schedule import run_position

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "torchvision", "timm", "PIL", "matplotlib", "numpy")
EVERY_COMMAND = [[], *([name] for name in COMMANDS), ["data"], *(["data", name] for name in DATA_COMMANDS)]


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: " ".join(c) or "racnn")
def test_help_loads_no_deep_learning_library(command):
    code = f"""
import sys
from racnn.cli import main
try:
    main({command!r} + ["--help"])
except SystemExit as e:
    assert e.code == 0, e.code
print(sorted({{m.split(".")[0] for m in sys.modules}} & {set(HEAVY)!r}))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "usage: racnn" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "[]"  # none of torch, numpy, PIL, ... was imported


def test_package_root_is_lazy_and_complete():
    proc = _python(
        "import logging, sys, racnn, racnn.cli\n"
        "print('torch' in sys.modules, racnn.__version__)\n"
        "print(logging.root.handlers, logging.getLogger('racnn').handlers)\n"  # importing configures no logging
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"False {racnn.__version__}", "[] []"]
    from racnn import RACNN, load  # on first use, from their modules

    assert RACNN.__module__ == "racnn.modeling.model" and load.__module__ == "racnn.inference.api"
    assert racnn.__all__ == sorted(racnn._EXPORTS)
    assert all(getattr(racnn, name) is not None for name in racnn.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        racnn.nope  # noqa: B018


def test_the_library_leaves_logging_to_its_user():
    for path in SRC.rglob("*.py"):
        assert "basicConfig" not in path.read_text(), path  # only racnn.cli.flags sets up a handler, when asked


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--config", "x", "--device", "cpu", "-b", "4", "-j", "0"], ("cpu", 4, 0)),
        (["eval", "--checkpoint", "x", "--device", "cuda:1", "--batch-size", "8", "--workers", "3"], ("cuda:1", 8, 3)),
        (["eval", "--checkpoint", "x"], (None, None, None)),  # the checkpoint's settings
        (["predict", "--checkpoint", "x", "a.jpg", "--device", "cpu", "-b", "2", "-j", "2"], ("cpu", 2, 2)),
        (["predict", "--checkpoint", "x", "a.jpg"], ("auto", 16, 0)),
        (["demo", "--device", "mps", "-b", "16", "-j", "1"], ("mps", 16, 1)),
        (["app", "--checkpoint", "x", "--device", "cpu", "-b", "4"], ("cpu", 4, None)),
        (["export", "--checkpoint", "x", "--format", "onnx", "--out", "y", "-b", "3"], (None, 3, None)),
        (["export", "--checkpoint", "x", "--format", "onnx", "--out", "y", "--batch", "5"], (None, 5, None)),
        (["data", "verify", "--dataset", "synthetic", "-j", "7"], (None, None, 7)),
    ],
)
def test_shared_flags_mean_the_same_everywhere(argv, expected):
    args = get_args_parser().parse_args(argv)
    assert tuple(getattr(args, name, None) for name in ("device", "batch_size", "workers")) == expected


@pytest.mark.parametrize("bad", [["-b", "0"], ["-j", "-1"], ["-b", "two"]])
def test_bad_counts_are_refused_when_parsed(bad, capsys):
    with pytest.raises(SystemExit) as info:
        get_args_parser().parse_args(["predict", "--checkpoint", "x", "a.jpg", *bad])
    assert info.value.code == 2 and "argument -" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_are_accepted_before_or_after_the_command(where):
    for flag, verbosity in (("--quiet", "quiet"), ("-v", "verbose")):
        argv = [flag, "eval", "--checkpoint", "x"] if where == "before" else ["eval", "--checkpoint", "x", flag]
        assert get_args_parser().parse_args(argv).verbosity == verbosity
    assert get_args_parser().parse_args(["eval", "--checkpoint", "x"]).verbosity is None
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["eval", "--checkpoint", "x", "-q", "-v"])


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(tmp_path, capsys):
    argv = ["train", "--config", "synthetic_tiny", "--output-dir", str(tmp_path / "runs"), "--device", "cpu"]
    argv += ["-b", "4", "-j", "0", "--set", "train.rounds=3", "--set", "data.num_workers=1", "--print-config"]
    assert main(["--quiet", *argv]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["device"] == "cpu" and cfg["data"]["batch_size"] == 4 and cfg["train"]["rounds"] == 3
    assert cfg["data"]["num_workers"] == 1  # an explicit --set wins over -j
    assert cfg["train"]["progress"] is False  # --quiet: no progress bars
    assert cfg["train"]["output_dir"] == str(tmp_path / "runs") and cfg["model"]["backbone"] == "tiny"
    assert not (tmp_path / "runs").exists()
    recipe = yaml.safe_load((RECIPES / "synthetic_tiny.yaml").read_text())
    assert main(["train", "--config", "synthetic_tiny", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["rounds"] == recipe["train"]["rounds"]


def test_print_config_refuses_a_bad_key_in_one_line(capsys):
    assert main(["train", "--config", "synthetic_tiny", "--set", "train.round=2", "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("racnn train: error:") and "train.rounds" in captured.err


def test_cli_logging_levels(capsys):
    log = logging.getLogger("racnn.training.run")
    try:
        for verbosity, shown in ((None, "info warning"), ("quiet", "warning"), ("verbose", "debug info warning")):
            configure_logging(verbosity)
            log.debug("debug")
            log.info("info")
            log.warning("warning")
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err.split() == shown.split()  # logs go to stderr only
        configure_logging(None)
        ours = [h for h in logging.getLogger("racnn").handlers if type(h).__name__ == "_StderrHandler"]
        assert len(ours) == 1  # a second main() in one process replaces the first one's handler
    finally:
        logger = logging.getLogger("racnn")
        logger.handlers = [h for h in logger.handlers if type(h).__name__ != "_StderrHandler"]
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_help_texts_that_name_torch_side_values_stay_true():
    from racnn.data import dataset_names
    from racnn.inference.export import DEFAULT_OPSET
    from racnn.inference.parity import ATOL, NOISE_FACTOR, RTOL

    assert export_cli.OPSET_HELP == DEFAULT_OPSET
    assert (export_cli.RTOL, export_cli.ATOL, export_cli.NOISE_FACTOR) == (RTOL, ATOL, NOISE_FACTOR)
    assert cli_flags.AMP_CHOICES == precision.AMP_CHOICES
    assert list(verify_cli.BUILT_IN) == dataset_names()


# -- the run's time left -------------------------------------------------------------------------------------


def test_run_position_counts_epochs_across_phases():
    schedule = [("warmup", PhaseConfig(epochs=2), 0), ("cls", PhaseConfig(epochs=3), 1), ("fusion", PhaseConfig(), 2)]
    total = 2 + 3 + PhaseConfig().epochs
    assert run_position(schedule, 0, 1) == (1, total)
    assert run_position(schedule, 1, 3) == (5, total)
    assert run_position(schedule, 2, PhaseConfig().epochs) == (total, total)


def test_eta_text_reads_as_a_rounded_estimate():
    assert [format_duration(s) for s in (4.4, 89, 240, 5399, 9000)] == ["~4 s", "~89 s", "~4 min", "~90 min", "~2.5 h"]
    assert eta_text(3, 12, 240.0) == "epoch 3/12 of the run, ~4 min left"
    assert eta_text(3, 12, None) == "epoch 3/12 of the run"
    assert eta_text(12, 12, 0.0) == "epoch 12/12 of the run, testing next"
    assert eta_text(12, 12, 150.0) == "epoch 12/12 of the run, testing next, ~2 min left"
