// example.js: the Node example of docs/clients.md, runnable as it stands (node example.js,
// with LARDER_TARGET and LARDER_TOKEN naming the daemon); test/larder.test.js runs it against
// a daemon and checks that docs/clients.md shows this very text.
const { createClient, status } = require("larder-client");

async function main() {
  // "127.0.0.1:7379" or "unix:/run/larder/larder.sock"; one client per process, shared.
  const larder = createClient(process.env.LARDER_TARGET || "127.0.0.1:7379", {
    token: process.env.LARDER_TOKEN, // sent as "authorization: Bearer …"; unset = no auth
    timeoutMs: 1000, // the deadline of every call; a call may pass its own { timeoutMs }
  });
  try {
    const profile = { namespace: "myapp", key: "user:42:profile" };
    await larder.cache.Set({ ...profile, value: Buffer.from("{}"), ttl_ms: 300000 });
    const r = await larder.cache.Get(profile); // a miss is { found: false }, not an error
    // 64-bit numbers (version, ttl_ms, ...) are strings, to stay exact.
    console.log("profile:", r.found, r.value.toString(), "version", r.version);

    // A lock (SET NX with expiry): exactly one worker gets stored = true.
    const lock = await larder.cache.Set({
      key: "lock:report", value: Buffer.from("worker-3"), ttl_ms: 30000,
      condition: "CONDITION_IF_ABSENT",
    });
    console.log("lock:", lock.stored);

    const { token } = await larder.sessions.CreateSession({
      user_id: "42", data: { csrf: "abc" }, device_info: "node",
    });
    const s = await larder.sessions.GetSession({ token }); // slides the idle expiry
    console.log("session:", s.found, s.session.user_id, s.session.data.csrf);

    const limit = await larder.ratelimit.Check({
      key: "ip:203.0.113.9", limit: 10, period_ms: 60000, // or a policy: "contact"
    });
    console.log("allowed:", limit.allowed, "remaining", limit.remaining);
    if (!limit.allowed) {
      console.log("429, Retry-After:", Math.ceil(Number(limit.retry_after_ms) / 1000));
    }
  } catch (err) {
    // err.code is a grpc.status value, err.details the server's message (it names the field).
    if (err.code === status.INVALID_ARGUMENT) console.error("bad request:", err.details);
    throw err;
  } finally {
    larder.close();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exitCode = 1;
});
