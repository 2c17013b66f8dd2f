"""The worker process as the module sees it: start, send, poll, notice death or silence, restart.

Slicer's GUI thread must never block on a pipe, so two daemon threads read the worker's stdout
(protocol lines) and stderr (its log) into a queue and a ring buffer; the module drains them from
a QTimer with `poll()`. A worker that exits while requests are pending turns each of them into an
error `worker_died`, and the next `send()` starts a fresh worker (models are loaded again on
first use). `wait()` is the blocking form for tests and the Slicer self-test.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import threading
import time
from typing import IO, Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

from .protocol import (
    ErrorCode, Message, ProtocolViolation, encode, parse_message,
)

# A running request that has sent nothing for this long is taken as hung. Progress comes at least
# once per slice batch; loading a model onto a GPU for the first time can take a minute.
UNRESPONSIVE_AFTER_S = 300.0
SHUTDOWN_WAIT_S = 10.0


def engine_command(python_executable: str) -> List[str]:
    """The command that starts the worker with a given Python (Slicer's PythonSlicer)."""
    return [python_executable, "-m", "medsegrwkv", "engine"]


class EngineClient:
    """One worker process at a time, started lazily by the first request."""

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None, on_log: Optional[Callable[[str], None]] = None,
                 log_lines: int = 400) -> None:
        self._command = list(command)
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._on_log = on_log
        self._proc: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._log: Deque[str] = collections.deque(maxlen=log_lines)
        self._pending: Dict[int, str] = {}  # request id -> op
        self._backlog: List[Message] = []  # messages read while starting a new worker, for poll()
        self._next_id = 1
        self._last_heard = time.monotonic()

    # -- process -------------------------------------------------------------------------------
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pending(self) -> Dict[int, str]:
        return dict(self._pending)

    def start(self) -> None:
        """Start a worker (the previous one, if any, must have ended)."""
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0
        self._proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=self._env, cwd=self._cwd, creationflags=flags)
        self._lines = queue.Queue()  # a fresh queue: a dead worker's reader cannot mix into it
        self._log_line(f"started worker pid {self._proc.pid}: {' '.join(self._command)}")
        assert self._proc.stdout is not None and self._proc.stderr is not None
        threading.Thread(target=self._read_stdout, args=(self._proc.stdout, self._lines), daemon=True,
                         name="medsegrwkv-client-stdout").start()
        threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True,
                         name="medsegrwkv-client-stderr").start()

    @staticmethod
    def _read_stdout(stream: IO[bytes], lines: "queue.Queue[Optional[str]]") -> None:
        for raw in iter(stream.readline, b""):
            lines.put(raw.decode("utf-8", errors="replace"))
        lines.put(None)  # end of stream: the worker has exited or closed stdout

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self._log_line(raw.decode("utf-8", errors="replace").rstrip())

    def _log_line(self, text: str) -> None:
        self._log.append(text)
        if self._on_log is not None:
            self._on_log(text)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._log)[-lines:])

    # -- requests ------------------------------------------------------------------------------
    def send(self, request: Dict[str, Any]) -> int:
        """Send a request (starting a worker if none runs) and return its id."""
        line = encode(self._next_id, request).encode("utf-8")
        if not self.running:
            if self._proc is not None:
                self._backlog += self.poll()  # what the dead worker left, for the next poll()
            self.start()
        request_id = self._next_id
        self._next_id += 1
        if not self._pending:
            self._last_heard = time.monotonic()  # silence is measured from the first pending request
        self._pending[request_id] = request["op"]
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except OSError:  # the worker died under us; poll() reports it for this request too
            pass
        return request_id

    def _read_lines(self, wait_for_end: float = 0.0) -> Tuple[List[Message], bool]:
        """Messages waiting from the current worker, and whether its stdout has ended; waits up
        to `wait_for_end` seconds for the end (after a kill)."""
        messages: List[Message] = []
        deadline = time.monotonic() + wait_for_end
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic())) if wait_for_end \
                    else self._lines.get_nowait()
            except queue.Empty:
                return messages, False
            if line is None:
                return messages, True
            try:
                message = parse_message(line)
            except ProtocolViolation as exc:
                self._log_line(f"ignored a line from the worker: {exc}")
                continue
            self._last_heard = time.monotonic()
            if message.final:
                self._pending.pop(message.id, None)
            messages.append(message)

    def poll(self) -> List[Message]:
        """Every message that has arrived, without blocking; a dead worker's pending requests
        come back as `worker_died` errors."""
        messages, self._backlog = self._backlog, []
        new, ended = self._read_lines()
        messages += new
        if ended or (self._proc is not None and self._proc.poll() is not None and self._lines.empty()
                     and self._pending):
            messages += self._fail_pending(ErrorCode.WORKER_DIED, self._death_sentence())
        return messages

    def _death_sentence(self) -> str:
        try:
            code = self._proc.wait(timeout=5) if self._proc is not None else None
        except subprocess.TimeoutExpired:  # stdout closed but the process lingers
            code = None
        last = next((line for line in reversed(self._log) if line.strip()), "")
        detail = f" Its last log line: {last}" if last else ""
        return f"The backend worker stopped unexpectedly (exit code {code}).{detail}"

    def _fail_pending(self, code: ErrorCode, sentence: str) -> List[Message]:
        failed = [Message("error", request_id, text=sentence, code=code) for request_id in self._pending]
        self._pending.clear()
        return failed

    def silent_for(self) -> float:
        """Seconds without a message while a request is pending (0 when nothing is pending)."""
        return time.monotonic() - self._last_heard if self._pending else 0.0

    def unresponsive(self, limit: float = UNRESPONSIVE_AFTER_S) -> bool:
        return bool(self._pending) and self.silent_for() > limit

    def wait(self, request_id: int, timeout: float,
             on_progress: Optional[Callable[[Message], None]] = None,
             idle: Optional[Callable[[], None]] = None) -> Message:
        """Block until the final answer to `request_id`; `idle` runs between polls (e.g. to keep
        a GUI painting). Other requests' messages are dropped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.poll():
                if message.id != request_id:
                    continue
                if message.final:
                    return message
                if on_progress is not None:
                    on_progress(message)
            if idle is not None:
                idle()
            time.sleep(0.02)
        raise TimeoutError(f"no answer to request {request_id} within {timeout:.0f} s")

    # -- ending ---------------------------------------------------------------------------------
    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=SHUTDOWN_WAIT_S)

    def restart(self, reason: str) -> List[Message]:
        """Kill the worker and start a new one: what it had sent, then an error `worker_restarted`
        for each request it had not answered."""
        self.kill()
        messages, self._backlog = self._backlog, []
        messages += self._read_lines(wait_for_end=5.0)[0]
        messages += self._fail_pending(ErrorCode.WORKER_RESTARTED, f"The backend worker was restarted: {reason}")
        self.start()
        return messages

    def close(self, timeout: float = SHUTDOWN_WAIT_S) -> Optional[int]:
        """Ask the worker to shut down (it cancels what runs), kill it if it does not; its exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(encode(self._next_id, {"op": "shutdown"}).encode("utf-8"))
                self._proc.stdin.flush()
                self._proc.stdin.close()
                self._proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        self._pending.clear()
        return self._proc.returncode
