// test/pipeline.test.js: auto-pipelining against real daemons (node --test): many concurrent
// calls on one PipelineService/Run stream answered correctly, an error amid successes failing
// alone with its unary twin's error, a daemon restart mid-use (the next call opens a new
// stream), and `pipeline: false` making every call unary.
"use strict";

const { after, before, describe, it } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");

const {
  PIPELINE, PIPELINE_MAX_QUEUED, createClient, loadLarderV1, status,
} = require("../larder");
const { startDaemon } = require("./daemon");

const TIMEOUT = { timeout: 60_000 };

const fresh = (prefix) => `${prefix}:${crypto.randomUUID()}`;

/** Resolves to [answer, undefined] or [undefined, error]. */
const settle = (promise) => promise.then((r) => [r, undefined], (e) => [undefined, e]);

describe("auto-pipelining against a daemon", TIMEOUT, () => {
  let daemon;
  before(async () => {
    daemon = await startDaemon();
  });
  after(async () => {
    if (!daemon) return;
    try {
      const code = await daemon.stop();
      assert.equal(code, 0, `larder exited with ${code} after SIGTERM:\n${daemon.log()}`);
    } finally {
      await daemon.cleanup();
    }
  });

  it("is on by default", () => {
    assert.equal(PIPELINE, true);
    const larder = createClient(daemon.addr);
    assert.equal(larder.pipeline, true);
    larder.close();
  });

  for (const transport of ["tcp", "unix"]) {
    it(`answers many concurrent calls on one stream, over ${transport}`, async () => {
      const target = transport === "tcp" ? daemon.addr : daemon.unixTarget;
      const larder = createClient(target, { timeoutMs: 5000, pipeline: true });
      try {
        const keys = Array.from({ length: 300 }, () => fresh("many"));
        const sets = await Promise.all(
          keys.map((key) => larder.cache.Set({ key, value: Buffer.from(key) })),
        );
        assert.ok(sets.every((s) => s.stored === true && /^[1-9][0-9]*$/.test(s.version)));
        const gets = await Promise.all(keys.map((key) => larder.cache.Get({ key })));
        assert.deepEqual(gets.map((g) => g.value.toString()), keys);
        const counter = fresh("counter");
        const totals = await Promise.all(
          Array.from({ length: 100 }, () => larder.cache.Increment({ key: counter, delta: 1 })),
        );
        assert.deepEqual(totals.map((t) => Number(t.value)).sort((a, b) => a - b),
          Array.from({ length: 100 }, (_, i) => i + 1));
        const miss = await larder.cache.Get({ key: fresh("missing") });
        assert.deepEqual(miss, { found: false, value: Buffer.alloc(0), version: "0", ttl_ms: "0" });
        const created = await larder.sessions.CreateSession({ user_id: fresh("user") });
        const got = await larder.sessions.GetSession({ token: created.token });
        assert.equal(got.session.session_id, created.session.session_id);
        const request = { key: fresh("ip"), limit: 10, period_ms: 60000 };
        const checks = await Promise.all(
          Array.from({ length: 15 }, () => larder.ratelimit.Check(request)),
        );
        assert.equal(checks.filter((c) => c.allowed).length, 10);
        assert.ok(larder.pipelineStreams() >= 1);
      } finally {
        larder.close();
      }
    });
  }

  it("fails a bad call alone, with its unary twin's error", async () => {
    const larder = createClient(daemon.unixTarget, { timeoutMs: 5000, pipeline: true });
    const unary = createClient(daemon.unixTarget, { timeoutMs: 5000, pipeline: false });
    try {
      const keys = Array.from({ length: 50 }, () => fresh("ok"));
      await Promise.all(keys.map((key) => larder.cache.Set({ key, value: Buffer.from("v") })));
      const calls = keys.map((key) => larder.cache.Get({ key }));
      calls.splice(25, 0, larder.cache.Set({ key: "", value: Buffer.from("no key") }));
      const answers = await Promise.all(calls.map(settle));
      const [, bad] = answers.splice(25, 1)[0];
      assert.ok(answers.every(([r, e]) => e === undefined && r.value.toString() === "v"));
      const [, twin] = await settle(unary.cache.Set({ key: "", value: Buffer.from("no key") }));
      assert.equal(bad.code, status.INVALID_ARGUMENT);
      assert.equal(bad.code, twin.code);
      assert.equal(bad.details, twin.details);
      assert.equal(bad.message, twin.message);
      assert.match(bad.details, /key/);
      assert.ok(larder.pipelineStreams() >= 1);
      assert.equal(unary.pipelineStreams(), 0);
    } finally {
      larder.close();
      unary.close();
    }
  });

  it("fails an oversized call alone, with its unary twin's error", async () => {
    const larder = createClient(daemon.unixTarget, { timeoutMs: 10000, pipeline: true });
    const unary = createClient(daemon.unixTarget, { timeoutMs: 10000, pipeline: false });
    try {
      // Two values within the daemon's value limit (16 MiB) whose SetMany is past its message
      // limit: on the shared stream it would end the stream, and every call with it.
      const entries = [
        { key: fresh("big"), value: Buffer.alloc(9 << 20, "x") },
        { key: fresh("big"), value: Buffer.alloc(9 << 20, "y") },
      ];
      const keys = Array.from({ length: 50 }, () => fresh("small"));
      await Promise.all(keys.map((key) => larder.cache.Set({ key, value: Buffer.from("v") })));
      const calls = keys.map((key) => larder.cache.Get({ key }));
      calls.splice(25, 0, larder.cache.SetMany({ entries }));
      const answers = await Promise.all(calls.map(settle));
      const [, bad] = answers.splice(25, 1)[0];
      assert.ok(answers.every(([r, e]) => e === undefined && r.value.toString() === "v"));
      const [, twin] = await settle(unary.cache.SetMany({ entries }));
      // Past the message limit (tonic's decoder answers OUT_OF_RANGE), not UNAVAILABLE.
      assert.ok([status.OUT_OF_RANGE, status.RESOURCE_EXHAUSTED].includes(bad?.code), bad);
      assert.equal(bad.code, twin?.code);
      assert.equal(bad.details, twin.details);
      const again = await Promise.all(keys.map((key) => larder.cache.Get({ key })));
      assert.ok(again.every((g) => g.value.toString() === "v"));
    } finally {
      larder.close();
      unary.close();
    }
  });

  it("never writes a call whose deadline passed while it waited to be written", async () => {
    const larder = createClient(daemon.unixTarget, { timeoutMs: 10000, pipeline: true });
    try {
      const value = Buffer.alloc(4096, "w");
      const sets = Array.from({ length: 300 }, () => larder.cache.Set({ key: fresh("w"), value }));
      const counter = fresh("late");
      const late = larder.cache.Increment({ key: counter, delta: 1 }, { timeoutMs: 1 });
      assert.ok(larder.pipelineQueued() > 0, "the increment waits behind the sets");
      const until = Date.now() + 5;
      while (Date.now() < until); // its deadline passes before the stream takes more
      const [, err] = await settle(late);
      assert.equal(err?.code, status.DEADLINE_EXCEEDED);
      await Promise.all(sets);
      const got = await larder.cache.Get({ key: counter });
      assert.equal(got.found, false, "the timed-out increment was applied later");
    } finally {
      larder.close();
    }
  });

  it("makes every call unary with pipeline: false", async () => {
    const larder = createClient(daemon.addr, { timeoutMs: 5000, pipeline: false });
    try {
      assert.equal(larder.pipeline, false);
      const keys = Array.from({ length: 50 }, () => fresh("unary"));
      await Promise.all(keys.map((key) => larder.cache.Set({ key, value: Buffer.from("u") })));
      const gets = await Promise.all(keys.map((key) => larder.cache.Get({ key })));
      assert.ok(gets.every((g) => g.value.toString() === "u"));
      assert.equal(larder.pipelineStreams(), 0);
    } finally {
      larder.close();
    }
  });

  it("rejects a non-boolean pipeline option", () => {
    assert.throws(() => createClient(daemon.addr, { pipeline: "yes" }), /pipeline must be/);
  });
});

describe("auto-pipelining against a daemon that stalls the stream", TIMEOUT, () => {
  it("holds at most PIPELINE_MAX_QUEUED calls back, and sends the rest unary", async () => {
    const daemon = await startDaemon(["--max-pipeline-inflight", "1"]);
    const larder = createClient(daemon.unixTarget, { timeoutMs: 30000, pipeline: true });
    try {
      const value = Buffer.alloc(4096, "q");
      const keys = Array.from({ length: 3000 }, () => fresh("queued"));
      const sets = keys.map((key) => larder.cache.Set({ key, value }));
      assert.equal(larder.pipelineQueued(), PIPELINE_MAX_QUEUED);
      const stored = await Promise.all(sets);
      assert.ok(stored.every((s) => s.stored === true));
      assert.equal(larder.pipelineQueued(), 0);
      const got = await larder.cache.Get({ key: keys[keys.length - 1] });
      assert.equal(got.value.toString(), value.toString());
    } finally {
      larder.close();
      assert.equal(await daemon.stop(), 0);
      await daemon.cleanup();
    }
  });
});

describe("auto-pipelining with a daemon without the service", TIMEOUT, () => {
  it("reruns the call unary with what is left of its timeout", async () => {
    const grpc = require("@grpc/grpc-js");
    const v1 = loadLarderV1();
    const remaining = [];
    const server = new grpc.Server();
    server.addService(v1.PipelineService.service, {
      Run: (call) => {
        // Slow to say it lacks the service.
        setTimeout(() => call.emit("error", {
          code: status.UNIMPLEMENTED, details: "no PipelineService",
        }), 1000);
      },
    });
    server.addService(v1.CacheService.service, {
      Get: (call, callback) => {
        remaining.push(call.getDeadline() - Date.now());
        callback(null, {});
      },
    });
    const port = await new Promise((resolve, reject) => server.bindAsync("127.0.0.1:0",
      grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    const larder = createClient(`127.0.0.1:${port}`, { timeoutMs: 3000, pipeline: true });
    try {
      const got = await larder.cache.Get({ key: fresh("old") });
      assert.equal(got.found, false);
      // The rerun carried the deadline the call had left, not a fresh 3 s.
      assert.equal(remaining.length, 1);
      assert.ok(remaining[0] < 2500, `remaining: ${remaining[0]} ms`);
    } finally {
      larder.close();
      server.forceShutdown();
    }
  });
});

describe("auto-pipelining across a daemon restart", TIMEOUT, () => {
  it("fails the broken stream's calls, and the next call opens a new stream", async () => {
    const first = await startDaemon();
    let second;
    const larder = createClient(first.unixTarget, { timeoutMs: 5000, pipeline: true });
    try {
      const key = fresh("kept");
      assert.equal((await larder.cache.Set({ key, value: Buffer.from("durable") })).stored, true);
      assert.ok(larder.pipelineStreams() >= 1);
      // Stop the daemon and start another on the same socket path and data directory.
      assert.equal(await first.stop(), 0);
      const down = await settle(larder.cache.Get({ key }));
      assert.equal(down[1]?.code, status.UNAVAILABLE, "a call while the daemon is down");
      second = await startDaemon([], { dir: first.dir });
      let got;
      for (let i = 0; i < 50 && got === undefined; i++) { // bounded: the channel reconnects
        const [answer] = await settle(larder.cache.Get({ key }));
        got = answer;
        if (got === undefined) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(got?.value.toString(), "durable");
      assert.ok(larder.pipelineStreams() >= 2, `streams: ${larder.pipelineStreams()}`);
    } finally {
      larder.close();
      if (second) {
        assert.equal(await second.stop(), 0);
        await second.cleanup(); // removes the directory both used
      } else {
        await first.cleanup();
      }
    }
  });
});

describe("auto-pipelining when the daemon retires connections", TIMEOUT, () => {
  it("renews its stream before the connection is closed under it", async () => {
    // GOAWAY 1 s after a connection opens, closed 3 s later with whatever streams are open on it.
    const daemon = await startDaemon(["--max-connection-age", "1s",
      "--max-connection-age-grace", "3s"]);
    const larder = createClient(daemon.unixTarget, { timeoutMs: 5000, pipeline: true });
    try {
      // Writes (never retried) for longer than age plus grace: a stream kept for the
      // connection's life would be cut with some of them in flight.
      const stop = Date.now() + 8000;
      let written = 0;
      const writer = async (n) => {
        const key = fresh(`aging${n}`);
        while (Date.now() < stop) {
          assert.equal((await larder.cache.Set({ key, value: Buffer.from("v") })).stored, true);
          written += 1;
          await new Promise((r) => setTimeout(r, 5));
        }
      };
      await Promise.all(Array.from({ length: 8 }, (_, n) => writer(n)));
      assert.ok(written > 100, `written: ${written}`);
      assert.ok(larder.pipelineStreams() >= 2, `streams: ${larder.pipelineStreams()}`);
    } finally {
      larder.close();
      assert.equal(await daemon.stop(), 0);
      await daemon.cleanup();
    }
  });
});
