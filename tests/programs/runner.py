"""Starting the helper scripts of `tests/programs/` as subprocesses, bounded in time.

Every test that needs a process of its own (logical devices, `TF_CONFIG`, a process to
SIGKILL) goes through here, so each child gets the same quiet, single-threaded,
reproducible environment and is always killed, whatever happens to the test. The child
runs the Keras backend of the tests (`KERAS_BACKEND`), TensorFlow when none is set.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROGRAMS = ROOT / "tests" / "programs"


def script_env(**extra):
    """The environment of a child process: the repository importable, the tests' Keras
    backend, TensorFlow quiet and single-threaded."""
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), env.get("PYTHONPATH")])
        ),
    )
    env.setdefault("KERAS_HOME", str(ROOT / ".keras_home"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def capture(*args, env=None, timeout=300):
    """Runs `python ARGS` from the repository root to completion (by default in
    `script_env()`); its `CompletedProcess`, stdout and stderr apart, as text."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=env or script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(script, *args, env=None, log=None):
    """Starts `tests/programs/<script>`, or the repository's script `<script>` as a module if
    it names a folder (`examples/distributed.py` runs as `-m examples.distributed`, as users
    run it), with the interpreter running the tests."""
    if "/" in str(script):
        target = ["-m", str(script).removesuffix(".py").replace("/", ".")]
    else:
        target = [str(PROGRAMS / script)]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its copy
    try:
        return subprocess.Popen(
            [sys.executable, *target, *map(str, args)],
            env=env or script_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            start_new_session=True,
        )
    finally:
        if log:
            out.close()


def kill(proc, sig=signal.SIGKILL):
    """Kills `proc` (and nothing else) if it is still running, and reaps it."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    return proc.returncode


def run(script, *args, timeout=240, env=None, log=None):
    """Runs a script to completion; on timeout kills it and raises with the end of its log."""
    proc = start(script, *args, env=env, log=log)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise AssertionError(
            f"{script} did not finish in {timeout} s; log:\n{tail(log)}"
        ) from None
    finally:
        kill(proc)
    if proc.returncode != 0:
        raise AssertionError(
            f"{script} exited with {proc.returncode}; log:\n{tail(log)}"
        )
    return proc


def wait_for(path, proc, timeout):
    """Waits until `path` exists; fails early if `proc` ends first."""
    deadline = time.monotonic() + timeout
    path = pathlib.Path(path)
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"the process ended ({proc.returncode}) before writing {path}"
            )
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def free_ports(n):
    """`n` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tail(log, n=60):
    if not log or not os.path.exists(log):
        return "(no log)"
    with open(log) as f:
        lines = [
            line
            for line in f
            if not line.startswith(("I0000", "E0000", "WARNING: All log"))
        ]
    return "".join(lines[-n:])
