// test/tls.test.js: createClient's TLS options against real daemons serving TLS (certificates
// made by openssl at test time, see certs.js): calls trusting the CA by rootCertificates, by IP
// address and by name; UNAVAILABLE without the CA; a certificate for another name, with and
// without grpc.ssl_target_name_override; certChain and privateKey (the daemon asks for no client
// certificate, so only their handling is checked, not mutual TLS). Then the option errors and
// the guard that keeps a bearer token off cleartext connections to other machines, which acts
// in createClient itself: those tests connect nowhere.
"use strict";

const { after, before, describe, it } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

const { createClient, isLocalTarget, status } = require("../larder");
const { makeCerts } = require("./certs");
const { startDaemon } = require("./daemon");

const TIMEOUT = { timeout: 60_000 };
const TOKEN = "q2cM5y0rN1Xl0sVfG9k1m2Wc8Yb4f9+vTtKq3zq9h6E=";

/** Awaits `promise`, which must reject with gRPC status `code`; returns the error. */
async function rejectsWith(promise, code) {
  const err = await promise.then(
    (r) => assert.fail(`expected status ${code}, got the answer ${JSON.stringify(r)}`),
    (e) => e,
  );
  assert.equal(err.code, code, `expected status ${code}, got ${err.code}: ${err.details}`);
  return err;
}

/** Runs `fn(client)` with a client of `target` made with `options`, then closes the client. */
async function withClient(target, options, fn) {
  const client = createClient(target, { timeoutMs: 5000, ...options });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/** Sets a fresh key and reads it back through `client`. */
async function roundTrip(client) {
  const key = `tls:${crypto.randomUUID()}`;
  assert.equal((await client.cache.Set({ key, value: Buffer.from("v") })).stored, true);
  assert.deepEqual((await client.cache.Get({ key })).value, Buffer.from("v"));
}

/**
 * Starts a daemon serving TLS with the certificate `pair()` names and requiring `TOKEN`, before
 * the tests of the enclosing describe; stops it (exit 0) after.
 */
function withTlsDaemon(certs, pair) {
  const state = {};
  before(async () => {
    const tokens = path.join(certs().dir, `tokens-${crypto.randomUUID()}`);
    fs.writeFileSync(tokens, `${TOKEN}\n`, { mode: 0o600 });
    const { cert, key } = pair();
    state.daemon = await startDaemon([
      "--tls-cert", cert, "--tls-key", key, "--auth-token-file", tokens,
    ]);
    state.port = state.daemon.addr.split(":")[1];
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

describe("TLS", TIMEOUT, () => {
  let certs;
  before(() => {
    certs = makeCerts();
  });
  after(() => certs?.cleanup());

  describe("with a certificate for localhost and 127.0.0.1", () => {
    const state = withTlsDaemon(() => certs, () => certs.server);

    it("serves a call that trusts the CA, by IP address and by name", async () => {
      const tls = { tls: true, rootCertificates: certs.ca, token: TOKEN };
      await withClient(state.daemon.addr, tls, roundTrip);
      // PEM as a string works as well as a Buffer.
      const asText = { ...tls, rootCertificates: certs.ca.toString() };
      await withClient(`localhost:${state.port}`, asText, roundTrip);
    });

    it("checks the token over TLS", async () => {
      const tls = { tls: true, rootCertificates: certs.ca };
      await withClient(state.daemon.addr, tls, async (client) => {
        const err = await rejectsWith(client.cache.Get({ key: "k" }), status.UNAUTHENTICATED);
        assert.equal(err.details, "missing bearer token");
      });
    });

    it("fails with UNAVAILABLE without the CA (Node's bundled roots do not trust it)", async () => {
      await withClient(state.daemon.addr, { tls: true, token: TOKEN }, async (client) => {
        const err = await rejectsWith(client.cache.Get({ key: "k" }), status.UNAVAILABLE);
        assert.match(err.details, /certificate/);
      });
    });

    it("takes certChain and privateKey (the daemon asks for no client certificate)", async () => {
      const mtls = {
        tls: true, rootCertificates: certs.ca, token: TOKEN,
        certChain: certs.client.certPem, privateKey: certs.client.keyPem,
      };
      await withClient(state.daemon.addr, mtls, roundTrip);
    });
  });

  describe("with a certificate for larder.internal only", () => {
    const state = withTlsDaemon(() => certs, () => certs.named);

    it("fails by IP address unless grpc.ssl_target_name_override names it", async () => {
      const tls = { tls: true, rootCertificates: certs.ca, token: TOKEN };
      await withClient(state.daemon.addr, tls, async (client) => {
        const err = await rejectsWith(client.cache.Get({ key: "k" }), status.UNAVAILABLE);
        assert.match(err.details, /altnames/);
      });
      const override = { "grpc.ssl_target_name_override": "larder.internal" };
      const named = { ...tls, channelOptions: override };
      await withClient(state.daemon.addr, named, roundTrip);
    });
  });

  it("refuses a key that does not belong to the certificate, naming the options", () => {
    const wrong = { certChain: certs.client.certPem, privateKey: certs.server.keyPem };
    assert.throws(() => createClient("127.0.0.1:7379", { tls: true, ...wrong }),
      /^Error: cannot use the TLS certChain, privateKey: .*key values mismatch/);
  });
});

describe("TLS options", () => {
  const PEM_CERT = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  const PEM_KEY = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

  it("need tls: true, and the error names the option", () => {
    for (const [name, value] of [
      ["rootCertificates", PEM_CERT], ["certChain", PEM_CERT], ["privateKey", PEM_KEY],
    ]) {
      for (const tls of [undefined, false]) {
        assert.throws(() => createClient("127.0.0.1:7379", { tls, [name]: value }), {
          name: "Error",
          message: `${name} is a TLS option, but tls is not set: pass tls: true with it`,
        });
      }
    }
  });

  it("refuse a client certificate without its key, and a key without its certificate", () => {
    assert.throws(() => createClient("127.0.0.1:7379", { tls: true, certChain: PEM_CERT }),
      { message: "certChain is given without privateKey: a client certificate needs its key" });
    assert.throws(() => createClient("127.0.0.1:7379", { tls: true, privateKey: PEM_KEY }),
      { message: "privateKey is given without certChain: pass the client certificate too" });
  });

  it("refuse what is not PEM, and values of the wrong type, naming the option", () => {
    assert.throws(() => createClient("127.0.0.1:7379", {
      tls: true, rootCertificates: "/etc/larder/cert.pem",
    }), /^Error: rootCertificates holds no PEM certificate .*not its path$/);
    assert.throws(() => createClient("127.0.0.1:7379", {
      tls: true, certChain: PEM_CERT, privateKey: PEM_CERT,
    }), /^Error: privateKey holds no PEM private key/);
    assert.throws(() => createClient("127.0.0.1:7379", { tls: true, rootCertificates: 1 }),
      { name: "TypeError", message: "rootCertificates must be PEM text, as a string or a Buffer" });
    assert.throws(() => createClient("127.0.0.1:7379", { tls: "yes" }),
      { name: "TypeError", message: "tls must be true or false" });
    assert.throws(() => createClient("127.0.0.1:7379", { allowInsecureToken: 1 }),
      { name: "TypeError", message: "allowInsecureToken must be true or false" });
  });
});

describe("a bearer token in cleartext", () => {
  const REMOTE = [
    "db.example.com:7379", "10.1.2.3:7379", "[2001:db8::1]:7379", "192.168.1.10",
    "dns:///db.example.com:7379", "ipv4:127.0.0.1:7379,10.1.2.3:7379",
    "localhost.example.com:7379", "127.0.0.1.example.com:7379",
  ];
  const LOCAL = [
    "127.0.0.1:7379", "127.1.2.3:7379", "[::1]:7379", "localhost:7379", "LocalHost:7379",
    "unix:/run/larder/larder.sock", "unix:///run/larder/larder.sock",
    "dns:///localhost:7379", "ipv4:127.0.0.1:7379,127.0.0.2:7379", "ipv6:[::1]:7379",
  ];

  // These clients are made and closed without a call: nothing is sent to the remote targets.
  it("is refused to a host that is not loopback, saying what to pass", () => {
    for (const target of REMOTE) {
      assert.equal(isLocalTarget(target), false, target);
      assert.throws(() => createClient(target, { token: TOKEN }), (err) => {
        assert.equal(err.constructor, Error);
        assert.equal(err.message,
          `refusing to send the bearer token in cleartext to ${target}, which is neither ` +
          "loopback (127.0.0.0/8, ::1, localhost) nor a unix: socket: pass tls: true (with " +
          "rootCertificates if a private CA signed the server's certificate), or " +
          "allowInsecureToken: true if the network between them is trusted");
        assert.ok(!err.message.includes(TOKEN), "the message must not show the token");
        return true;
      });
    }
  });

  it("goes there with allowInsecureToken: true or over TLS; no token, no guard", () => {
    for (const target of REMOTE) {
      for (const options of [
        { token: TOKEN, allowInsecureToken: true },
        { token: TOKEN, tls: true },
        {},
        { token: "" },
      ]) {
        createClient(target, options).close();
      }
    }
  });

  it("is allowed to loopback hosts and Unix sockets", () => {
    for (const target of LOCAL) {
      assert.equal(isLocalTarget(target), true, target);
      createClient(target, { token: TOKEN }).close();
    }
  });
});
