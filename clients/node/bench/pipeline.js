// bench/pipeline.js: auto-pipelining against unary calls, in one run. Two clients of one daemon,
// `pipeline: true` and `pipeline: false`, take turns (A/B/A/B...), each round `--tasks`
// concurrent callers calling Get or Set for `--seconds`; per mode it prints calls per second
// (wall clock, load-dependent) and the client's and the daemon's CPU time per call (less so).
// Usage: LARDER_BIN=... node bench/pipeline.js [--op get|set] [--tasks 64] [--seconds 3]
//        [--rounds 3] [--target unix|tcp]
"use strict";

const fs = require("node:fs");
const { parseArgs } = require("node:util");

const { createClient } = require("../larder");
const { startDaemon } = require("../test/daemon");

const TICKS = 100; // Linux's USER_HZ: /proc/PID/stat counts CPU time in 1/100 s

/** User plus system CPU seconds of process `pid` (all its threads). */
function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(")").pop().trim().split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function round(larder, op, tasks, seconds) {
  const value = Buffer.alloc(100, "x");
  const stop = Date.now() + seconds * 1000;
  let done = 0;
  const caller = async (n) => {
    const key = `bench:${n}`;
    while (Date.now() < stop) {
      if (op === "get") await larder.cache.Get({ key });
      else await larder.cache.Set({ key, value });
      done += 1;
    }
  };
  await Promise.all(Array.from({ length: tasks }, (_, n) => caller(n)));
  return done;
}

async function main() {
  const { values } = parseArgs({
    options: {
      op: { type: "string", default: "get" },
      tasks: { type: "string", default: "64" },
      seconds: { type: "string", default: "3" },
      rounds: { type: "string", default: "3" },
      target: { type: "string", default: "unix" },
    },
  });
  const [tasks, seconds, rounds] = [values.tasks, values.seconds, values.rounds].map(Number);
  const daemon = await startDaemon();
  const results = { true: [], false: [] };
  try {
    const target = values.target === "unix" ? daemon.unixTarget : daemon.addr;
    const pid = daemon.pid;
    const clients = {};
    for (const mode of [true, false]) {
      clients[mode] = createClient(target, { timeoutMs: 10000, pipeline: mode });
      await Promise.all(Array.from({ length: tasks }, (_, n) =>
        clients[mode].cache.Set({ key: `bench:${n}`, value: Buffer.alloc(100, "x") })));
    }
    for (let r = 0; r < rounds; r++) {
      for (const mode of [true, false]) {
        const [client0, server0, start] = [process.cpuUsage(), cpuSeconds(pid), Date.now()];
        const calls = await round(clients[mode], values.op, tasks, seconds);
        const wall = (Date.now() - start) / 1000;
        const used = process.cpuUsage(client0);
        results[mode].push([
          calls / wall,
          (used.user + used.system) / calls,
          ((cpuSeconds(pid) - server0) / calls) * 1e6,
        ]);
      }
    }
    for (const mode of [true, false]) clients[mode].close();
  } finally {
    await daemon.stop();
    await daemon.cleanup();
  }
  console.log(`node op=${values.op} tasks=${tasks} target=${values.target}`);
  for (const mode of [true, false]) {
    const rows = results[mode];
    console.log(
      `  ${(mode ? "pipelined" : "unary").padEnd(9)}` +
        ` calls/s ${median(rows.map((r) => r[0])).toFixed(0)}` +
        ` (runs ${rows.map((r) => r[0].toFixed(0)).join(", ")})` +
        `  client CPU/call ${median(rows.map((r) => r[1])).toFixed(1)} us` +
        `  daemon CPU/call ${median(rows.map((r) => r[2])).toFixed(1)} us`,
    );
  }
  const ratios = results.true.map((p, i) => (p[0] / results.false[i][0]).toFixed(2));
  console.log(`  pipelined/unary calls/s per round: ${ratios.join(", ")}`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
