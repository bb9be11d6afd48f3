"""Train RA-CNN from a YAML config, or resume a run.

The schedule runs warm-up, APN pre-training, `rounds` x (classification phase, APN phase) and the fusion phase
(docs/TRAINING.md). The run folder (train.output_dir/train.name, with -1, -2, ... if it exists) gets
config.yaml, run.json (command, versions, git commit, machine, split sizes) and train.log at the start;
metrics.csv, curves.png, attention_round*.png and last.pt (to resume) as it goes; at the end model.safetensors
(the model chosen on val), metrics.json / confusion.csv / confusion.png, attention_final.png and a README.md
model card, and last.pt is removed (--keep-checkpoints keeps it, and best.pt).

examples:
  racnn train --config synthetic_tiny
  racnn train --config paper_vgg19_cub --set data.root=/data/CUB_200_2011 --amp none
  racnn train --resume runs/racnn               continue after Ctrl-C or a crash, exactly (a finished run: says so)
  racnn train --config synthetic_tiny --device cpu -b 16 -j 0 --print-config     the resolved config, no training
  racnn --quiet train --config FILE              warnings and errors only, no progress bars
  torchrun --nproc_per_node 2 -m racnn train --config FILE     DistributedDataParallel, one process per GPU/CPU share

exit codes: 0 done (or --resume of a finished run), 1 training failed (e.g. a non-finite loss), 2 bad input (path,
config key, data layout, a last.pt of another run), 130 interrupted (last.pt holds the last completed epoch).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from racnn.cli.errors import check_classes, fail, fail_os, refuse_resume_overrides
from racnn.cli.flags import AMP_HELP, DEVICES, add_amp, add_batch_size, add_device, add_workers
from racnn.config import Config, ConfigError, apply_overrides, config_to_dict, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE",
        help="YAML config: a file, or a built-in recipe (synthetic_tiny, synthetic_fine, cpu_lite0_cub50, "
        "cpu_lite0_cub_whole, paper_vgg19_cub); "
        "keys left out keep their defaults (docs/TRAINING.md)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, repeatable; values are YAML, e.g. --set train.cls.lr=0.01 "
        "--set data.root=/data/CUB_200_2011 --set 'train.warmup={epochs: 2, lr: 0.01}'",
    )  # fmt: skip
    parser.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue the run in RUN_DIR (or from a last.pt) exactly where its last completed epoch ended: "
        "with the config stored in its last.pt (plus --set overrides, e.g. train.device)",
    )  # fmt: skip
    parser.add_argument(
        "--output-dir", metavar="DIR", help="parent folder of the run folder (overrides train.output_dir)"
    )
    parser.add_argument(
        "--keep-checkpoints", action="store_true",
        help="sets train.keep_checkpoints: keep best.pt and last.pt (resumable) at the end besides model.safetensors",
    )  # fmt: skip
    add_amp(
        parser, None,
        f"{AMP_HELP}: sets train.amp (left out: the config's; the recipes set auto, "
        "but cpu_lite0_cub50, cpu_lite0_cub_whole none)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", action="store_true",
        help="train and test the single-scale baseline of the config instead (same backbone, data, seed and "
        "classification epochs) and print its top-1 / top-5 as JSON",
    )  # fmt: skip
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the resolved config (the recipe or resumed run, then the flags and --set overrides) as YAML on "
        "stdout and exit, without training",
    )  # fmt: skip
    add_device(parser, None, f"{DEVICES}: sets train.device")
    add_batch_size(parser, "training images per step: sets data.batch_size", None)
    add_workers(parser, "data-loader worker processes: sets data.num_workers", None)


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides the shared flags stand for (``--device cpu`` -> ``train.device=cpu``, ...), placed
    before ``--set`` so that an explicit ``--set`` wins."""
    overrides = []
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    if args.amp is not None:
        overrides.append(f"train.amp={args.amp}")
    if getattr(args, "keep_checkpoints", False):
        overrides.append("train.keep_checkpoints=true")
    if getattr(args, "verbosity", None) == "quiet":
        overrides.append("train.progress=false")
    return overrides


def build_config(args: argparse.Namespace) -> Config:
    """The config of ``racnn train``: the file, or the resumed run's stored config, then the flags' and the
    ``--set`` overrides."""
    from racnn.checkpoint import config_of, load_checkpoint

    overrides = flag_overrides(args) + list(args.overrides)
    if args.resume:
        check_resume_args(args)
        path = Path(args.resume)
        ckpt = load_checkpoint(path / "last.pt" if path.is_dir() else path)
        cfg = apply_overrides(config_of(ckpt, path), overrides)
        check_resumed_classes(path, ckpt.get("class_names"), cfg)
        return cfg
    if not args.config:
        raise ConfigError("give a config file (--config FILE) or a run to resume (--resume RUN_DIR)")
    if args.output_dir:
        overrides.insert(0, f"train.output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def check_resume_args(args: argparse.Namespace) -> None:
    """Refuse what ``--resume`` would ignore or misplace (the checks that need no checkpoint)."""
    if args.config or args.output_dir:
        raise ConfigError("--resume continues a run with its own config; leave out --config and --output-dir")
    refuse_resume_overrides(flag_overrides(args) + list(args.overrides))


def check_resumed_classes(path: Path, class_names: list[str] | None, cfg: Config) -> None:
    """A resumed run continues on the classes it started with: ``--set data.root=...`` naming another data set
    would go on training the same output units under other meanings."""
    if not class_names:
        return
    from racnn.training import build_split

    check_classes(path, list(class_names), build_split(cfg, "test", [0.5] * 3, [0.5] * 3), cfg.data)


def print_config(cfg: Config) -> None:
    """``--print-config``: the config a run would use, as the run folder's config.yaml would hold it."""
    import yaml

    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")


def main(args: argparse.Namespace) -> int:
    from racnn.checkpoint import CheckpointError, CheckpointWriteError
    from racnn.data import DatasetError
    from racnn.training import NonFiniteLossError, fit, train_baseline
    from racnn.training.run_record import finished_note

    note = finished_note(args.resume) if args.resume else None
    try:
        if note is not None:  # a finished run: the options checked as for any resume, then one line, nothing done
            path = Path(args.resume)
            check_resume_args(args)
            if (path / "last.pt" if path.is_dir() else path).is_file():  # kept with train.keep_checkpoints
                build_config(args)
            print(f"racnn train: {note}")
            return 0
        cfg = build_config(args)
        if args.print_config:
            print_config(cfg)
        elif args.baseline:
            print(json.dumps(train_baseline(cfg), indent=2))
        else:
            fit(cfg, resume=args.resume, command=shlex.join(getattr(args, "command_line", [])) or None)
    except CheckpointWriteError as e:  # disk full, no permission: the run failed, the input was fine
        return fail("racnn train: ", e, code=1)
    except (ConfigError, CheckpointError, FileNotFoundError, DatasetError) as e:
        return fail("racnn train: ", e)
    except NonFiniteLossError as e:
        print(f"racnn train: training stopped: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a log, picture or model file that could not be written
        return fail_os("racnn train: ", e)
    except KeyboardInterrupt:
        return 130
    return 0
