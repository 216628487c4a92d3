// larder.js: the Node client of Larder. Loads proto/larder/v1/*.proto of the repository at run
// time (@grpc/proto-loader, no generated code), opens one channel to a daemon over TCP
// ("127.0.0.1:7379") or a Unix socket ("unix:/run/larder/larder.sock"), and exposes the three
// services with promise-returning methods named as the RPCs (cache.Get, sessions.CreateSession,
// ratelimit.Check, ...). Every call carries a deadline and, when a token is given, the
// `authorization: Bearer <token>` metadata. A failed call rejects with grpc-js's ServiceError
// (`err.code` is a `grpc.status` value, `err.details` the server's message). Nothing is retried.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_FILES = [
  "larder/v1/cache.proto",
  "larder/v1/session.proto",
  "larder/v1/ratelimit.proto",
];

// How messages look in JavaScript. keepCase: fields are spelled as in the .proto (ttl_ms), like
// every other example in the README. longs: String keeps 64-bit versions and timestamps exact
// (a JavaScript number is not past 2^53); requests accept numbers or strings. enums: String
// gives "CONDITION_IF_ABSENT" rather than 2. defaults: a miss answers { found: false, ... }
// instead of leaving the field out.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };

/** The directory holding larder/v1/*.proto: $LARDER_PROTO_DIR, else the repository's proto/. */
function defaultProtoDir() {
  return process.env.LARDER_PROTO_DIR || path.resolve(__dirname, "..", "..", "proto");
}

/** Loads the larder.v1 package (service constructors and message types) from `protoDir`. */
function loadLarderV1(protoDir = defaultProtoDir()) {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    ...LOADER_OPTIONS,
    includeDirs: [protoDir],
  });
  return grpc.loadPackageDefinition(definition).larder.v1;
}

/**
 * Channel options for `target`. A `unix:` target gets `grpc.default_authority = "localhost"`:
 * over a Unix socket there is no host name to send as HTTP/2's :authority, and an authority
 * that is the socket path is refused by the server. grpc-js 1.14 already picks "localhost"
 * for unix: targets by itself; naming it keeps that true whatever the version (grpc-core
 * clients, such as Python's grpcio, send the path).
 */
function channelOptions(target, extra = {}) {
  const options = { ...extra };
  if (target.startsWith("unix:") && !("grpc.default_authority" in options)) {
    options["grpc.default_authority"] = "localhost";
  }
  return options;
}

/**
 * Wraps every unary method of a grpc-js client as `method(request, { timeoutMs }) -> Promise`.
 * The service's own method names are used (the keys of its definition), so this covers every
 * RPC the .proto declares, including ones added later.
 */
function promisify(client, Service, metadata, timeoutMs) {
  const api = {};
  for (const name of Object.keys(Service.service)) {
    api[name] = (request = {}, callOptions = {}) => {
      const ms = callOptions.timeoutMs ?? timeoutMs;
      return new Promise((resolve, reject) => {
        client[name](request, metadata.clone(), { deadline: Date.now() + ms }, (err, response) =>
          err ? reject(err) : resolve(response),
        );
      });
    };
  }
  return api;
}

/**
 * Connects to a Larder daemon. Creates no connection until the first call; create one client
 * per process and share it.
 *
 * @param {string} target "host:port" or "unix:/path/to/socket" (also "unix:///path").
 * @param {object} [options]
 * @param {string} [options.token] sent as `authorization: Bearer <token>` on every call.
 * @param {number} [options.timeoutMs=1000] deadline of every call, unless the call passes its
 *   own `{ timeoutMs }` as second argument.
 * @param {object} [options.channelOptions] extra grpc-js channel options.
 * @param {string} [options.protoDir] the directory holding larder/v1/*.proto.
 * @returns {{cache: object, sessions: object, ratelimit: object, close: function(): void}}
 */
function createClient(target, options = {}) {
  const { token, timeoutMs = 1000, protoDir } = options;
  if (!(timeoutMs > 0)) {
    throw new RangeError("timeoutMs must be a positive number of milliseconds");
  }
  const v1 = loadLarderV1(protoDir);
  const metadata = new grpc.Metadata();
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  // One channel (one HTTP/2 connection) shared by the three service clients. Plaintext: the
  // token goes as call metadata, since grpc-js sends call credentials only over TLS.
  const credentials = grpc.credentials.createInsecure();
  const channel = new grpc.Channel(
    target,
    credentials,
    channelOptions(target, options.channelOptions),
  );
  const make = (Service) => {
    const client = new Service(target, credentials, { channelOverride: channel });
    return promisify(client, Service, metadata, timeoutMs);
  };
  return {
    cache: make(v1.CacheService),
    sessions: make(v1.SessionService),
    ratelimit: make(v1.RateLimitService),
    /** Closes the channel; calls after this fail. */
    close: () => channel.close(),
  };
}

module.exports = { createClient, channelOptions, loadLarderV1, status: grpc.status };
