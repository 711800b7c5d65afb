"""Logging: the console at ``logs.console.level``, JSON lines in rotated
files under ``logs.file.path``, and the effective config at start-up.

Levels are the original node's (winston) names, most to least severe:
``error warn info http verbose debug silly``. Twisted's levels map onto them
(critical and error: ``error``; warn: ``warn``; info: ``info``; debug:
``debug``), and the access log (namespace ``jsdistributor.access``, one event
per request) is ``http``, as the original's request log: at console level
``info`` it is not shown, at ``http`` and below it is. Twisted's "Starting
factory"/"Stopping factory" lines (one per outbound connection) are
``verbose``.

The console under twistd: twistd installs its log observer after
``makeService``, taking the Application's ``ILogObserver`` component when
there is one (``twisted.application.app.AppLogger.start``). ``makeService``
gives the node our filtered console observer (``LogOutputs.console``) and the
node sets it as that component when twistd makes it a child of the
Application. twistd's ``--logfile`` and ``-n`` choose where it writes
(standard output, or that file); with ``--syslog`` or ``--logger`` twistd's
own choice stands and the console level does not apply.

The file: :class:`RotatingJsonLog` writes ``jsdistributor.log`` in the
``logs.file.path`` directory and renames it ``jsdistributor.<period>.<n>.log``
when it would exceed ``maxSize`` or when the ``frequency`` period (UTC
``yearly|monthly|daily|hourly``, default daily) changes; with ``archive``
rotated files are gzipped (``.log.gz``); ``maxFiles`` bounds how many files
(the current one included) are kept, the oldest removed first. Compression
and pruning run off the reactor thread.

Secrets never reach either output: the operator API's ``hmacSecret`` and
anything shaped like a JWT are replaced by ``***`` in every line written,
and secret-looking query parameters are masked in the access log's path
(``jsdistributor.httputil.loggable_path``).
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import re
import shutil
import sys
import threading
from typing import IO, Any, Callable, Iterable, Mapping

from attrs import define
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogPublisher,
    Logger,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python import threadable
from twisted.python.logfile import BaseLogFile, LogFile
from zope.interface import implementer, provider

from .config import FileLog, NodeConfig, masked_config_dict

log = Logger()

ACCESS_NAMESPACE = "jsdistributor.access"

#: The original node's level names (winston), most severe first: a level
#: shows its own messages and every more severe one.
LEVEL_NAMES = ("error", "warn", "info", "http", "verbose", "debug", "silly")
RANKS = {name: rank for rank, name in enumerate(LEVEL_NAMES)}

#: The winston level closest to each Twisted level (for ``logs.*.level``
#: compatibility; the access log is ``http``).
LEVELS = {
    "error": LogLevel.error,
    "warn": LogLevel.warn,
    "info": LogLevel.info,
    "http": LogLevel.info,
    "verbose": LogLevel.debug,
    "debug": LogLevel.debug,
    "silly": LogLevel.debug,
}

_TWISTED_TO_WINSTON = {
    LogLevel.critical: "error",
    LogLevel.error: "error",
    LogLevel.warn: "warn",
    LogLevel.info: "info",
    LogLevel.debug: "debug",
}

#: ``logs.file.frequency``: the period label of a time (UTC), as the
#: original's date patterns (YYYY, YYYY-MM, YYYY-MM-DD, YYYY-MM-DD-HH).
FREQUENCIES = {
    "yearly": "%Y",
    "monthly": "%Y-%m",
    "daily": "%Y-%m-%d",
    "hourly": "%Y-%m-%d-%H",
}
DEFAULT_FREQUENCY = "daily"

#: The current log file is ``<BASE_NAME>.log``.
BASE_NAME = "jsdistributor"

MASK = "***"
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def level_of(name: str | None) -> LogLevel:
    """The Twisted level closest to a winston level name (default info)."""
    return LEVELS.get((name or "info").lower(), LogLevel.info)


#: Twisted's info messages for every connection the outbound pool opens
#: and closes: ``verbose`` here, not ``info``.
_CHATTER = frozenset(
    {
        "Starting factory {factory!r}",
        "Stopping factory {factory!r}",
        # AMP, between the node and each hit worker.
        "{cls} connection established (HOST:{host} PEER:{peer})",
        "{cls} connection lost (HOST:{host} PEER:{peer})",
    }
)


def most_verbose_level(logs: Any) -> str:
    """The most verbose level any of ``logs`` (a config's ``Logs``) outputs
    takes: what a hit worker must pass on to the node."""
    levels = [level for level in (logs.console_level, logs.file.level if logs.file is not None else None) if level]
    if not levels:
        return "error"
    return max(levels, key=lambda level: RANKS.get(level.lower(), RANKS["info"])).lower()


def logs_requests(level: str) -> bool:
    """Whether an output at ``level`` shows the access log (``http``)."""
    return RANKS.get(level.lower(), RANKS["info"]) >= RANKS["http"]


def winston_level(event: Mapping[str, Any]) -> str:
    """The winston level name of a Twisted log event."""
    level = event.get("log_level", LogLevel.info)
    name = _TWISTED_TO_WINSTON.get(level, "info")
    if name == "info":
        if event.get("log_namespace") == ACCESS_NAMESPACE:
            return "http"
        if event.get("log_format") in _CHATTER:
            return "verbose"
    return name


@implementer(ILogFilterPredicate)
class LevelPredicate:
    """Lets through the events at ``level`` (a winston name) or more severe."""

    def __init__(self, level: str | None) -> None:
        self.level = (level or "info").lower()
        self._rank = RANKS.get(self.level, RANKS["info"])

    def __call__(self, event: Mapping[str, Any]) -> PredicateResult:
        if RANKS[winston_level(event)] <= self._rank:
            return PredicateResult.maybe
        return PredicateResult.no


class Redactor:
    """Replaces the given secrets, and anything shaped like a JWT, by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s.encode("utf-8") for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        data = text.encode("utf-8", "surrogateescape")
        if b"eyJ" not in data and not any(s in data for s in self._secrets):
            return text
        for secret in self._secrets:
            data = data.replace(secret, MASK.encode())
        data = _JWT.sub(MASK.encode(), data)
        return data.decode("utf-8", "surrogateescape")


def secrets_of(config: NodeConfig) -> list[str]:
    return [config.operator_api.hmac_secret] if config.operator_api is not None else []


# ---------------------------------------------------------------------------
# JSON lines


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_as_json_line(event: Mapping[str, Any]) -> str:
    """One log event as a single JSON line: ``time`` (ISO 8601, UTC),
    ``level`` (winston name), ``namespace``, ``message`` (the formatted
    text), then the event's own fields as keys (the access log's ``method``,
    ``path``, ``status``, ``bytes``, ``duration`` (ms), ``cache``,
    ``client``...), and ``error`` (a traceback) when it carries a failure."""
    when = datetime.datetime.fromtimestamp(float(event.get("log_time", 0.0)), datetime.timezone.utc)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": winston_level(event),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(dict(event)),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record:
            continue
        record[key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["error"] = failure.getTraceback()
        except Exception:  # pragma: no cover - a broken failure object
            record["error"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def json_lines_observer(output: IO[Any] | BaseLogFile, redact: Callable[[str], str] | None = None) -> ILogObserver:
    """An observer writing :func:`event_as_json_line` lines to ``output``."""
    redactor = redact or (lambda text: text)
    return FileLogObserver(output, lambda event: redactor(event_as_json_line(event)))  # type: ignore[arg-type]


def console_observer(
    output: IO[Any] | BaseLogFile, level: str | None, redact: Callable[[str], str] | None = None
) -> ILogObserver:
    """Human-readable lines (Twisted's classic format) at ``level`` or more
    severe, secrets redacted; ``level`` None: nothing at all."""
    if level is None:
        return _discard
    redactor = redact or (lambda text: text)

    def text(event: Mapping[str, Any]) -> str | None:
        line = formatEventAsClassicLogText(dict(event))
        return redactor(line) if line else None

    return FilteringLogObserver(FileLogObserver(output, text), [LevelPredicate(level)])  # type: ignore[arg-type]


@provider(ILogObserver)
def _discard(event: Mapping[str, Any]) -> None:
    """``logs.console: off``."""


# ---------------------------------------------------------------------------
# The rotating file


def period_label(frequency: str | None, seconds: float) -> str:
    """The period (UTC) ``seconds`` falls in: ``2024-03-01`` for daily."""
    pattern = FREQUENCIES[frequency or DEFAULT_FREQUENCY]
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(pattern)


def run_now(job: Callable[[], None]) -> None:
    job()


class RotatingJsonLog(BaseLogFile):
    """``<directory>/jsdistributor.log``, rotated by size and by period.

    Rotation renames the current file ``jsdistributor.<period>.<n>.log``
    (``period``: the one it was written in; ``n``: 1, 2... within a period)
    and starts a new one. Then, through ``run_in_background`` (default: at
    once; the node passes a thread), the rotated file is gzipped when
    ``archive`` is set and the oldest files beyond ``max_files`` (the
    current one counts) are deleted.

    ``clock`` (``IReactorTime``) gives the time: the period is checked at
    every write, so a period change rotates at the first line after it.
    A file left by an earlier run belongs to the period of its last change.
    New files get the process's umask (the systemd unit sets 0027);
    ``default_mode`` forces a mode instead (BaseLogFile does it by changing
    the process-wide umask for a moment).
    """

    _ROTATED = re.compile(r"^(?P<base>.+)\.(?P<period>[0-9][0-9-]*)\.(?P<seq>[0-9]+)\.log(?P<gz>\.gz)?$")

    def __init__(
        self,
        directory: str,
        clock: Any,
        *,
        max_size: int | None = None,
        frequency: str | None = None,
        max_files: int | None = None,
        archive: bool = False,
        run_in_background: Callable[[Callable[[], None]], object] = run_now,
        base_name: str = BASE_NAME,
        default_mode: int | None = None,
    ) -> None:
        if frequency is not None and frequency not in FREQUENCIES:
            raise ValueError(f"frequency must be one of {', '.join(FREQUENCIES)}, not {frequency!r}")
        if max_files is not None and max_files < 1:
            raise ValueError(f"max_files must be at least 1, not {max_files!r}")
        self.clock = clock
        self.max_size = max_size
        self.frequency = frequency or DEFAULT_FREQUENCY
        self.max_files = max_files
        self.archive = archive
        self.base_name = base_name
        self._run_in_background = run_in_background
        self._housekeeping = threading.Lock()
        self.size = 0
        self.period = ""
        os.makedirs(directory, exist_ok=True)
        super().__init__(base_name + ".log", directory, defaultMode=default_mode)

    # BaseLogFile.
    def _openFile(self) -> None:
        existed = os.path.exists(self.path)
        super()._openFile()
        self.size = self._file.tell()
        when = os.path.getmtime(self.path) if existed and self.size else self.clock.seconds()
        self.period = period_label(self.frequency, when)

    def shouldRotate(self, incoming: int = 0) -> bool:
        if self.size == 0:
            self.period = period_label(self.frequency, self.clock.seconds())
            return False
        if period_label(self.frequency, self.clock.seconds()) != self.period:
            return True
        return self.max_size is not None and self.size + incoming > self.max_size

    def write(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.shouldRotate(len(data)):
            self.rotate()
        self._file.write(data)
        self.size += len(data)

    def rotate(self) -> None:
        """Rename the current file (if not empty) and start a new one."""
        if self.size == 0:
            return
        self.flush()
        self._file.close()
        target = os.path.join(self.directory, self._rotated_name(self.period))
        os.rename(self.path, target)
        self._openFile()
        self._run_in_background(lambda: self._after_rotation(target))

    def _rotated_name(self, period: str) -> str:
        taken = [seq for p, seq, _ in self.rotated_files() if p == period]
        return f"{self.base_name}.{period}.{max(taken, default=0) + 1}.log"

    def rotated_files(self) -> list[tuple[str, int, str]]:
        """``(period, n, file name)`` of every rotated file, oldest first."""
        found = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            match = self._ROTATED.match(name)
            if match is not None and match["base"] == self.base_name:
                found.append((match["period"], int(match["seq"]), name))
        found.sort()
        return found

    def _after_rotation(self, rotated: str) -> None:
        """Compress ``rotated`` (``archive``), then prune (``max_files``)."""
        with self._housekeeping:
            if self.archive:
                compress(rotated)
            if self.max_files is not None:
                files = self.rotated_files()
                for _, _, name in files[: max(0, len(files) - (self.max_files - 1))]:
                    try:
                        os.remove(os.path.join(self.directory, name))
                    except FileNotFoundError:
                        pass


threadable.synchronize(RotatingJsonLog)


def compress(path: str) -> str:
    """Gzip ``path`` to ``path.gz`` (written aside, renamed into place),
    remove ``path``; returns the new path."""
    target = path + ".gz"
    partial = target + ".partial"
    with open(path, "rb") as source, gzip.open(partial, "wb") as sink:
        shutil.copyfileobj(source, sink, 1024 * 1024)
    os.replace(partial, target)
    os.remove(path)
    return target


def open_file_log(
    file_conf: FileLog, clock: Any, run_in_background: Callable[[Callable[[], None]], object] = run_now
) -> RotatingJsonLog:
    """The ``logs.file`` section as a :class:`RotatingJsonLog`."""
    return RotatingJsonLog(
        str(file_conf.path),
        clock,
        max_size=file_conf.max_size,
        frequency=file_conf.frequency,
        max_files=file_conf.max_files,
        archive=file_conf.archive,
        run_in_background=run_in_background,
    )


# ---------------------------------------------------------------------------
# Start-up


@define
class LogOutputs:
    """What :func:`configure_logging` set up."""

    #: For twistd (the Application's ILogObserver), or None to leave
    #: twistd's own observer in place.
    console: ILogObserver | None
    file: RotatingJsonLog | None
    file_observer: ILogObserver | None
    publisher: LogPublisher

    def close(self) -> None:
        """Stop writing the file (tests; the process exit does it otherwise)."""
        if self.file_observer is not None:
            self.publisher.removeObserver(self.file_observer)
            self.file_observer = None
        if self.file is not None:
            self.file.close()
            self.file = None


def twistd_console_output(twistd_options: Mapping[str, Any] | None) -> IO[Any] | BaseLogFile | None:
    """Where twistd would write its log given its options (``-n``,
    ``--logfile``), or None when our console observer should not replace
    twistd's (``--syslog``, ``--logger``, not under twistd, or a daemon told
    to log to ``-`` (which twistd refuses))."""
    if twistd_options is None:
        return None
    if twistd_options.get("logger") or twistd_options.get("syslog"):
        return None
    logfile = twistd_options.get("logfile") or ""
    nodaemon = bool(twistd_options.get("nodaemon"))
    if logfile == "-":
        return sys.stdout if nodaemon else None
    if not logfile:
        if nodaemon:
            return sys.stdout
        logfile = "twistd.log"
    return LogFile.fromFullPath(logfile)


def configure_logging(
    config: NodeConfig,
    clock: Any = None,
    *,
    twistd_options: Mapping[str, Any] | None = None,
    publisher: LogPublisher = globalLogPublisher,
    run_in_background: Callable[[Callable[[], None]], object] | None = None,
) -> LogOutputs:
    """Open the log file (``logs.file``) and start writing events to it;
    build the console observer for twistd (``logs.console``); log the
    config's warnings and the effective config (secrets masked).

    ``clock`` and ``run_in_background`` default to the global reactor and
    a thread of its pool.
    """
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    if run_in_background is None:
        run_in_background = _in_thread(clock)
    redact = Redactor(secrets_of(config))
    logs = config.logs
    file = file_observer = None
    if logs.file is not None:
        file = open_file_log(logs.file, clock, run_in_background)
        file_observer = FilteringLogObserver(json_lines_observer(file, redact), [LevelPredicate(logs.file.level)])
        publisher.addObserver(file_observer)
    console = None
    output = twistd_console_output(twistd_options)
    if output is not None:
        console = console_observer(output, logs.console_level, redact)
    outputs = LogOutputs(console=console, file=file, file_observer=file_observer, publisher=publisher)
    log.debug(
        "log outputs: console at {console}, file {file}",
        console=logs.console_level or "off",
        file=f"{file.path} at {logs.file.level}" if file is not None and logs.file is not None else "off",
    )
    for warning in config.warnings:
        # Not "warning": trial takes events with that key for Python warnings.
        log.warn("config: {configWarning}", configWarning=warning)
    log.info("effective config: {config}", config=json.dumps(masked_config_dict(config), default=str))
    return outputs


def _in_thread(reactor: Any) -> Callable[[Callable[[], None]], object]:
    def run(job: Callable[[], None]) -> object:
        from twisted.internet.threads import deferToThreadPool

        d = deferToThreadPool(reactor, reactor.getThreadPool(), job)
        return d.addErrback(lambda f: log.failure("log file housekeeping failed", f))

    return run
