#!/usr/bin/env python3
"""ready-time.py: starts a server as systemd would start a Type=notify service and prints how
long it took to say READY=1 on $NOTIFY_SOCKET, in seconds, and its pid:

    ready-time.py --log FILE [--timeout SECONDS] -- COMMAND [ARGS...]

prints "SECONDS PID". The server is left running (the caller stops it); its output goes to
FILE. Exits 1, with the server stopped, when it exits or stays silent past the timeout. Used by
scripts/bench-footprint.sh for Larder and Redis (`--supervised systemd`) alike, so both are
timed the same way: from the fork to the moment the server itself says it serves.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("command", nargs="+")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        env = dict(os.environ, NOTIFY_SOCKET=path)
        with open(a.log, "ab") as log:
            started = time.monotonic()
            child = subprocess.Popen(a.command, env=env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        deadline = started + a.timeout
        while True:
            if child.poll() is not None:
                print(f"ready-time: {a.command[0]} exited with {child.returncode} before "
                      f"READY=1; see {a.log}", file=sys.stderr)
                return 1
            left = deadline - time.monotonic()
            if left <= 0:
                child.kill()
                print(f"ready-time: no READY=1 from {a.command[0]} within {a.timeout}s",
                      file=sys.stderr)
                return 1
            sock.settimeout(min(left, 0.5))
            try:
                message = sock.recv(4096).decode("utf-8", "replace")
            except socket.timeout:
                continue
            if "READY=1" in message.split("\n"):
                print(f"{time.monotonic() - started:.3f} {child.pid}")
                return 0


if __name__ == "__main__":
    sys.exit(main())
