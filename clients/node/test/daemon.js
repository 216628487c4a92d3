// test/daemon.js: starts the real larder binary for the tests, one daemon per call, on
// 127.0.0.1:0 (the daemon picks a free port and logs it) and a Unix socket, in its own temporary
// directory; stops it with SIGTERM, after which it must exit with status 0.
// The binary is $LARDER_BIN, else $CARGO_TARGET_DIR/debug/larder (default target directory
// ~/.cache/larder-target).
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const LISTENING = /listening on tcp addr=(\d+\.\d+\.\d+\.\d+:\d+)/;

function larderBin() {
  if (process.env.LARDER_BIN) {
    return process.env.LARDER_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR || path.join(os.homedir(), ".cache", "larder-target");
  return path.join(target, "debug", "larder");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts `larder serve` with `extraArgs` added; resolves once it listens on TCP and on its
 * socket. The result has `addr` ("127.0.0.1:PORT"), `unixTarget` ("unix:/tmp/.../larder.sock"),
 * `dir` (its temporary directory), `pid`, `log()`, `stop()` (SIGTERM, resolves to the exit status)
 * and `cleanup()` (kills it if still running, removes the directory). With `options.dir`
 * (the `dir` of a daemon stopped before), it runs on that directory: the same data and socket
 * path, as a restart.
 */
async function startDaemon(extraArgs = [], options = {}) {
  const binary = larderBin();
  fs.accessSync(binary, fs.constants.X_OK); // a missing build fails here, naming the path
  // A short directory under /tmp: a Unix socket path must fit in 108 bytes.
  const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "larder-node-"));
  const socket = path.join(dir, "larder.sock");
  const logPath = path.join(dir, "larder.log");
  const logFd = fs.openSync(logPath, "w");
  // Only the flags below configure the daemon: no LARDER_* variable from the environment.
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("LARDER_")),
  );
  const args = [
    "serve",
    "--data-dir", path.join(dir, "data"),
    "--listen", "127.0.0.1:0",
    "--unix-socket", socket,
    "--log-format", "text",
    "--drain-timeout", "5s",
    ...extraArgs,
  ];
  const child = spawn(binary, args, { env, stdio: ["ignore", logFd, logFd] });
  fs.closeSync(logFd);
  let exited = null;
  const exit = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  const log = () => fs.readFileSync(logPath, "utf8");
  const cleanup = async () => {
    if (exited === null) {
      child.kill("SIGKILL");
      await exit;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  let addr = null;
  for (let i = 0; i < 200 && addr === null; i++) { // bounded: 200 x 50 ms
    const match = LISTENING.exec(log());
    if (match && fs.existsSync(socket)) {
      addr = match[1];
    } else if (exited !== null) {
      const text = log();
      await cleanup();
      throw new Error(`larder exited (${JSON.stringify(exited)}) before listening:\n${text}`);
    } else {
      await sleep(50);
    }
  }
  if (addr === null) {
    const text = log();
    await cleanup();
    throw new Error(`larder logged no 'listening on tcp' line within 10 s:\n${text}`);
  }

  const stop = async () => {
    if (exited === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      await exit;
      clearTimeout(timer);
    }
    return exited.code;
  };
  return { addr, unixTarget: `unix:${socket}`, socket, dir, pid: child.pid, log, stop, cleanup };
}

module.exports = { startDaemon };
