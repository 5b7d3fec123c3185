"""The one command-line kit of every script: examples, tuning and benchmarks.

A user's mistake (bad arguments, a data set that is not there, a missing optional package,
settings that conflict with a saved run) ends the script with `PROG: error: MESSAGE` on one
line of stderr and exit code 2, not a traceback. Ctrl-C ends it with `PROG: interrupted`
(and, where the script can resume, how to resume) and exit code 130. Anything else is a bug
and keeps its traceback.

    def main(argv=None):
        args = build_parser().parse_args(argv)          # a cli.ArgumentParser
        return cli.run_script(lambda: run(args), prog="fit.py",
                              interrupted="rerun the same command to resume")

    if __name__ == "__main__":
        sys.exit(main())

It imports neither Keras nor a backend (the benchmark harness picks the backend per process).
"""

import _thread
import argparse
import contextlib
import math
import os
import shlex
import signal
import sys
import threading

from experiments.datasets import DatasetUnavailableError

EXIT_USER_ERROR = 2  # argparse's own code for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UserError(Exception):
    """A mistake the user can fix: the script prints its message on one line and exits with 2."""


# What `run_script` reports in one line: `UserError`, a data set that can't be had, and a
# missing optional package (the loaders' ImportErrors say what to `pip install`).
USER_ERRORS = (UserError, DatasetUnavailableError, ImportError)


def one_line(text):
    """`text` with its line breaks and runs of spaces turned into single spaces."""
    return " ".join(str(text).split())


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line, `PROG: error: MESSAGE`, exit code 2
    (argparse prints the whole usage block first)."""

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None or a flag's False (the help says it)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def script_name():
    """`benchmarks.speed` for `python -m benchmarks.speed`, else the script's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        # `python -m benchmarks.sampling` runs the package's `__main__` module.
        return spec.name.removesuffix(".__main__")
    return (
        os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "script"
    )


def command_line(drop=()):
    """The command that is running, as a user types it from the repository root
    (`python -m benchmarks.NAME ...`), without the arguments in `drop`."""
    name = script_name()
    head = ["python", "-m", name] if "." in name else ["python", name]
    return " ".join(
        shlex.quote(a)
        for a in head + [a for a in sys.argv[1:] if a not in drop]
    )


def _number(kind, convert, minimum, exclusive):
    """An argparse `type` that accepts finite numbers above a bound."""
    wanted = f"{kind} {'>' if exclusive else '>='} {minimum:g}"

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if (
            value is None
            or not math.isfinite(value)
            or value < minimum
            or (exclusive and value == minimum)
        ):
            raise argparse.ArgumentTypeError(
                f"expected {wanted}, received {text!r}"
            )
        return value

    parse.__name__ = wanted  # argparse names the type in some messages
    return parse


# argparse `type`s for the usual ranges: `add_argument("--epochs", type=positive_int)`.
positive_int = _number("an integer", int, 1, exclusive=False)
non_negative_int = _number("an integer", int, 0, exclusive=False)
positive_float = _number("a finite number", float, 0, exclusive=True)
non_negative_float = _number("a finite number", float, 0, exclusive=False)


@contextlib.contextmanager
def user_errors():
    """Turns the `ValueError`s raised in the block into `UserError`s.

    For the part of a script that builds things from the user's settings (data, model,
    optimizer): there a `ValueError` ("Argument `depth` must be 6n + 2 ...") is a bad
    setting. Outside such a block a `ValueError` is a bug and keeps its traceback.
    """
    try:
        yield
    except ValueError as error:
        raise UserError(one_line(error)) from error


def _caused_by_ctrl_c(error):
    """Whether `error` is a `KeyboardInterrupt` or was raised because of one.

    A Ctrl-C that arrives while C code calls Python becomes the cause of the error C then
    reports, e.g. `SystemError: ... returned a result with an exception set`.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class _InsistentInterrupt:
    """Makes one Ctrl-C end the script, even where a library swallows `KeyboardInterrupt`.

    Python raises `KeyboardInterrupt` at the next bytecode the main thread runs. When that
    is inside a bare `except:` or a finalizer, the interrupt is lost and the script runs on:
    JAX has bare `except:`s right after an XLA compilation, where a Ctrl-C typically lands
    (a KerasTuner search on JAX compiles for every trial), and JAX's garbage-collection
    callback is a finalizer. After the first Ctrl-C this raises it again every second until
    it gets through, and keeps Python from printing the lost ones ("Exception ignored in")
    and the errors they cause in C code that prints them itself (TensorFlow's `Flatten`
    printed "SystemError: <built-in function __import__> returned a result with an exception
    set" when a Ctrl-C landed in an import it made).
    """

    PERIOD_S = 1.0

    def __init__(self):
        self.caught = threading.Event()
        self._previous = None
        self._repeater = None
        self._unraisablehook = None
        self._excepthook = None

    def __enter__(self):
        # Only where Python's own Ctrl-C handling is in place (not under a caller's handler).
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._interrupt)
            self._unraisablehook, sys.unraisablehook = (
                sys.unraisablehook,
                self._unraisable,
            )
            # `PyErr_Print`, which C code calls to report an error it cannot raise, prints
            # through `sys.excepthook`.
            self._excepthook, sys.excepthook = sys.excepthook, self._except
        return self

    def _unraisable(self, unraisable):
        # A lost Ctrl-C is raised again; the errors it caused are its consequences.
        if not _caused_by_ctrl_c(unraisable.exc_value):
            self._unraisablehook(unraisable)

    def _except(self, exc_type, exc_value, traceback):
        if not _caused_by_ctrl_c(exc_value):
            self._excepthook(exc_type, exc_value, traceback)

    @property
    def requested(self):
        """Whether Ctrl-C was pressed inside the block."""
        return self._repeater is not None

    def _interrupt(self, signum, frame):
        if self.caught.is_set():
            return
        if self._repeater is None:
            self._repeater = threading.Thread(target=self._repeat, daemon=True)
            self._repeater.start()
        raise KeyboardInterrupt

    def _repeat(self):
        while not self.caught.wait(self.PERIOD_S):
            if hasattr(
                signal, "pthread_kill"
            ):  # a real signal: it also ends a blocking wait
                signal.pthread_kill(
                    threading.main_thread().ident, signal.SIGINT
                )
            else:
                _thread.interrupt_main(signal.SIGINT)

    def __exit__(self, *exc_info):
        self.caught.set()
        if self._repeater is not None:
            self._repeater.join()  # its last signal reaches `_interrupt`, which ignores it now
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            sys.unraisablehook = self._unraisablehook
            sys.excepthook = self._excepthook


def _forget_unhandled_interrupt():
    """Keeps CPython from ending the process by SIGINT after a Ctrl-C this module handled.

    When a `KeyboardInterrupt` passes through C code that runs Python with `PyRun_String`
    (TensorFlow's and optree's C++ do), CPython sets a global flag, "unhandled Ctrl-C", that
    catching the exception later does not clear; at exit it then kills the process with
    SIGINT (return code -2) instead of exiting with the script's code. Running any code
    through `PyRun_String` resets the flag.
    """
    if sys.implementation.name == "cpython":
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")


_QUIET = {"interrupt": False}


def quiet_interrupt():
    """Ctrl-C ends this process silently (exit code 130): for a child process whose parent
    says how to resume."""
    _QUIET["interrupt"] = True


def run_script(run, prog=None, interrupted=None):
    """Calls `run()` and returns the script's exit code.

    Args:
        run: a function of no arguments, the script's work (its return value is ignored).
        prog: the script's name, the first word of the messages (e.g. `"fit.py"`);
            default `script_name()`.
        interrupted: what to add to `PROG: interrupted` on Ctrl-C, e.g. how to resume.

    Returns:
        0 when `run()` returns; 2 after printing `PROG: error: MESSAGE` for one of
        `USER_ERRORS`; 130 after printing `PROG: interrupted[; INTERRUPTED]` for a
        `KeyboardInterrupt` (Ctrl-C), or for any error raised after one (a library
        that swallowed it failed on what it left). Other exceptions propagate.
    """
    prog = prog or script_name()
    with _InsistentInterrupt() as interrupts:
        try:
            run()
        except KeyboardInterrupt:
            interrupts.caught.set()
        except Exception as error:
            if not interrupts.requested:
                if isinstance(error, USER_ERRORS):
                    print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
                    return EXIT_USER_ERROR
                raise
            # After a Ctrl-C, an error is its consequence: a library swallowed the
            # interrupt and failed on what it left half done (Keras' `pythonify_logs`
            # has a bare `except:` that leaves a tensor in the logs for `CSVLogger`).
            interrupts.caught.set()
        else:
            return 0
    _forget_unhandled_interrupt()
    if not _QUIET["interrupt"]:
        print(
            f"{prog}: interrupted"
            + (f"; {interrupted}" if interrupted else ""),
            file=sys.stderr,
        )
    return EXIT_INTERRUPTED
