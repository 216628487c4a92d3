"""Extracts the examples from Markdown files and runs them against a live daemon.

The rule, by a fenced block's info string (its first word is the language):

- ``python``: run as a script of its own with the Python given (``--python``), whose
  environment has ``larder-client`` installed; ``PYTHONPATH=gen`` so that stubs generated
  into ``gen/`` by an earlier block (docs/clients.md) import.
- ``sh`` (or ``bash``): run as a script of its own with ``bash -e -o pipefail``.
- ``console``: the lines starting with ``$ `` (with their ``\\`` continuation lines) are run
  as one ``bash -e -o pipefail`` script; the lines in between are output and are not compared.
- any other language (``toml``, ``js``, ``yaml``, none, ...) is not an example to run.

A block that cannot run here (systemctl, sudo, a second daemon, a long benchmark, a fragment
of an app) says so in its info string: `````sh no-run`````. Such a block is listed as skipped;
a ``python no-run`` block is still compiled, so that it is at least valid Python.

Every block runs in one working directory, a copy of the repository (so commands written to
run from the root work, and nothing they write lands in the checkout), in the order given on
the command line and, within a file, top to bottom; a daemon started on the embedded defaults
(127.0.0.1:7379, data in ./larder-data of that directory, and a Unix socket) serves them all.

The files' relative links are checked too: a link to a missing file or heading fails.

Usage: docs_examples.py --larder BIN --python PY [--path-dir DIR] [--socket PATH] FILE...
Exits 1, naming the file and line of each block that failed (and each broken link), if any.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNNABLE = {"python", "sh", "bash", "console"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    path: str
    line: int  # of the opening fence, 1-based
    lang: str
    flags: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def extract(path: Path, shown: str) -> list[Block]:
    """Every fenced block of the file, with its language and flags."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        words = m["info"].split()
        body = []
        j = i + 1
        while j < len(lines):
            close = FENCE.match(lines[j])
            if close and close["fence"].startswith(fence) and not close["info"].strip():
                break
            body.append(
                lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j]
            )
            j += 1
        blocks.append(
            Block(
                shown,
                i + 1,
                words[0].lower() if words else "",
                [w.lower() for w in words[1:]],
                "\n".join(body) + "\n",
            )
        )
        i = j + 1
    return blocks


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings (lower case, punctuation dropped)."""
    anchors, fenced = set(), False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        m = None if fenced else re.match(r"^#+ (.*)", line)
        if m:
            anchors.add(re.sub(r"[^\w\- ]", "", m[1].strip().lower()).replace(" ", "-"))
    return anchors


def broken_links(path: Path, shown: str) -> list[str]:
    """Relative links of the file (outside code) whose file or heading does not exist."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    broken = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        link = m[1]
        if re.match(r"^[a-z]+:", link):
            continue
        target_part, _, anchor = link.partition("#")
        target = (path.parent / target_part).resolve() if target_part else path
        if not target.exists():
            broken.append(f"{shown}: link to a missing file: {link}")
        elif (
            anchor and target.suffix == ".md" and anchor not in heading_anchors(target)
        ):
            broken.append(f"{shown}: link to a missing heading: {link}")
    return broken


def console_script(text: str) -> str:
    """The commands of a console transcript: `$ ` lines and their continuation lines."""
    out: list[str] = []
    continuing = False
    for line in text.split("\n"):
        if continuing:
            out.append(line)
        elif line.startswith("$ "):
            out.append(line[2:])
        else:
            continue
        continuing = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def copy_checkout(repo: Path, dest: Path) -> None:
    """The files git knows of (tracked, or new and not ignored), as they are on disk."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = raw.decode()
        src = repo / rel
        if not src.is_file():  # deleted in the work tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def wait_for_daemon(proc: subprocess.Popen, sock: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"docs-examples: the daemon exited at start:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", 7379), timeout=1):
                if os.path.exists(sock):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(
        f"docs-examples: the daemon did not listen on 127.0.0.1:7379 within 60 s:\n{log.read_text()}"
    )


def run_block(
    block: Block, work: Path, env: dict[str, str], python: str, scratch: Path
) -> tuple[bool, str]:
    script = scratch / "block"
    if block.lang == "python":
        script.write_text(block.text)
        cmd = [python, str(script)]
    else:
        script.write_text(
            console_script(block.text) if block.lang == "console" else block.text
        )
        cmd = ["bash", "-e", "-o", "pipefail", str(script)]
    try:
        done = subprocess.run(  # the exit status is read below, with the output
            cmd,
            check=False,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as e:
        return (
            False,
            f"timed out after {BLOCK_TIMEOUT_S} s\n{e.stdout or ''}{e.stderr or ''}",
        )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        return False, f"exit status {done.returncode}\n{output}"
    return True, output


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--larder", required=True, help="the larder binary")
    ap.add_argument(
        "--python", required=True, help="the Python that runs python blocks"
    )
    ap.add_argument("--path-dir", action="append", default=[], help="put on PATH first")
    ap.add_argument(
        "--socket", default="/tmp/larder.sock", help="the daemon's Unix socket"
    )
    ap.add_argument(
        "-v", "--verbose", action="store_true", help="print every block's output"
    )
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    repo = Path(__file__).resolve().parent.parent
    scratch = Path(tempfile.mkdtemp(prefix="larder-docs-"))
    work = scratch / "checkout"
    work.mkdir()
    copy_checkout(repo, work)

    bindir = scratch / "bin"
    bindir.mkdir()
    (bindir / "larder").symlink_to(Path(args.larder).resolve())
    env = {k: v for k, v in os.environ.items() if not k.startswith("LARDER_")}
    env["PATH"] = os.pathsep.join(
        [
            str(bindir),
            *args.path_dir,
            str(Path(args.python).parent),
            env.get("PATH", ""),
        ]
    )
    env["PYTHONPATH"] = "gen"
    env["VIRTUAL_ENV"] = str(Path(args.python).parent.parent)
    # A client installed by an example builds without its native core: the examples check
    # the docs, not the Rust build (scripts/check-python-client.sh builds it).
    env["LARDER_CLIENT_NATIVE"] = "0"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    blocks: list[Block] = []
    links: list[str] = []
    for f in args.files:
        blocks += extract(repo / f, f)
        links += broken_links(repo / f, f)
    for line in links:
        print(f"FAILED {line}")

    log = scratch / "larder.log"
    with open(log, "w") as logf:
        daemon = subprocess.Popen(
            [args.larder, "serve", "--unix-socket", args.socket],
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    failed: list[Block] = []
    ran = compiled = 0
    skipped: list[Block] = []
    try:
        wait_for_daemon(daemon, args.socket, log)
        for b in blocks:
            if b.lang not in RUNNABLE:
                continue
            if "no-run" in b.flags:
                if b.lang == "python":
                    compiled += 1
                    try:
                        compile(b.text, b.where, "exec")
                    except SyntaxError as e:
                        print(
                            f"FAILED {b.where} (python no-run): not valid Python: {e}"
                        )
                        failed.append(b)
                skipped.append(b)
                continue
            ok, output = run_block(b, work, env, args.python, scratch)
            ran += 1
            if ok:
                print(f"ok     {b.where} ({b.lang})")
                if args.verbose and output.strip():
                    print("       " + output.rstrip().replace("\n", "\n       "))
            else:
                failed.append(b)
                print(f"FAILED {b.where} ({b.lang}): {output.rstrip()}")
                print(
                    "       the block:\n       "
                    + b.text.rstrip().replace("\n", "\n       ")
                )
            if daemon.poll() is not None:
                print(f"FAILED after {b.where}: the daemon exited\n{log.read_text()}")
                return 1
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"docs examples: {ran} run, {len(failed)} failed; {len(skipped)} marked no-run "
        f"({compiled} of them Python, compiled only): "
        + ", ".join(b.where for b in skipped)
    )
    if failed:
        print("failed: " + ", ".join(b.where for b in failed))
    if links:
        print(f"{len(links)} broken links")
    return 1 if failed or links else 0


if __name__ == "__main__":
    sys.exit(main())
