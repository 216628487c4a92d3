// test/larder.test.js: larder.js against real daemons (node --test): cache Set/Get with a miss,
// a session's create/get/revoke, a rate limit checked until denied, INVALID_ARGUMENT naming
// the field, each over TCP and over the Unix socket; the Unix-socket authority; bearer-token
// auth; deadlines; and the example docs/clients.md shows (example.js), run as it stands.
"use strict";

const { after, before, describe, it } = require("node:test");
const assert = require("node:assert/strict");
const { execFile } = require("node:child_process");
const crypto = require("node:crypto");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const { promisify } = require("node:util");

const { channelOptions, createClient, status } = require("../larder");
const { startDaemon } = require("./daemon");

const TIMEOUT = { timeout: 60_000 };

/** A key no other test uses (the tests of one daemon share it). */
const fresh = (prefix) => `${prefix}:${crypto.randomUUID()}`;

/** Awaits `promise`, which must reject with gRPC status `code`; returns the error. */
async function rejectsWith(promise, code) {
  const err = await promise.then(
    (r) => assert.fail(`expected status ${code}, got the answer ${JSON.stringify(r)}`),
    (e) => e,
  );
  assert.equal(err.code, code, `expected status ${code}, got ${err.code}: ${err.details}`);
  return err;
}

/** The ```LANG blocks of a Markdown text, each without its fences and its indentation. */
function readmeCodeBlocks(markdown, lang) {
  const blocks = [];
  const fence = new RegExp("^( *)```" + lang + "\\n([\\s\\S]*?)^\\1```$", "gm");
  for (const [, indent, body] of markdown.matchAll(fence)) {
    const lines = body.split("\n").map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l));
    blocks.push(lines.join("\n"));
  }
  return blocks;
}

/** Starts a daemon before the tests of the enclosing describe, stops it (exit 0) after. */
function withDaemon(extraArgs = () => []) {
  const state = {};
  before(async () => {
    state.daemon = await startDaemon(extraArgs());
  });
  after(async () => {
    if (!state.daemon) return;
    try {
      const code = await state.daemon.stop();
      assert.equal(code, 0, `larder exited with ${code} after SIGTERM:\n${state.daemon.log()}`);
    } finally {
      await state.daemon.cleanup();
    }
  });
  return state;
}

describe("larder.js against a daemon", TIMEOUT, () => {
  const state = withDaemon();

  for (const transport of ["tcp", "unix"]) {
    describe(`over ${transport}`, () => {
      let larder;
      before(() => {
        const { addr, unixTarget } = state.daemon;
        larder = createClient(transport === "tcp" ? addr : unixTarget, { timeoutMs: 5000 });
      });
      after(() => larder.close());

      it("sets and gets a value, and a miss answers found = false", async () => {
        const key = fresh("greeting");
        const set = await larder.cache.Set({ key, value: Buffer.from("hello"), ttl_ms: 60000 });
        assert.equal(set.stored, true);
        assert.match(set.version, /^[1-9][0-9]*$/); // a 64-bit version, kept exact as a string
        const got = await larder.cache.Get({ key });
        assert.equal(got.found, true);
        assert.deepEqual(got.value, Buffer.from("hello"));
        assert.equal(got.version, set.version);
        assert.ok(Number(got.ttl_ms) > 0 && Number(got.ttl_ms) <= 60000, got.ttl_ms);

        const miss = await larder.cache.Get({ key: fresh("missing") });
        assert.deepEqual(miss, { found: false, value: Buffer.alloc(0), version: "0", ttl_ms: "0" });
      });

      it("keeps to the Set condition (a lock with CONDITION_IF_ABSENT)", async () => {
        const key = fresh("lock");
        const lock = { key, ttl_ms: 30000, condition: "CONDITION_IF_ABSENT" };
        const first = await larder.cache.Set({ ...lock, value: Buffer.from("worker-1") });
        const second = await larder.cache.Set({ ...lock, value: Buffer.from("worker-2") });
        assert.equal(first.stored, true);
        assert.equal(second.stored, false);
        assert.equal(second.version, first.version); // not stored: the current version
        assert.deepEqual((await larder.cache.Get({ key })).value, Buffer.from("worker-1"));
      });

      it("creates, gets and revokes a session", async () => {
        const user = fresh("user");
        const created = await larder.sessions.CreateSession({
          user_id: user, data: { csrf: "abc" }, device_info: "node",
        });
        assert.match(created.token, /^lds_[A-Za-z0-9_-]{43}$/);
        assert.equal(created.session.user_id, user);
        assert.deepEqual(created.session.data, { csrf: "abc" });

        const got = await larder.sessions.GetSession({ token: created.token });
        assert.equal(got.found, true);
        assert.equal(got.session.session_id, created.session.session_id);
        assert.equal(got.session.device_info, "node");

        const token = { token: created.token };
        assert.deepEqual(await larder.sessions.RevokeSession(token), { revoked: true });
        assert.equal((await larder.sessions.GetSession(token)).found, false);
        assert.deepEqual(await larder.sessions.RevokeSession(token), { revoked: false });
      });

      it("checks a rate limit until it denies, with retry_after_ms", async () => {
        const request = { key: fresh("ip"), limit: 3, period_ms: 60000 };
        const remaining = [];
        for (let i = 0; i < 3; i++) {
          const r = await larder.ratelimit.Check(request);
          assert.equal(r.allowed, true);
          assert.equal(r.limit, 3);
          assert.equal(r.retry_after_ms, "0");
          remaining.push(r.remaining);
        }
        assert.deepEqual(remaining, [2, 1, 0]);

        const denied = await larder.ratelimit.Check(request);
        assert.equal(denied.allowed, false);
        assert.equal(denied.remaining, 0);
        // GCRA, 3 per minute: the next unit comes back 20 s after the first was spent.
        const retry = Number(denied.retry_after_ms);
        assert.ok(retry > 0 && retry <= 20000, `retry_after_ms = ${denied.retry_after_ms}`);
        // Peek answers the same without consuming; Reset gives the budget back.
        assert.equal((await larder.ratelimit.Peek(request)).allowed, false);
        assert.deepEqual(await larder.ratelimit.Reset({ key: request.key }), { existed: true });
        assert.equal((await larder.ratelimit.Check(request)).allowed, true);
      });

      it("answers INVALID_ARGUMENT naming the field, and writes nothing", async () => {
        const err = await rejectsWith(larder.cache.Set({ key: "", value: Buffer.from("v") }),
          status.INVALID_ARGUMENT);
        assert.match(err.details, /^key: /);

        const ok = fresh("batch");
        const batch = larder.cache.SetMany({
          entries: [{ key: ok, value: Buffer.from("1") }, { key: "", value: Buffer.from("2") }],
        });
        const batchErr = await rejectsWith(batch, status.INVALID_ARGUMENT);
        assert.match(batchErr.details, /^entries\[1\]\.key: /);
        assert.equal((await larder.cache.Get({ key: ok })).found, false); // all or nothing
      });
    });
  }

  describe("the Unix-socket authority", () => {
    it("is localhost for unix: targets, unless the caller names one", () => {
      assert.deepEqual(channelOptions("unix:/run/larder/larder.sock"),
        { "grpc.default_authority": "localhost" });
      assert.deepEqual(channelOptions("127.0.0.1:7379"), {});
      const own = { "grpc.default_authority": "larder" };
      assert.deepEqual(channelOptions("unix:/x", own), own);
    });

    it("must not be the socket path: the server refuses it", async () => {
      // What grpc-core clients send unless told otherwise; the call fails, so the option matters.
      const { socket, unixTarget } = state.daemon;
      const trap = createClient(unixTarget, {
        timeoutMs: 5000, channelOptions: { "grpc.default_authority": socket },
      });
      try {
        await rejectsWith(trap.cache.Get({ key: "k" }), status.INTERNAL);
      } finally {
        trap.close();
      }
      const larder = createClient(unixTarget, { timeoutMs: 5000 });
      try {
        assert.equal((await larder.cache.Get({ key: fresh("k") })).found, false);
      } finally {
        larder.close();
      }
    });
  });

  describe("the docs' example", () => {
    it("runs as it stands and is the text the docs show", async () => {
      const dir = path.resolve(__dirname, "..");
      const { stdout } = await promisify(execFile)(process.execPath, ["example.js"], {
        cwd: dir,
        env: { ...process.env, LARDER_TARGET: state.daemon.unixTarget, LARDER_TOKEN: "" },
        timeout: 30_000,
      });
      const lines = stdout.trim().split("\n");
      assert.match(lines[0], /^profile: true \{\} version [1-9][0-9]*$/);
      assert.deepEqual(lines.slice(1), [
        "lock: true",
        "session: true 42 abc",
        "allowed: true remaining 9",
      ]);

      const example = fs.readFileSync(path.join(dir, "example.js"), "utf8");
      const code = example.slice(example.indexOf("const { createClient"));
      const readme = fs.readFileSync(path.join(dir, "..", "..", "docs", "clients.md"), "utf8");
      assert.ok(readmeCodeBlocks(readme, "js").includes(code),
        "docs/clients.md must show clients/node/example.js from its require() line on, verbatim");
    });
  });
});

describe("bearer tokens", TIMEOUT, () => {
  const token = "q2cM5y0rN1Xl0sVfG9k1m2Wc8Yb4f9+vTtKq3zq9h6E=";
  let tokensDir;
  const state = withDaemon(() => {
    tokensDir = fs.mkdtempSync(path.join(os.tmpdir(), "larder-node-tokens-"));
    const file = path.join(tokensDir, "tokens");
    fs.writeFileSync(file, `# test client\n${token}\n`, { mode: 0o600 });
    return ["--auth-token-file", file];
  });
  after(() => fs.rmSync(tokensDir, { recursive: true, force: true }));

  for (const transport of ["tcp", "unix"]) {
    it(`are required over ${transport}`, async () => {
      const target = transport === "tcp" ? state.daemon.addr : state.daemon.unixTarget;
      const clients = [];
      const client = (options) => {
        const c = createClient(target, { timeoutMs: 5000, ...options });
        clients.push(c);
        return c;
      };
      try {
        const none = await rejectsWith(client({}).cache.Get({ key: "k" }), status.UNAUTHENTICATED);
        assert.equal(none.details, "missing bearer token");
        const wrong = client({ token: "wrong-token-0123456789" }).cache.Set({ key: "k" });
        assert.equal((await rejectsWith(wrong, status.UNAUTHENTICATED)).details,
          "invalid bearer token");
        const authed = client({ token });
        const key = fresh("k");
        assert.equal((await authed.cache.Set({ key, value: Buffer.from("v") })).stored, true);
        assert.deepEqual((await authed.cache.Get({ key })).value, Buffer.from("v"));
      } finally {
        clients.forEach((c) => c.close());
      }
    });
  }
});

describe("deadlines", TIMEOUT, () => {
  it("end a call to a server that never answers", async () => {
    // Accepts TCP connections but never speaks HTTP/2: only the deadline can end the call.
    const sockets = [];
    const silent = net.createServer((s) => sockets.push(s));
    await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
    const { port } = silent.address();
    const larder = createClient(`127.0.0.1:${port}`, { timeoutMs: 300 });
    try {
      const started = Date.now();
      await rejectsWith(larder.cache.Get({ key: "k" }), status.DEADLINE_EXCEEDED);
      const set = larder.cache.Set({ key: "k" }, { timeoutMs: 200 });
      await rejectsWith(set, status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - started < 5000, "the deadlines were not kept");
    } finally {
      larder.close();
      sockets.forEach((s) => s.destroy());
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("must be positive", () => {
    assert.throws(() => createClient("127.0.0.1:7379", { timeoutMs: 0 }), RangeError);
  });
});
