// larder.js: the Node client of Larder. Loads proto/larder/v1/*.proto of the repository at run
// time (@grpc/proto-loader, no generated code), opens one channel to a daemon over TCP
// ("127.0.0.1:7379") or a Unix socket ("unix:/run/larder/larder.sock"), and exposes the three
// services with promise-returning methods named as the RPCs (cache.Get, sessions.CreateSession,
// ratelimit.Check, ...). Every call carries a deadline and, when a token is given, the
// `authorization: Bearer <token>` metadata. The channel is plaintext unless `tls: true`; a token
// is sent in cleartext only to this machine (loopback or a Unix socket) unless the caller says
// otherwise. A failed call rejects with grpc-js's ServiceError (`err.code` is a `grpc.status`
// value, `err.details` the server's message). Nothing is retried. With `pipeline: true`, the
// calls of the three services go, each tagged with an id, on one PipelineService/Run stream
// instead of one HTTP/2 stream each (auto-pipelining, as ioredis does; see `Pipeline`).
"use strict";

const net = require("node:net");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_FILES = [
  "larder/v1/cache.proto",
  "larder/v1/session.proto",
  "larder/v1/ratelimit.proto",
  "larder/v1/pipeline.proto",
];

// How messages look in JavaScript. keepCase: fields are spelled as in the .proto (ttl_ms), like
// every other example in the README. longs: String keeps 64-bit versions and timestamps exact
// (a JavaScript number is not past 2^53); requests accept numbers or strings. enums: String
// gives "CONDITION_IF_ABSENT" rather than 2. defaults: a miss answers { found: false, ... }
// instead of leaving the field out.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true };

// Whether a client pipelines its calls unless told (`createClient(target, { pipeline })`).
const PIPELINE = true;

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

// The addresses that never leave this machine: 127.0.0.0/8 and ::1 (BlockList also matches
// their IPv4-mapped and unabbreviated IPv6 spellings, such as ::ffff:127.0.0.1).
const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/** True when `host` (a name or an IP address, without brackets or port) is loopback. */
function isLoopbackHost(host) {
  if (host.toLowerCase() === "localhost") {
    return true;
  }
  const family = net.isIP(host);
  if (family === 0) {
    return false; // any other name may resolve anywhere
  }
  try {
    return LOOPBACK.check(host, family === 4 ? "ipv4" : "ipv6");
  } catch {
    return false; // an address BlockList cannot read: not trusted
  }
}

/** The host of "host:port", "host", "[v6]:port", "[v6]" or a bare IPv6 address. */
function hostOf(hostPort) {
  if (hostPort.startsWith("[")) {
    const end = hostPort.indexOf("]");
    return end === -1 ? hostPort : hostPort.slice(1, end);
  }
  const parts = hostPort.split(":");
  return parts.length === 2 ? parts[0] : hostPort; // more colons: a bare IPv6 address
}

/**
 * True when every address `target` can reach is on this machine: a `unix:` socket, or hosts
 * that are loopback (127.0.0.0/8, ::1, `localhost`). Reads targets as grpc-js does: "host:port",
 * "dns:host:port", "dns:///host:port", "ipv4:a:port,b:port" and "ipv6:[a]:port,..."; anything
 * else is not local.
 */
function isLocalTarget(target) {
  if (target.startsWith("unix:")) {
    return true;
  }
  const scheme = /^(dns|ipv4|ipv6):(?:\/\/[^/]*\/)?(.*)$/.exec(target);
  const hosts = !scheme ? [target] : scheme[1] === "dns" ? [scheme[2]] : scheme[2].split(",");
  return hosts.every((hostPort) => isLoopbackHost(hostOf(hostPort)));
}

/**
 * `value` (PEM text, a string or a Buffer) as a Buffer; null when absent. `label` is what its
 * PEM blocks hold ("CERTIFICATE", "PRIVATE KEY"): text without one (a file's path rather than its
 * contents, say) throws, naming the option `name`.
 */
function pem(name, value, label) {
  if (value === undefined || value === null) {
    return null;
  }
  if (typeof value !== "string" && !(value instanceof Uint8Array)) {
    throw new TypeError(`${name} must be PEM text, as a string or a Buffer`);
  }
  const buffer = Buffer.from(value);
  if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(buffer.toString("latin1"))) {
    throw new Error(
      `${name} holds no PEM ${label.toLowerCase()} (-----BEGIN ${label}-----): pass the ` +
        "file's contents (fs.readFileSync(path)), not its path",
    );
  }
  return buffer;
}

/** The names of the options only TLS uses that `options` sets (to neither undefined nor null). */
function tlsOptionsGiven(options) {
  return ["rootCertificates", "certChain", "privateKey"]
    .filter((name) => options[name] !== undefined && options[name] !== null);
}

/**
 * The channel credentials `options` ask for: TLS when `options.tls` is true, else plaintext.
 * Refuses (throws) TLS options without `tls: true`, a client certificate without its key or a
 * key without its certificate, and a token sent in cleartext to a target off this machine
 * unless `options.allowInsecureToken` is true.
 */
function channelCredentials(target, options) {
  const { token, tls = false, allowInsecureToken = false } = options;
  if (typeof tls !== "boolean") {
    throw new TypeError("tls must be true or false");
  }
  if (typeof allowInsecureToken !== "boolean") {
    throw new TypeError("allowInsecureToken must be true or false");
  }
  if (!tls) {
    const [stray] = tlsOptionsGiven(options);
    if (stray) {
      throw new Error(`${stray} is a TLS option, but tls is not set: pass tls: true with it`);
    }
    if (token && !allowInsecureToken && !isLocalTarget(target)) {
      throw new Error(
        `refusing to send the bearer token in cleartext to ${target}, which is neither ` +
          "loopback (127.0.0.0/8, ::1, localhost) nor a unix: socket: pass tls: true (with " +
          "rootCertificates if a private CA signed the server's certificate), or " +
          "allowInsecureToken: true if the network between them is trusted",
      );
    }
    return grpc.credentials.createInsecure();
  }
  const rootCertificates = pem("rootCertificates", options.rootCertificates, "CERTIFICATE");
  const certChain = pem("certChain", options.certChain, "CERTIFICATE");
  const privateKey = pem("privateKey", options.privateKey, "PRIVATE KEY");
  if (certChain && !privateKey) {
    throw new Error("certChain is given without privateKey: a client certificate needs its key");
  }
  if (privateKey && !certChain) {
    throw new Error("privateKey is given without certChain: pass the client certificate too");
  }
  try {
    return grpc.credentials.createSsl(rootCertificates, privateKey, certChain);
  } catch (err) {
    // Node's message names the problem ("key values mismatch", "no start line") but not the option.
    const given = tlsOptionsGiven(options).join(", ");
    throw new Error(`cannot use the TLS ${given}: ${err.message}`, { cause: err });
  }
}

/**
 * Wraps every unary method of a grpc-js client as `method(request, { timeoutMs }) -> Promise`.
 * The service's own method names are used (the keys of its definition), so this covers every
 * RPC the .proto declares, including ones added later. With `pipeline`, each method that a Run
 * stream carries goes on it (the rest, and every call once the daemon is known to lack the
 * service, stay unary).
 */
function promisify(client, Service, metadata, timeoutMs, pipeline = null) {
  const api = {};
  for (const name of Object.keys(Service.service)) {
    const unary = (request, ms) =>
      new Promise((resolve, reject) => {
        client[name](request, metadata.clone(), { deadline: Date.now() + ms }, (err, response) =>
          err ? reject(err) : resolve(response),
        );
      });
    const field = pipeline && pipeline.field(Service.service[name].path);
    api[name] = (request = {}, callOptions = {}) => {
      const ms = callOptions.timeoutMs ?? timeoutMs;
      if (field && pipeline.supported) {
        return pipeline.call(field, request, ms, (left) => unary(request, left));
      }
      return unary(request, ms);
    };
  }
  return api;
}

/** A grpc-js ServiceError of status `code`, as a failed unary call rejects with. */
function serviceError(code, details) {
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? "UNKNOWN";
  return Object.assign(new Error(`${code} ${name}: ${details}`), {
    code,
    details,
    metadata: new grpc.Metadata(),
  });
}

// How long one Run stream takes new calls. A stream that lived as long as its connection
// would be cut with calls in flight when the daemon retires the connection
// (server.max_connection_age: GOAWAY, then at most server.max_connection_age_grace, 30 s by
// default, for the streams still open), which a unary call never is: after a GOAWAY a new
// stream goes on a new connection.
const STREAM_LIFETIME_MS = 1_000;

// The largest call (the bytes of its request's strings and buffers) that goes on the stream; a
// larger one goes unary. The daemon's message limit (max_message_bytes) is its largest value
// plus a batch of keys plus 64 KiB of slack, so a call this small fits it however the daemon is
// configured, whereas a larger one may not, and a message past the limit ends the whole stream
// (every call on it). For calls this large, one HTTP/2 stream more costs little beside the bytes.
const MAX_PIPELINED_BYTES = 64 * 1024;

// The most calls held back while the stream does not take more (write() returned false: the
// daemon stops reading a stream at server.max_pipeline_inflight calls in flight); a call past
// it goes unary, so that a stall does not grow the client's memory without bound.
const MAX_QUEUED = 1024;

/** The bytes of the strings and buffers in `value`, stopping once past `limit`. */
function payloadBytes(value, limit) {
  let total = 0;
  const pending = [value];
  while (pending.length > 0 && total <= limit) {
    const v = pending.pop();
    if (typeof v === "string") total += Buffer.byteLength(v);
    else if (v instanceof Uint8Array) total += v.byteLength;
    else if (v !== null && typeof v === "object") pending.push(...Object.values(v));
  }
  return total;
}

/**
 * Auto-pipelining: the calls of one client on one PipelineService/Run stream. Each call is
 * written as a RunRequest with an id of its own; the reader matches each RunResponse to the
 * call's promise by that id, resolving it with the result (the field named as the call) or
 * rejecting it with the ServiceError its unary twin would have given (the answer's CallError).
 * Answers come in any order. When the stream ends or breaks (the daemon restarted, the
 * connection dropped, the stream failed), the calls still waiting reject with UNAVAILABLE, as
 * a unary call does when its connection drops (the stream's own status belongs to no one call;
 * only the daemon's refusal of the stream before its headers, UNAUTHENTICATED say, which each
 * call would have got unary too, is passed on), and the next call opens a new stream. A call larger than
 * MAX_PIPELINED_BYTES goes unary. While the stream takes no more (write() returned false), calls
 * wait in a queue of at most MAX_QUEUED (past it they go unary); one whose deadline passes
 * there is never written. A call past its deadline rejects with DEADLINE_EXCEEDED, and its
 * answer, if it comes, is dropped. A stream takes new calls for STREAM_LIFETIME_MS, then is
 * half-closed and the next call opens another. If the daemon answers the stream UNIMPLEMENTED
 * (a version without the service), the calls waiting on it are made unary (none of them ran),
 * each with what is left of its timeout, and so is every later one.
 */
class Pipeline {
  constructor(PipelineService, client, metadata, services) {
    this.client = client;
    this.metadata = metadata;
    this.supported = true;
    this.stream = null;
    this.nextId = 1;
    // The gRPC path of each method a Run stream carries -> its field in RunRequest (the
    // method's name in snake_case, as pipeline.proto names them).
    const calls = new Set(PipelineService.service.Run.requestType.type.field.map((f) => f.name));
    this.fields = new Map();
    for (const Service of services) {
      for (const [name, method] of Object.entries(Service.service)) {
        const field = name.replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase());
        if (calls.has(field)) this.fields.set(method.path, field);
      }
    }
  }

  /** The RunRequest field of the method at `path`, or undefined when a stream does not carry it. */
  field(path) {
    return this.fields.get(path);
  }

  /**
   * Sends the `field` call with `request`; `unary(ms)` makes it unary instead, within `ms`
   * (see the class).
   */
  call(field, request, ms, unary) {
    if (payloadBytes(request, MAX_PIPELINED_BYTES) > MAX_PIPELINED_BYTES) {
      return unary(ms);
    }
    let stream = this.stream;
    if (stream && Date.now() - stream.openedAt > STREAM_LIFETIME_MS) {
      // Half-closed once its queue is written: the daemon ends it once it has answered them.
      stream.ending = true;
      if (stream.queue.length === 0) this.halfClose(stream);
      this.stream = null;
      stream = null;
    }
    stream = stream ?? this.open();
    if (stream.queue.length >= MAX_QUEUED) {
      return unary(ms);
    }
    return new Promise((resolve, reject) => {
      const id = String(this.nextId++);
      const deadline = Date.now() + ms;
      const timer = setTimeout(() => {
        if (stream.waiting.delete(id)) {
          reject(serviceError(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded"));
        }
      }, ms);
      stream.waiting.set(id, { field, resolve, reject, timer, unary, deadline });
      stream.queue.push({ id, [field]: request });
      if (!stream.blocked) this.flush(stream);
    });
  }

  /**
   * Writes the queued calls of `stream` until it takes no more, skipping each one that is no
   * longer waited on (its deadline passed, or the stream ended): it must not run after its
   * caller was told it failed.
   */
  flush(stream) {
    stream.blocked = false;
    while (stream.queue.length > 0) {
      const message = stream.queue.shift();
      const w = stream.waiting.get(message.id);
      if (!w) continue;
      if (Date.now() >= w.deadline) {
        stream.waiting.delete(message.id);
        clearTimeout(w.timer);
        w.reject(serviceError(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded"));
        continue;
      }
      if (!stream.call.write(message)) {
        stream.blocked = true; // "drain" resumes
        return;
      }
    }
    if (stream.ending) this.halfClose(stream);
  }

  /** Ends the request side of `stream`, once. */
  halfClose(stream) {
    if (stream.halfClosed) return;
    stream.halfClosed = true;
    stream.call.end();
  }

  open() {
    const call = this.client.Run(this.metadata.clone());
    const stream = {
      call,
      waiting: new Map(),
      queue: [],
      blocked: false,
      ending: false,
      halfClosed: false,
      accepted: false,
      answered: false,
      cancelled: false,
      openedAt: Date.now(),
    };
    this.stream = stream;
    this.opened = (this.opened ?? 0) + 1;
    const end = (err) => {
      if (this.stream === stream) this.stream = null;
      const waiting = [...stream.waiting.values()];
      stream.waiting.clear();
      stream.queue = [];
      const unimplemented = err.code === grpc.status.UNIMPLEMENTED && !stream.answered;
      if (unimplemented) this.supported = false;
      // What each call would have got unary: the daemon's refusal of the stream before it
      // answered its headers (credentials, authority), or the close() its caller asked
      // for; a failure after that is the stream's, not any one call's.
      const shared =
        !stream.accepted ||
        (stream.cancelled && err.code === grpc.status.CANCELLED) ||
        err.code === grpc.status.UNAVAILABLE;
      const failure = shared
        ? err
        : serviceError(
            grpc.status.UNAVAILABLE,
            `the pipeline stream broke: ${err.details ?? err.message}`,
          );
      for (const w of waiting) {
        clearTimeout(w.timer);
        const left = w.deadline - Date.now();
        if (unimplemented && left > 0) w.unary(left).then(w.resolve, w.reject);
        else if (unimplemented) {
          w.reject(serviceError(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded"));
        } else w.reject(failure);
      }
    };
    stream.call.on("drain", () => this.flush(stream));
    stream.call.on("metadata", () => {
      stream.accepted = true;
    });
    stream.call.on("data", (response) => {
      stream.answered = true;
      const w = stream.waiting.get(response.id);
      if (!w) return; // past its deadline: nobody waits for it
      stream.waiting.delete(response.id);
      clearTimeout(w.timer);
      if (response.error) {
        w.reject(serviceError(response.error.code, response.error.message));
      } else {
        w.resolve(response[w.field]);
      }
    });
    stream.call.on("error", end);
    stream.call.on("end", () =>
      end(serviceError(grpc.status.UNAVAILABLE, "the daemon closed the pipeline stream")),
    );
    return stream;
  }

  close() {
    if (this.stream) {
      this.stream.cancelled = true;
      this.stream.call.cancel();
    }
  }
}

/**
 * Connects to a Larder daemon. Creates no connection until the first call; create one client
 * per process and share it.
 *
 * @param {string} target "host:port" or "unix:/path/to/socket" (also "unix:///path").
 * @param {object} [options]
 * @param {string} [options.token] sent as `authorization: Bearer <token>` on every call. Without
 *   TLS, only to this machine: a `unix:` target or a loopback host (127.0.0.0/8, ::1,
 *   `localhost`); a token with a plaintext target elsewhere throws, unless
 *   `allowInsecureToken` is true.
 * @param {boolean} [options.tls=false] connect over TLS. The server's certificate must be signed
 *   by `rootCertificates` and name the target's host (a DNS or IP subjectAltName); to check it
 *   against another name (connecting by IP address to a certificate for "larder.internal"),
 *   pass `channelOptions: { "grpc.ssl_target_name_override": "larder.internal" }`. (By IP
 *   address without it, grpc-js sends the address as TLS server name, and Node warns once,
 *   DEP0123; the certificate is still checked against the address.)
 * @param {string|Buffer} [options.rootCertificates] PEM certificates of the CAs to trust (a
 *   self-signed server certificate is its own CA). Default: Node's default CAs (its bundled
 *   Mozilla roots, with NODE_EXTRA_CA_CERTS; `node --use-openssl-ca` for the system's store), or
 *   the file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names. Needs `tls`.
 * @param {string|Buffer} [options.certChain] PEM client certificate chain, for a server that
 *   asks for client certificates (mutual TLS); needs `tls` and `privateKey`.
 * @param {string|Buffer} [options.privateKey] PEM private key of `certChain`; needs `tls` and
 *   `certChain`.
 * @param {boolean} [options.allowInsecureToken=false] send the token over plaintext to a host
 *   that is not loopback (a network you trust end to end).
 * @param {number} [options.timeoutMs=1000] deadline of every call, unless the call passes its
 *   own `{ timeoutMs }` as second argument.
 * @param {object} [options.channelOptions] extra grpc-js channel options.
 * @param {string} [options.protoDir] the directory holding larder/v1/*.proto.
 * @param {boolean} [options.pipeline=PIPELINE] auto-pipelining: every call of the three
 *   services goes, tagged with an id, on one PipelineService/Run stream, and its answer is
 *   matched back to it (see `Pipeline`). Each call resolves and rejects as it would unary.
 *   `false` makes every call its own unary RPC.
 * @returns {{cache: object, sessions: object, ratelimit: object, close: function(): void}}
 */
function createClient(target, options = {}) {
  const { token, timeoutMs = 1000, protoDir } = options;
  if (!(timeoutMs > 0)) {
    throw new RangeError("timeoutMs must be a positive number of milliseconds");
  }
  const credentials = channelCredentials(target, options);
  const v1 = loadLarderV1(protoDir);
  const metadata = new grpc.Metadata();
  if (token) {
    metadata.set("authorization", `Bearer ${token}`);
  }
  // One channel (one HTTP/2 connection) shared by the three service clients. The token goes as
  // call metadata, plaintext or TLS alike (grpc-js sends call credentials only over TLS).
  const channel = new grpc.Channel(
    target,
    credentials,
    channelOptions(target, options.channelOptions),
  );
  const { pipeline = PIPELINE } = options;
  if (typeof pipeline !== "boolean") {
    throw new TypeError("pipeline must be true or false");
  }
  const services = [v1.CacheService, v1.SessionService, v1.RateLimitService];
  const runner = pipeline
    ? new Pipeline(
        v1.PipelineService,
        new v1.PipelineService(target, credentials, { channelOverride: channel }),
        metadata,
        services,
      )
    : null;
  const make = (Service) => {
    const client = new Service(target, credentials, { channelOverride: channel });
    return promisify(client, Service, metadata, timeoutMs, runner);
  };
  const [cache, sessions, ratelimit] = services.map(make);
  return {
    cache,
    sessions,
    ratelimit,
    /** Whether calls are pipelined (`options.pipeline`). */
    pipeline,
    /** How many Run streams have been opened (one more after each broken stream). */
    pipelineStreams: () => runner?.opened ?? 0,
    /** How many calls wait to be written on the Run stream (at most PIPELINE_MAX_QUEUED). */
    pipelineQueued: () => runner?.stream?.queue.length ?? 0,
    /** Closes the channel; calls after this fail. */
    close: () => {
      runner?.close();
      channel.close();
    },
  };
}

module.exports = {
  createClient,
  channelOptions,
  isLocalTarget,
  loadLarderV1,
  PIPELINE,
  PIPELINE_MAX_QUEUED: MAX_QUEUED,
  status: grpc.status,
};
