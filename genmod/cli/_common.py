"""What every genmod command shares: where the configs are, and turning user errors into
one line on stderr and a non-zero exit instead of a traceback."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
)
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = [
    "cli_reporter",
    "config_dir",
    "drop_null_groups",
    "hydra_entry",
    "one_line",
    "sweep_subdir",
    "user_error",
]

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2
"""Exit status of a command stopped by invalid input (a config value, a file, the data)."""

OPTIONAL_GROUPS = ("callbacks", "debug", "experiment", "logger", "scheduler")
"""Config groups a run can go without: ``group=null`` (or ``group=none`` where the group has
no ``none`` option) leaves the group out, as Hydra's ``~group`` does; Hydra itself refuses a
null group override with a traceback."""


def sweep_subdir(job_num: Any, overrides: Any) -> str:
    """A sweep job's directory name: its number and the overrides that vary across the sweep,
    e.g. ``2_model.kernel=epanechnikov`` (used as ``hydra.sweep.subdir``; TensorBoard names
    the run after it). The varying keys are the ones swept on the command line; when none
    is found there (a sweeper that takes its search space from the config), all of the
    job's overrides. ``/`` in values becomes ``_``; the name is cut at 120 characters."""
    from genmod.training.tensorboard import swept_keys

    task = [str(o) for o in (overrides or [])]
    swept = swept_keys(sys.argv[1:])
    parser = OverridesParser.create()
    chosen = []
    for item in task:
        try:
            (override,) = parser.parse_overrides([item])
            key = override.get_key_element()
        except (HydraException, ValueError):
            key = item.partition("=")[0]
        if not swept or key in swept:
            chosen.append(item)
    name = "_".join([str(job_num), *chosen]).replace("/", "_").replace(os.sep, "_")
    return name[:120]


OmegaConf.register_new_resolver("genmod_sweep_subdir", sweep_subdir, replace=True)


def config_dir(package: Path | None = None) -> Path:
    """The directory holding ``train.yaml`` and the config groups.

    ``genmod/configs`` inside the installed package (a wheel force-includes the repository's
    ``configs/`` there), else the repository's top-level ``configs/`` (a source checkout or
    an editable install). Independent of the working directory.

    Args:
        package: the ``genmod`` package directory (default: the one this module is in).

    Raises:
        FileNotFoundError: when neither exists (a broken installation).
    """
    package = Path(__file__).resolve().parents[1] if package is None else Path(package)
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"genmod configs not found in {package / 'configs'} or beside it")


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        ValueError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        HydraException,
        OmegaConfBaseException,
    ]
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    else:
        errors.append(MisconfigurationException)
    return tuple(errors)


def user_error(err: BaseException) -> bool:
    """True for errors caused by the user's input rather than by a bug in genmod."""
    return isinstance(err, _user_errors())


def _squash(text: str) -> str:
    return " ".join(text.split())


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line, without Hydra's and OmegaConf's context lines.

    Hydra wraps errors raised while instantiating a ``_target_`` in an
    ``InstantiationException`` whose message repeats the target: the cause says what is
    wrong. Errors that are not user errors keep their type name in front.
    """
    root = err
    while isinstance(root, InstantiationException) and root.__cause__ is not None:
        root = root.__cause__
    text = str(root)
    if isinstance(root, MissingConfigException):
        text = text.split("Config search path")[0]
    elif isinstance(root, OmegaConfBaseException):
        text = text.strip().splitlines()[0] if text.strip() else ""
    text = _squash(text) or type(root).__name__
    cause = root.__cause__
    if isinstance(root, ConfigCompositionException) and cause is not None and str(cause).strip():
        text += f" ({_squash(str(cause).strip().splitlines()[0])})"
    if "hydra/launcher/submitit_" in text:
        text = (
            text.rstrip(".")
            + ' (hydra/launcher=slurm | local_submit need: pip install "genmod[slurm]")'
        )
    return text if user_error(root) else f"{type(root).__name__}: {text}"


def _fail(prog: str, err: BaseException) -> None:
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _route_lightning_logs() -> None:
    """Send Lightning's log records through the handlers Hydra configured (console and the
    run's log file) only: the ``lightning`` package adds a console handler of its own on
    import, which would print every Lightning message twice."""
    import lightning  # noqa: F401  (adds that handler)

    if logging.getLogger().handlers:
        own = logging.getLogger("lightning")
        for handler in list(own.handlers):
            if type(handler) is logging.StreamHandler:
                own.removeHandler(handler)


def _remove_empty_run_dir() -> None:
    """Delete this job's Hydra output directory if it holds nothing but what Hydra itself
    put there (``.hydra/`` and the job's log): a command stopped by bad input leaves no
    run directory behind (the error was printed; the log would only repeat it)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    own = {".hydra", f"{hydra_cfg.job.name}.log"}
    try:
        names = {p.name for p in out.iterdir()}
        configs = {p.name for p in (out / ".hydra").iterdir()} if ".hydra" in names else set()
    except OSError:
        return
    if names <= own and configs <= {"config.yaml", "hydra.yaml", "overrides.yaml"}:
        shutil.rmtree(out, ignore_errors=True)


def cli_reporter() -> Any:
    """The progress reporter of the command-line tools (:mod:`genmod.progress`): a live bar
    on stdout when it is a terminal, else a line through the ``genmod.progress`` logger (the
    console and the run's log) every ``GENMOD_PROGRESS_EVERY`` seconds; silent on the ranks
    other than 0 of a multi-process run."""
    from genmod.progress import LOGGER, console_reporter

    if any(os.environ.get(key, "0") not in ("", "0") for key in ("RANK", "LOCAL_RANK")):
        return None
    return console_reporter(sys.stdout, log=LOGGER)


def _guard(task: Callable[[DictConfig], Any], prog: str) -> Callable[[DictConfig], Any]:
    @functools.wraps(task)
    def guarded(cfg: DictConfig) -> Any:
        from genmod.progress import reporting

        _route_lightning_logs()
        try:
            with reporting(cli_reporter() or False):
                return task(cfg)
        except Exception as err:
            if _full_error() or not user_error(err):
                raise
            _remove_empty_run_dir()
            _fail(prog, err)

    return guarded


def _optional_groups(config_name: str) -> set[str]:
    """:data:`OPTIONAL_GROUPS` and the groups whose default in ``<config_name>.yaml`` is null
    (``data`` of genmod-eval: null there means the data stored in the checkpoint)."""
    defaults = OmegaConf.load(config_dir() / f"{config_name}.yaml").get("defaults") or []
    nulls = {
        str(key)
        for entry in defaults
        if isinstance(entry, DictConfig)
        for key, value in entry.items()
        if value is None
    }
    return set(OPTIONAL_GROUPS) | nulls


def drop_null_groups(argv: list[str], config_name: str) -> list[str]:
    """``argv`` with ``group=null`` / ``group=none`` of a group the command can go without
    (:func:`_optional_groups`) turned into ``~group``; ``group=none`` is kept where
    ``configs/<group>/none.yaml`` exists (that option is the group's own "nothing")."""
    optional = _optional_groups(config_name)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        value = value.strip().lower()
        if sep and key in optional and value in ("null", "none"):
            own = value == "none" and (config_dir() / key / "none.yaml").is_file()
            out.append(f"{key}=none" if own else f"~{key}")
        else:
            out.append(arg)
    return out


def _precheck(config_name: str, argv: list[str], prog: str) -> None:
    """Compose the config once with the command-line overrides so that composition errors
    (an unknown option, a misspelled key, bad override syntax) end in one line too.

    Sweep values (``-m key=a,b``) are left to Hydra, as are runs with other flags
    (``--help``, ``--cfg``...)."""
    flags = {arg for arg in argv if arg.startswith("-")}
    if _full_error() or flags - {"-m", "--multirun"}:
        return
    parser = OverridesParser.create()
    parsed = []
    for arg in argv:
        if arg in flags:
            continue
        key, _, value = arg.partition("=")
        options = sorted(p.stem for p in (config_dir() / key).glob("*.yaml"))
        if options and value.strip().lower() == "null":  # a group Hydra cannot leave out
            _fail(prog, ValueError(f"{arg}: choose one of {', '.join(options)}"))
        try:
            parsed += parser.parse_overrides([arg])
        except HydraException as err:
            _fail(prog, ValueError(f"cannot parse override {arg!r}: {one_line(err)}"))
    try:
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        GlobalHydra.instance().clear()
        with hydra.initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            hydra.compose(config_name, overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        _fail(prog, err)
    finally:
        GlobalHydra.instance().clear()


def hydra_entry(
    task: Callable[[DictConfig], Any], config_name: str, prog: str
) -> Callable[..., Any]:
    """A command's ``main``: ``main()`` parses ``sys.argv`` with Hydra (overrides, ``-m``
    sweeps, ``--help``) and runs ``task`` on the composed config; ``main(cfg)`` runs
    ``task(cfg)`` on a config composed elsewhere and returns its result.

    Invalid input ends the command with ``<prog>: error: <message>`` on stderr and exit
    status 2; ``HYDRA_FULL_ERROR=1`` shows the full traceback instead.
    """
    guarded = _guard(task, prog)
    decorated = hydra.main(
        version_base="1.3", config_path=str(config_dir()), config_name=config_name
    )(guarded)

    @functools.wraps(task)
    def main(cfg: DictConfig | None = None) -> Any:
        if cfg is not None:
            return task(cfg)
        sys.argv[1:] = drop_null_groups(sys.argv[1:], config_name)
        _precheck(config_name, sys.argv[1:], prog)
        decorated()
        return None

    return main
