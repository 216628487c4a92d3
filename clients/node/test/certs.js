// test/certs.js: certificates for the TLS tests, made with the openssl command-line tool in a
// temporary directory: a CA, a server certificate it signs for localhost and 127.0.0.1, one it
// signs for larder.internal only, and a client certificate. EC P-256 keys, valid one day.
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

function openssl(args, cwd) {
  try {
    return execFileSync("openssl", args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    if (err.code === "ENOENT") {
      throw new Error("the TLS tests need the openssl command (Debian: apt-get install openssl)");
    }
    throw new Error(`openssl ${args.join(" ")} failed:\n${err.stderr}`, { cause: err });
  }
}

const KEY_ARGS = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/** Writes `name`.key and `name`.pem in `dir`: a certificate for `subject`, signed by ca.pem. */
function signed(dir, name, subject, extensions) {
  openssl(["req", "-new", ...KEY_ARGS, "-subj", subject,
    "-keyout", `${name}.key`, "-out", `${name}.csr`], dir);
  fs.writeFileSync(path.join(dir, `${name}.ext`), extensions.join("\n") + "\n");
  openssl(["x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
    "-CAcreateserial", "-days", "1", "-extfile", `${name}.ext`, "-out", `${name}.pem`], dir);
}

/**
 * Makes the certificates in a new temporary directory. The result has `dir`, `cleanup()`,
 * `ca` (the CA's PEM certificate), and for `server` (SAN DNS:localhost, IP:127.0.0.1, IP:::1),
 * `named` (SAN DNS:larder.internal only) and `client` (clientAuth): `cert` and `key`, the paths
 * of their PEM files, and `certPem` and `keyPem`, their contents.
 */
function makeCerts() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "larder-node-tls-"));
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  try {
    return generate(dir, cleanup);
  } catch (err) {
    cleanup();
    throw err;
  }
}

/** makeCerts' work, in `dir`; `cleanup` goes into the result. */
function generate(dir, cleanup) {
  openssl(["req", "-x509", ...KEY_ARGS, "-days", "1", "-subj", "/CN=larder test CA",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    "-keyout", "ca.key", "-out", "ca.pem"], dir);
  const leaf = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"];
  signed(dir, "server", "/CN=localhost",
    [...leaf, "extendedKeyUsage=serverAuth", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"]);
  signed(dir, "named", "/CN=larder.internal",
    [...leaf, "extendedKeyUsage=serverAuth", "subjectAltName=DNS:larder.internal"]);
  signed(dir, "client", "/CN=larder test client", [...leaf, "extendedKeyUsage=clientAuth"]);
  const pair = (name) => {
    const cert = path.join(dir, `${name}.pem`);
    const key = path.join(dir, `${name}.key`);
    return { cert, key, certPem: fs.readFileSync(cert), keyPem: fs.readFileSync(key) };
  };
  return {
    dir,
    ca: fs.readFileSync(path.join(dir, "ca.pem")),
    server: pair("server"),
    named: pair("named"),
    client: pair("client"),
    cleanup,
  };
}

module.exports = { makeCerts };
