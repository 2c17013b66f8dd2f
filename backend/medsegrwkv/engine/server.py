"""The worker loop: the main thread reads requests, one worker thread runs them.

Busy policy: **reject**. One request runs at a time; any other request that arrives meanwhile
(except `cancel` and `shutdown`) is answered at once with the error `busy` and is not run later.
The module disables its buttons while a request runs, so a second one is a client mistake, and
a queue would only make a stale request run after the user moved on.

`cancel` and `shutdown` are handled by the reading thread the moment they arrive: `cancel` sets
a flag that the running request checks between slice batches (it then ends with the error
`cancelled`, writing nothing; the cancel's own answer always comes first); `shutdown` (and the
end of stdin) cancels the running request, waits for its answer, and ends the process with exit
code 0.

Only protocol JSON goes to stdout: in `run_stdio` the real stdout is kept for the protocol and
file descriptor 1 is pointed at stderr, so a stray print (ours, a library's, or C code's) lands
in the log instead of corrupting the stream.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
from typing import IO, Callable, Dict, Optional

from medsegrwkv.engine.ops import Operations
from medsegrwkv.engine.protocol import (
    Json, ProtocolError, Request, error_message,
    parse_request, progress_message, result_message,
)
from medsegrwkv.errors import ErrorCode, MedSegError

log = logging.getLogger("medsegrwkv.engine")
Handler = Callable[[Json, Callable[[float, str], None], Callable[[], bool]], Json]


class Engine:
    """Dispatches requests from a line source to `Operations` and writes the answers."""

    def __init__(self, out: IO[str], operations: Optional[Operations] = None) -> None:
        self._out = out
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._running: Optional[Request] = None
        self._cancel = threading.Event()
        self._jobs: "queue.Queue[Optional[Request]]" = queue.Queue()
        ops = operations or Operations()
        self._handlers: Dict[str, Handler] = {"info": ops.info, "models": ops.models, "segment": ops.segment,
                                              "grade": ops.grade, "function": ops.function,
                                              "load_image": ops.load_image,
                                              "refine": ops.refine}
        self._output_closed = False
        self._worker: Optional[threading.Thread] = None

    # -- output ----------------------------------------------------------------------------------
    def send(self, message: Json) -> None:
        text = json.dumps(message) + "\n"
        with self._write_lock:
            if self._output_closed:
                return
            try:
                self._out.write(text)
                self._out.flush()
            except (BrokenPipeError, OSError, ValueError):  # the client went away; keep draining stdin
                self._output_closed = True

    # -- reading thread --------------------------------------------------------------------------
    def handle_line(self, line: str) -> bool:
        """Answer or start one request; False once the worker should stop."""
        if not line.strip():
            return True
        try:
            request = parse_request(line)
        except ProtocolError as exc:
            self.send(error_message(exc.request_id, exc.code, exc.message))
            return True
        if request.op == "cancel":
            self._handle_cancel(request)
            return True
        if request.op == "shutdown":
            self._stop()
            self.send(result_message(request.id, {"shutdown": True}))
            return False
        with self._state_lock:
            running = self._running
            if running is None:
                self._running = request
                self._cancel.clear()
        if running is not None:
            self.send(error_message(request.id, ErrorCode.BUSY, f"The worker is busy with request {running.id!r} "
                                    f"({running.op}); wait for its answer or cancel it, then send this again."))
            return True
        self._jobs.put(request)
        return True

    def _handle_cancel(self, request: Request) -> None:
        """Answered under the state lock: the worker thread takes that lock to free the slot before
        it sends the cancelled request's answer, so the client always reads the acknowledgment first
        (without it, a fast worker's `cancelled` error could overtake it)."""
        target = request.fields["target"]
        with self._state_lock:
            running = self._running
            hit = running is not None and (target is None or target == running.id)
            if hit:
                self._cancel.set()
            self.send(result_message(request.id, {"cancelled": hit, "target": running.id if hit else target}))

    def _stop(self) -> None:
        """Cancel what runs, let the worker thread answer it, and end the worker thread."""
        with self._state_lock:
            if self._running is not None:
                self._cancel.set()
        self._jobs.put(None)
        if self._worker is not None:
            self._worker.join()

    # -- worker thread ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            request = self._jobs.get()
            if request is None:
                return
            self._run(request)

    def _run(self, request: Request) -> None:
        started = time.time()
        log.info("request %r: %s started", request.id, request.op)

        def progress(fraction: float, message: str) -> None:
            self.send(progress_message(request.id, fraction, message))

        try:
            answer = result_message(request.id, self._handlers[request.op](request.fields, progress,
                                                                          self._cancel.is_set))
        except MedSegError as exc:
            answer = error_message(request.id, exc.code, exc.message)
        except MemoryError:
            answer = error_message(request.id, ErrorCode.OUT_OF_MEMORY,
                                   "The worker ran out of memory; use a smaller ROI "
                                   "or close other programs, then try again.")
        except Exception as exc:  # a bug: say so in one sentence, keep the traceback in the log
            log.error("request %r (%s) failed:\n%s", request.id, request.op, traceback.format_exc())
            answer = error_message(request.id, ErrorCode.INTERNAL,
                                   f"Internal error in {request.op} ({type(exc).__name__}: "
                                   f"{exc}); the worker log has the details.")
        with self._state_lock:  # free the slot before answering, so the client may send the next request at once
            self._running = None
        log.info("request %r: %s %s after %.2f s", request.id, request.op,
                 answer.get("code", "done") if answer["type"] == "error" else "done", time.time() - started)
        self.send(answer)

    # -- loop ------------------------------------------------------------------------------------
    def serve(self, lines: IO[bytes]) -> None:
        """Run until `shutdown` or the end of the input."""
        self._worker = threading.Thread(target=self._work, name="medsegrwkv-engine-worker", daemon=True)
        self._worker.start()
        for raw in iter(lines.readline, b""):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.send(error_message(None, ErrorCode.BAD_REQUEST, "The request is not valid UTF-8 text."))
                continue
            try:
                keep_going = self.handle_line(line)
            except Exception as exc:  # a bug in reading one line must not end the worker
                log.error("reading a request failed:\n%s", traceback.format_exc())
                self.send(error_message(None, ErrorCode.INTERNAL, f"Internal error while reading a request "
                                        f"({type(exc).__name__}); the worker log has the details."))
                continue
            if not keep_going:
                return
        log.info("stdin closed: shutting down")
        self._stop()


def run_stdio() -> int:
    """`medsegrwkv engine`: serve over this process's stdin/stdout."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", newline="\n")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="medsegrwkv engine: %(message)s")
    log.info("ready (pid %d, protocol on stdout, log on stderr)", os.getpid())
    Engine(protocol_out).serve(sys.stdin.buffer)
    return 0
