"""The `overwatch` command: run (console or headless), replay, attach, ps, export, serve, compare.

Bad input is one line on stderr and exit code 2; a crashed run exits 1; completed or stopped, 0.

A run's config is built in this order, each step overriding the one before: the defaults
(``esper_engine.config``), ``--config FILE.toml``, the named flags given (``--n-envs``,
``--epochs``, ...), then each ``--set KEY=VALUE`` in the order given.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from esper_engine.config import (
    MAX_CLIP_THRESHOLD,
    MAX_SEED,
    AmpMode,
    PolicyKind,
    TaskName,
    TrainingConfig,
)
from esper_engine.config_checks import MAX_COUNT, choices
from esper_engine.config_io import apply_set, apply_table, load_toml, set_value, to_toml
from esper_engine.faults import FaultKind, parse_fault
from esper_engine.resources import use_one_malloc_arena

EXIT_OK, EXIT_CRASHED, EXIT_BAD_INPUT = 0, 1, 2
RUNS_DIR = "overwatch-runs"  # where runs are recorded unless --record says otherwise
PACKAGE = "overwatch-esper"  # the distribution name in pyproject.toml
# Console and headless refresh rates: above 60 Hz the view only steals the trainer's GIL time;
# 0.1 Hz (a view every 10 s) is the slowest the headless view updates anyway.
REFRESH_HZ = (0.1, 60.0)
SPEED = (0.25, 64.0)  # replay speeds (SPEC 10); --speed max: as fast as possible
FAULT_HELP = (
    "break the run on purpose to watch the safety machinery: KIND:ENV:EPOCH, KIND one of "
    + ", ".join(kind.value for kind in FaultKind)
    + "; ENV and EPOCH count from 1, as the console shows them; faults fire in the first "
    "episode (repeatable, e.g. --fault nan:2:3 --fault crash:1:5)"
)


# The named run flags that set a config field: flag dest -> config field. Their defaults are the
# config's, shown in --help but not applied by argparse (argparse.SUPPRESS), so that a flag left
# out does not override the --config file.
FLAG_FIELDS = {
    "task": "task",
    "data_dir": "data_dir",
    "n_envs": "n_envs",
    "episodes": "episodes",
    "epochs": "epochs",
    "batches_per_epoch": "batches_per_epoch",
    "policy": "policy",
    "max_grad_norm": "max_grad_norm",
    "amp": "amp",
    "device": "device",
    "seed": "seed",
    "fault": "faults",
    "policy_file": "ppo.init_file",
    "no_learn": "ppo.learn",
    "greedy": "ppo.greedy",
}


class BadInput(Exception):
    """User input we refuse: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise BadInput(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a positive integer below 2**63, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed within 0..{MAX_SEED}, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _float_within(low: float, high: float, note: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number within low..high (both included)."""

    def parse(text: str) -> float:
        value = _finite_float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low:g}..{high:g}{note}, got {text}")
        return value

    return parse


def _fault(text: str) -> str:
    """KIND:ENV:EPOCH, kept as written but normalised ("NaN:01:3" -> "nan:1:3")."""
    try:
        fault = parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"{fault.kind.value}:{fault.env + 1}:{fault.epoch + 1}"


def _add_refresh_hz(parser: argparse.ArgumentParser) -> None:
    low, high = REFRESH_HZ
    parser.add_argument(
        "--refresh-hz",
        type=_float_within(low, high),
        default=4.0,
        help=f"screen updates per second, {low:g}..{high:g}",
    )


def _add_console_flags(parser: argparse.ArgumentParser) -> None:
    """How the console looks and reaches the operator: the same for run, replay and attach."""
    parser.add_argument(
        "--bell", action="store_true", help="ring the terminal bell on every alert as well"
    )
    parser.add_argument(
        "--theme",
        type=_theme,
        default=None,
        metavar="NAME",
        help="dark, light, high-contrast or any Textual theme (ctrl+p picks one live) "
        "(default: dark)",
    )
    parser.add_argument(
        "--ascii",
        action="store_true",
        help="draw with ASCII only, for terminals without box drawing (no plot)",
    )
    parser.add_argument(
        "--no-mouse", action="store_true", help="leave the mouse to the terminal (select, paste)"
    )


def _theme(text: str) -> str:
    from overwatch.widgets.themes import THEME_NAMES  # imports Textual

    if text not in THEME_NAMES:
        raise argparse.ArgumentTypeError(f"unknown theme {text!r}; one of {', '.join(THEME_NAMES)}")
    return text


def _speed(text: str) -> float:
    if text.strip().lower() == "max":
        return math.inf
    return _float_within(*SPEED, " or max")(text)


def _console_options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "bell": args.bell,
        "theme": args.theme,
        "ascii_only": args.ascii,
        "mouse": not args.no_mouse,
    }


def version() -> str:
    """The installed package's version, or the source tree's when it is not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        from overwatch import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="overwatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"overwatch {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run(sub)

    replay = sub.add_parser(
        "replay", help="play a recording back in the console", formatter_class=_HelpFormatter
    )
    replay.add_argument("file")
    replay.add_argument(
        "--speed", type=_speed, default=1.0, help="playback speed, 0.25..64, or max"
    )
    replay.add_argument(
        "--follow",
        action="store_true",
        help="tail a recording still being written (or not created yet: wait for it)",
    )
    _add_refresh_hz(replay)
    _add_console_flags(replay)

    attach = sub.add_parser(
        "attach",
        help="open the console of a run going on in another process, with its controls",
        formatter_class=_HelpFormatter,
    )
    attach.add_argument(
        "run", help="a recording path, or a run id (under --dir, or any of yours: `overwatch ps`)"
    )
    attach.add_argument("--dir", default=RUNS_DIR, help="the runs directory")
    attach.add_argument(
        "--console",
        default=None,
        type=_console_name,
        help="the name acks give this console (default: attach-PID)",
    )
    attach.add_argument(
        "--read-only",
        action="store_true",
        help="watch only: every control greyed out, nothing is ever sent to the run",
    )
    _add_refresh_hz(attach)
    _add_console_flags(attach)

    ps = sub.add_parser(
        "ps",
        help="list your runs, wherever they record (or those under --dir)",
        formatter_class=_HelpFormatter,
    )
    ps.add_argument(
        "--dir",
        default=None,
        help=f"list only the runs under this directory (default: all of yours, and {RUNS_DIR})",
    )

    export = sub.add_parser(
        "export",
        help="write a recording as JSON lines, CSV or TensorBoard event files",
        formatter_class=_HelpFormatter,
    )
    export.add_argument("file")
    export.add_argument("--format", choices=("jsonl", "csv", "tensorboard"), default="jsonl")
    export.add_argument(
        "--output",
        default=None,
        help="output path (default: stdout); a directory for tensorboard (required)",
    )

    compare = sub.add_parser(
        "compare",
        help="overlay the metrics of several recordings by epoch, with their final figures",
        formatter_class=_HelpFormatter,
    )
    compare.add_argument("files", nargs="+", metavar="FILE", help="two recordings or more")
    _add_console_flags(compare)

    serve = sub.add_parser(
        "serve",
        help="serve the read-only replay console to a browser on 127.0.0.1",
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("file")
    serve.add_argument("--follow", action="store_true", help="tail a recording still being written")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port on 127.0.0.1")
    return parser


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port within 1..65535, got {value}")
    return value


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS or "(default:" in text:
            return text
        shown = "none" if action.default is None else str(action.default).replace("%", "%%")
        return f"{text} (default: {shown})"


def _add_run(sub: argparse._SubParsersAction) -> None:
    defaults = TrainingConfig()
    run = sub.add_parser(
        "run",
        help="train with the live console (or --headless)",
        description="Train with the live console (or --headless). The config is built from the "
        "defaults, then --config FILE, then the named flags, then each --set in order.",
        formatter_class=_HelpFormatter,
    )

    def config_flag(flag: str, text: str, **kwargs: object) -> None:
        """A flag that sets the config field FLAG_FIELDS names, defaulting to the config's."""
        value = getattr(defaults, FLAG_FIELDS[flag.removeprefix("--").replace("-", "_")])
        shown = "none" if value in (None, ()) else value
        run.add_argument(
            flag, default=argparse.SUPPRESS, help=f"{text} (default: {shown})", **kwargs
        )

    config_flag("--n-envs", "independent training runs side by side", type=_positive_int)
    config_flag("--task", "the dataset and its host", choices=choices(TaskName))
    config_flag("--data-dir", "local dataset directory (cifar10, tinystories)")
    config_flag("--episodes", "episodes per env", type=_positive_int)
    config_flag("--epochs", "host epochs per episode", type=_positive_int)
    config_flag("--batches-per-epoch", "training batches per env per epoch", type=_positive_int)
    config_flag(
        "--policy", "static never grows the host (the baseline)", choices=choices(PolicyKind)
    )
    config_flag(
        "--max-grad-norm",
        f"global gradient clip threshold, at most {MAX_CLIP_THRESHOLD:g} (0 disables)",
        type=_float_within(0, MAX_CLIP_THRESHOLD, " (0 disables)"),
    )
    config_flag("--amp", "mixed precision", choices=choices(AmpMode))
    config_flag("--device", "torch device, e.g. cpu, cuda, cuda:1")
    config_flag("--seed", f"every random source derives from it, 0..{MAX_SEED}", type=_seed)
    config_flag("--fault", FAULT_HELP, action="append", type=_fault, metavar="KIND:ENV:EPOCH")
    run.add_argument(
        "--policy-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="--policy ppo: start from this saved agent (RUN.policy.pt; a --policy ppo run "
        "with a recording writes one next to it every round; loaded with weights_only, a file "
        "that would run code is refused) (default: none: a fresh agent)",
    )
    run.add_argument(
        "--no-learn",
        action="store_true",
        default=argparse.SUPPRESS,
        help="--policy ppo: evaluate only (no update, no demonstrations) (default: learn)",
    )
    run.add_argument(
        "--greedy",
        action="store_true",
        default=argparse.SUPPRESS,
        help="--policy ppo: act with the most likely action instead of sampling (default: sample)",
    )
    run.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help="read settings from a TOML file (keys as --print-config writes them)",
    )
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        default=None,
        help="set any config field, dotted for the nested groups (e.g. --set "
        "governor.sensitivity=4 --set ppo.lr=1e-4 --set slots=block1,block2; none unsets); "
        "repeatable, applied last, in order",
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective config as TOML (the input of --config) and exit",
    )
    run.add_argument(
        "--resume",
        metavar="RECORDING",
        default=None,
        help="continue a stopped, crashed or killed run from its checkpoint (RECORDING.ckpt), "
        "with the checkpoint's config and run id, appending to RECORDING; only --headless, "
        "--refresh-hz, --on-hangup, --nprocs and --dist-timeout may go with it (any --nprocs "
        "up to the envs resumes any run)",
    )
    rec = run.add_mutually_exclusive_group()
    rec.add_argument(
        "--record",
        default=None,
        help="recording path (default: overwatch-runs/<run-id>.msgpack)",
    )
    rec.add_argument("--no-record", action="store_true", help="do not record")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing finished recording at --record (and its checkpoint)",
    )
    run.add_argument(
        "--headless", action="store_true", help="no TUI: a compact progress view on stderr"
    )
    run.add_argument(
        "--on-hangup",
        choices=("detach", "stop"),
        default="detach",
        help="when the console's terminal goes away (SIGHUP): keep training headless, "
        "reachable with `overwatch attach` (detach), or stop at a safe point (stop)",
    )
    run.add_argument(
        "--nprocs",
        type=_positive_int,
        default=None,
        help="shard the envs over N processes, started by torchrun (rank 0 records and shows "
        "the run; the same as torchrun --standalone --nproc-per-node=N -m overwatch run ...)",
    )
    run.add_argument(
        "--dist-timeout",
        type=_float_within(1, 86_400),
        default=300.0,
        metavar="SECONDS",
        help="with several processes: how long any exchange between them may take before the "
        "run ends as crashed, naming the rank that did not answer",
    )
    run.add_argument(
        "--compare",
        default=None,
        metavar="REF",
        help="a reference recording to compare the live run against (v in the console)",
    )
    _add_refresh_hz(run)
    _add_console_flags(run)


def new_run_id() -> str:
    """A fresh run id, or the one ``overwatch run --nprocs`` chose for its ranks."""
    from overwatch.launch import RUN_ID_ENV

    chosen = os.environ.get(RUN_ID_ENV)
    return chosen or time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Defaults < --config file < the named flags given < each --set in order; validated."""
    config = TrainingConfig()
    try:
        if args.config is not None:
            config = apply_table(config, load_toml(args.config), source=f"config {args.config}")
        given = vars(args)
        for dest, field in FLAG_FIELDS.items():
            if dest in given:
                config = set_value(config, field, _flag_value(dest, given[dest]))
        for item in args.set or ():
            config = apply_set(config, item)
        config.validate()
    except ValueError as exc:  # ConfigError included
        raise BadInput(str(exc)) from None
    return config


def _flag_value(dest: str, value: object) -> object:
    if dest == "no_learn":
        return not value
    if dest == "max_grad_norm":
        return value or None  # --max-grad-norm 0 disables clipping
    if dest == "fault":
        return tuple(value)  # type: ignore[arg-type]
    return value


def record_path(args: argparse.Namespace, run_id: str) -> Path | None:
    if args.no_record:
        return None
    path = Path(args.record) if args.record else Path(RUNS_DIR) / f"{run_id}.msgpack"
    if path.exists() and path.is_dir():
        raise BadInput(f"--record {path} is a directory")
    if path.suffix in (".lock", ".pid", ".ckpt"):  # the run's own files beside it would be it
        raise BadInput(f"--record {path}: {path.suffix} names a run's own file; use .msgpack")
    return path


def _console_name(text: str) -> str:
    from esper_engine.control import check_console_name

    try:
        return check_console_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _take_recording(path: Path, *, overwrite: bool):  # -> RunLock (imported lazily)
    """Lock ``path`` before anything is written; refuse a live run's path (naming its pid) and
    an existing recording unless ``--overwrite``."""
    from esper_engine.run_files import RunLock, RunLockedError

    try:
        lock = RunLock.acquire(path)
    except RunLockedError as exc:
        raise BadInput(str(exc)) from None
    except OSError as exc:
        raise BadInput(f"cannot record to {path}: {exc}") from None
    if (path.exists() or path.is_symlink()) and not overwrite:
        lock.release()
        raise BadInput(
            f"{path} already holds a recording (no live run writes it); "
            "--overwrite replaces it, --resume continues it"
        )
    return lock  # with --overwrite, the session removes the old run once it is set up


def _release(lock) -> None:
    if lock is not None:
        lock.release()


def _register(session) -> None:
    """Put the run in the user's registry now (a failure is said here, before any console owns
    the terminal, and is never fatal), and again with its socket once that listens."""
    from overwatch.registry import register

    problem = register(session.run_id, session.record_path, None)
    if problem is not None:
        print(problem, file=sys.stderr)
        return

    def on_start(socket: str | None) -> None:
        register(session.run_id, session.record_path, socket)

    session.on_start = on_start


def _cmd_run(args: argparse.Namespace) -> int:
    from esper_engine.distributed import launched_world

    rank, world = launched_world()
    if world > 1:
        return _cmd_run_rank(args, rank, world)
    if args.nprocs is not None and args.nprocs > 1:
        return _cmd_launch(args)
    return _cmd_run_here(args)


def _cmd_run_here(
    args: argparse.Namespace, shard=None, config: TrainingConfig | None = None, resumed=None
) -> int:
    """The run in this process: all of it, or rank 0's part of a sharded one (``shard``, with
    the rank's ``config``; ``resumed``: the plan and lock of a sharded --resume)."""
    from esper_engine.session import prepare_session  # keeps --help fast
    from esper_engine.tasks import DataError

    reference = _compare_reference(args)
    _stop_set_up_on_signals()
    if args.resume is not None:
        session = _resume_session(args, resumed, shard, config)
        path = session.record_path
        print(f"resuming {path} (run {session.run_id})", file=sys.stderr)
    else:
        config = config or config_from_args(args)
        if args.print_config:
            sys.stdout.write(to_toml(config))
            return EXIT_OK
        run_id = new_run_id()
        path = record_path(args, run_id)
        if shard is not None:
            _check_restart(path)
        lock = None if path is None else _take_recording(path, overwrite=args.overwrite)
        try:
            session = prepare_session(
                config,
                run_id=run_id,
                record_path=path,
                progress=_progress,
                shard=shard,
                lock=lock,
                overwrite=args.overwrite,
            )
        except (DataError, ValueError) as exc:  # data, device and slot errors: all bad input
            _release(lock)
            raise BadInput(str(exc)) from None
        except OSError as exc:  # the tasks wrap their own OSErrors: this one is the recorder's
            _release(lock)
            if path is None:
                raise
            raise BadInput(f"cannot record to {path}: {exc.strerror}") from None
        except BaseException:
            _release(lock)
            raise
        if path is not None:
            print(f"recording to {path}", file=sys.stderr)
    if path is not None:
        _register(session)
    if shard is not None:
        from esper_engine.distributed import init_group, share_config

        init_group(shard.timeout_s)
        if resumed is not None:  # the workers have no checkpoint to read the config from
            share_config(shard.rank, shard.world, resumed[0].config)
    _freeze_loaded()
    _SET_UP[:] = [session]  # once it has started, a signal stops it (at its next env)
    if args.headless:
        from overwatch.headless import run_headless

        code = run_headless(session, refresh_hz=args.refresh_hz)
    else:
        from overwatch.app import run_console
        from overwatch.sources import LiveSource

        code = run_console(
            LiveSource(session),
            refresh_hz=args.refresh_hz,
            on_hangup=args.on_hangup,
            compare=reference,
            **_console_options(args),
        )
    if shard is not None:
        from esper_engine.distributed import close_group

        close_group()
    if session.recording_error and not args.headless:  # headless has said it already
        print(f"overwatch: error: {session.recording_error}", file=sys.stderr)
    if path is not None:
        print(f"recorded to {path}", file=sys.stderr)
    return code


def _compare_reference(args: argparse.Namespace):  # -> RunSeries | None (imported lazily)
    """``run --compare REF``: the reference's series, read before the run starts."""
    if args.compare is None:
        return None
    if args.headless:
        raise BadInput("--compare needs the console; it does nothing with --headless")
    from overwatch.compare import CompareError, load_run

    try:
        return load_run(args.compare)
    except CompareError as exc:
        raise BadInput(str(exc)) from None


def _cmd_launch(args: argparse.Namespace) -> int:
    """``--nprocs N``: check what can be checked here (one line, exit 2), then torchrun."""
    from overwatch.launch import launch, without_nprocs

    if args.resume is not None:  # checked here, read again by rank 0
        plan, lock = _resume_plan(args)
        lock.release()  # rank 0 takes it for real
        config, run_id, path = plan.config, plan.run_id, plan.recording
    else:
        config = config_from_args(args)
        if args.print_config:
            sys.stdout.write(to_toml(config))
            return EXIT_OK
        run_id = new_run_id()
        path = record_path(args, run_id)
        if path is not None:
            _take_recording(path, overwrite=args.overwrite).release()  # rank 0 takes it for real
    if config.n_envs < args.nprocs:
        raise BadInput(
            f"--nprocs {args.nprocs}: more processes than the run's {config.n_envs} envs"
        )
    run_args = without_nprocs(sys.argv[2:] if args.argv is None else args.argv)
    if path is not None and args.record is None and args.resume is None:
        run_args += ["--record", str(path)]
    return launch(args.nprocs, run_args, run_id, path, headless=args.headless)


def _cmd_run_rank(args: argparse.Namespace, rank: int, world: int) -> int:
    """One rank of a run torchrun started: rank 0 records and shows it, the others train
    their envs quietly (their output goes nowhere: rank 0 speaks for the run)."""
    from esper_engine.distributed import Shard, rank_device

    if rank != 0:
        _silence()
    if args.resume is not None:
        return _resume_rank(args, rank, world)
    config = config_from_args(args)
    if args.print_config:
        if rank == 0:
            sys.stdout.write(to_toml(config))
        return EXIT_OK
    shard = Shard(rank, world, config.n_envs, args.dist_timeout)
    if config.n_envs < world:
        raise BadInput(f"{world} processes: more than the run's {config.n_envs} envs")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    config = msgspec.structs.replace(config, device=rank_device(config.device, local_rank))
    if rank == 0:
        return _cmd_run_here(args, shard, config)
    return _run_worker(config, shard)


def _resume_rank(args: argparse.Namespace, rank: int, world: int) -> int:
    """One rank of a sharded ``--resume``: rank 0 reads the checkpoint and sends the workers
    the config, then each its envs' states; a worker reads no file (it may be on another
    machine). Any number of ranks up to the envs resumes any run: the checkpoint is per env."""
    from esper_engine.distributed import (
        Shard,
        init_group,
        resumed_rank_device,
        share_config,
    )

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resumed = None
    if rank == 0:
        resumed = _resume_plan(args)  # (plan, the recording's lock)
        config = resumed[0].config
    else:
        init_group(args.dist_timeout)
        config = share_config(rank, world, None)
    if config.n_envs < world:
        if resumed is not None:
            resumed[1].release()
        raise BadInput(f"{world} processes: more than the run's {config.n_envs} envs")
    shard = Shard(rank, world, config.n_envs, args.dist_timeout)
    config = msgspec.structs.replace(config, device=resumed_rank_device(config.device, local_rank))
    if resumed is not None:
        return _cmd_run_here(args, shard, config, resumed)
    return _run_worker(config, shard)


def _check_restart(path: Path | None) -> None:
    """A rank torchrun restarted must not overwrite the recording of the run it replaces."""
    from esper_engine.distributed import restart_count

    if restart_count() > 0 and path is not None and path.exists():
        raise BadInput(
            f"torchrun restarted the ranks: {path} exists and is not overwritten "
            "(continue it with --resume, or start again with another --record)"
        )


def _run_worker(config: TrainingConfig, shard) -> int:
    """A rank other than 0: trains its envs; the leader decides when everything stops."""
    import signal

    from esper_engine.distributed import ForwardingSink, close_group, init_group
    from esper_engine.preflight import validate_run
    from esper_engine.session import check_blueprint_preferences
    from esper_engine.tasks import DataError, load_task
    from esper_engine.trainer import VectorizedTrainer

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # rank 0 takes them and stops every rank
    try:
        task = load_task(config.task, data_dir=config.data_dir, seed=config.seed)
        validate_run(config, task, timed=False)  # rank 0 tells the estimate
        check_blueprint_preferences(config)
    except (DataError, ValueError) as exc:
        raise BadInput(str(exc)) from None
    init_group(shard.timeout_s)
    trainer = VectorizedTrainer(config, ForwardingSink(), task=task, shard=shard)
    finished = trainer.run()
    close_group()
    return EXIT_CRASHED if finished.status == "crashed" else EXIT_OK


def _silence() -> None:
    """Nothing a non-zero rank writes reaches the terminal."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _resume_session(
    args: argparse.Namespace, resumed=None, shard=None, config: TrainingConfig | None = None
):  # -> TrainingSession (imported lazily)
    """The session continuing ``--resume RECORDING`` (``resumed``: its plan and lock, when
    already taken); every refusal is one line (exit 2) and lets the lock go.
    ``shard``, ``config``: rank 0's of a sharded resume."""
    from esper_engine.checkpoint import CheckpointError
    from esper_engine.session import prepare_resume
    from esper_engine.tasks import DataError

    plan, lock = resumed or _resume_plan(args)
    try:
        return prepare_resume(plan, progress=_progress, lock=lock, shard=shard, config=config)
    except BaseException as exc:
        lock.release()  # a refused resume lets go at once
        if isinstance(exc, (CheckpointError, DataError, ValueError)):
            raise BadInput(str(exc)) from None
        if isinstance(exc, OSError):
            raise BadInput(f"cannot resume {args.resume}: {exc.strerror or exc}") from None
        raise


def _resume_plan(args: argparse.Namespace):  # -> (ResumePlan, RunLock) (imported lazily)
    """``--resume RECORDING``'s recording and checkpoint, checked under the recording's lock,
    which the caller then holds; every refusal is one line.

    The checkpoint's config is the run's: a flag that would change it is refused rather than
    ignored, since the resumed events must be the ones the original run would have made.
    """
    from esper_engine.checkpoint import CheckpointError, plan_resume
    from esper_engine.run_files import RunLock, RunLockedError

    given = vars(args)
    clashing = [f"--{dest.replace('_', '-')}" for dest in FLAG_FIELDS if dest in given]
    clashing += [
        flag
        for flag, value in (
            ("--config", args.config),
            ("--set", args.set),
            ("--record", args.record),
            ("--no-record", args.no_record),
            ("--overwrite", args.overwrite),
            ("--print-config", args.print_config),
        )
        if value
    ]
    if clashing:
        raise BadInput(
            f"--resume continues with the checkpoint's config; drop {', '.join(clashing)}"
        )
    if not Path(args.resume).is_file():  # (checked again, under the lock, by plan_resume)
        raise BadInput(f"{args.resume}: no such recording")
    try:
        lock = RunLock.acquire(args.resume)  # before the recording is read or cut back
    except RunLockedError as exc:
        raise BadInput(f"cannot resume: {exc}") from None
    except OSError as exc:
        raise BadInput(f"cannot resume {args.resume}: {exc}") from None
    try:
        return plan_resume(args.resume), lock
    except BaseException as exc:
        lock.release()  # a refused resume lets go at once
        if isinstance(exc, CheckpointError):
            raise BadInput(str(exc)) from None
        if isinstance(exc, OSError):
            raise BadInput(f"cannot resume {args.resume}: {exc.strerror or exc}") from None
        raise


class SetUpStopped(BaseException):  # not caught by the loaders' `except Exception`
    """A stop signal while this thread loads the task and builds the session: nothing trains
    yet, so the set-up simply ends (the trainer thread stops at its next env by itself)."""


_SET_UP: list = []  # while _cmd_run_here runs: [None], then [the session] once it exists
_BEFORE_SET_UP: dict[int, object] = {}  # the handlers _stop_set_up_on_signals replaced


def _stop_set_up_on_signals() -> None:
    """SIGTERM, SIGHUP and Ctrl-C end the set-up at once, with one line; once the trainer
    thread runs they stop it (the views put their own handlers in place before they start it;
    this covers the moments between). A signal ignored, as nohup ignores SIGHUP, stays so."""
    import signal

    from esper_engine.contracts import Stop

    def handler(signum: int, frame: object) -> None:
        session = _SET_UP[0] if _SET_UP else None
        if session is not None and session.thread_state != "idle":  # it trains: stop it
            session.send(Stop())
        elif _SET_UP:  # nothing trains yet: end the set-up here
            raise SetUpStopped(signal.Signals(signum).name)

    _SET_UP[:] = [None]
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) in defaults:
            _BEFORE_SET_UP[sig] = signal.signal(sig, handler)


def _restore_signals() -> None:
    """Put back what _stop_set_up_on_signals replaced (main() may be called again in-process)."""
    import signal

    _SET_UP.clear()
    while _BEFORE_SET_UP:
        sig, handler = _BEFORE_SET_UP.popitem()
        signal.signal(sig, handler)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _cmd_replay(args: argparse.Namespace) -> int:
    from esper_engine.recording import RecordingError
    from overwatch.app import run_console
    from overwatch.sources import ReplaySource

    path = Path(args.file)
    # --follow waits for a recording that is not there yet (a run about to start).
    if not path.is_file() and not (args.follow and not path.exists()):
        raise BadInput(f"no such recording: {args.file}")
    try:
        source = ReplaySource(args.file, speed=args.speed, follow=args.follow)
    except RecordingError as exc:
        raise BadInput(str(exc)) from None
    _freeze_loaded()
    return run_console(source, refresh_hz=args.refresh_hz, **_console_options(args))


def _freeze_loaded() -> None:
    """Leave what is loaded by now out of the garbage collector's full passes.

    The trainer and the view share this process and the GIL. A full pass walks everything
    loaded (torch, the task, the session, a replay's events: 184k objects in a live 4-env run)
    and held the GIL 60-90 ms each time; frozen objects are never scanned again, so a later pass
    only walks what was allocated since. Console and headless runs get the same settings.
    """
    gc.freeze()


def _cmd_attach(args: argparse.Namespace) -> int:
    from overwatch.app import run_console
    from overwatch.runs import RunError, attach_target
    from overwatch.sources import AttachSource

    try:
        record, socket_path = attach_target(args.run, Path(args.dir))
    except RunError as exc:
        raise BadInput(str(exc)) from None
    console = args.console or f"attach-{os.getpid()}"
    return run_console(
        AttachSource(record, socket_path, console, read_only=args.read_only),
        refresh_hz=args.refresh_hz,
        **_console_options(args),
    )


def _cmd_ps(args: argparse.Namespace) -> int:
    from overwatch.runs import list_runs, ps_table

    if args.dir is None:  # every run of the user's, and those under ./overwatch-runs
        default = Path(RUNS_DIR)
        runs = list_runs(default if default.is_dir() else None, registered=True)
    else:
        directory = Path(args.dir)
        if not directory.is_dir():
            raise BadInput(f"no runs directory {directory}")
        runs = list_runs(directory)
    for run in runs:
        if run.warning is not None:
            print(run.warning, file=sys.stderr)
    sys.stdout.write(ps_table(runs))
    return EXIT_OK


def _cmd_export(args: argparse.Namespace) -> int:
    from esper_engine.recording import RecordingError
    from overwatch.export import export_recording
    from overwatch.tensorboard_export import MissingExtra, OutputNotEmpty

    if not Path(args.file).is_file():
        raise BadInput(f"no such recording: {args.file}")
    try:
        export_recording(args.file, fmt=args.format, output=args.output)
        sys.stdout.flush()  # here, where a broken pipe is caught, not at interpreter exit
    except BrokenPipeError:  # an OSError, but the reader's choice: `export ... | head`
        raise
    except (RecordingError, ValueError, OSError, MissingExtra, OutputNotEmpty) as exc:
        raise BadInput(str(exc)) from None
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from overwatch.compare import CompareError, load_runs
    from overwatch.screens.compare import run_compare

    try:
        runs = load_runs(args.files)
    except CompareError as exc:
        raise BadInput(str(exc)) from None
    return run_compare(runs, **_console_options(args))


def _cmd_serve(args: argparse.Namespace) -> int:
    from overwatch.serve import ServeError, serve

    # With --follow the replay itself decides what a missing recording means.
    if not args.follow and not Path(args.file).is_file():
        raise BadInput(f"no such recording: {args.file}")
    try:
        serve(args.file, follow=args.follow, port=args.port)
    except ServeError as exc:
        raise BadInput(str(exc)) from None
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    use_one_malloc_arena()  # before any thread allocates: a run trains in one (resources)
    try:
        args = build_parser().parse_args(argv)
        args.argv = None if argv is None else list(argv)[1:]  # run's own arguments
        handler = {
            "run": _cmd_run,
            "replay": _cmd_replay,
            "attach": _cmd_attach,
            "ps": _cmd_ps,
            "export": _cmd_export,
            "serve": _cmd_serve,
            "compare": _cmd_compare,
        }[args.command]
        return handler(args)
    except BadInput as exc:
        print(f"overwatch: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SetUpStopped as exc:  # a stopped run: exit 0, as when it stops later
        print(f"overwatch: stopped during set-up ({exc}), before training began", file=sys.stderr)
        return EXIT_OK
    except BrokenPipeError:  # `overwatch export run.msgpack | head`: the reader has had enough
        _silence_stdout()
        return EXIT_OK
    finally:
        _restore_signals()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still buffered
    does not fail a second time ("Exception ignored ... BrokenPipeError", exit 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
