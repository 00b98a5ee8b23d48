// The API key and TLS options against a driftd of its own, started with a keys
// file, TLS and required client certificates (mutual TLS). The certificates come
// from the Python test harness (tests/support.py make_pki, the `cryptography`
// package of the repository's .venv): Node cannot issue X.509 certificates.
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { Code, ConnectError, DriftClient, errorReason } from "../src/index.js";

const KEY = "ts-test-admin-key-0123456789";
let repo = "";
let dir = "";
let target = "";
let server: ChildProcess | undefined;
const pki = () => ({
  ca: join(dir, "pki", "ca.pem"),
  cert: join(dir, "pki", "client.pem"),
  key: join(dir, "pki", "client-key.pem"),
});

function findRepo(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(d, ".venv", "bin", "driftd"))) return d;
    const parent = resolve(d, "..");
    if (parent === d) throw new Error("no .venv/bin/driftd found: run `make test` first");
    d = parent;
  }
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

function client(options: ConstructorParameters<typeof DriftClient>[1] = {}): DriftClient {
  return new DriftClient(target, { timeoutMs: 10_000, maxAttempts: 1, ...options });
}

async function code(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  assert.fail("the call succeeded");
}

/**
 * A connection the server's TLS refused. Under TLS 1.3 the server checks the
 * client's certificate after the client's side of the handshake, and a
 * plaintext HTTP/2 preface is dropped: Node sees the stream reset (CANCEL) or
 * the connection fail (UNAVAILABLE), never an answer.
 */
function refusedByTransport(err: ConnectError): void {
  assert.ok([Code.Unavailable, Code.Canceled].includes(err.code), err.message);
}

before(async () => {
  repo = findRepo();
  dir = mkdtempSync(join(tmpdir(), "driftd-ts-security-"));
  const made = spawnSync(
    join(repo, ".venv", "bin", "python"),
    ["-c", "import sys, pathlib; sys.path.insert(0, sys.argv[1]); import support; support.make_pki(pathlib.Path(sys.argv[2]))",
      join(repo, "tests"), join(dir, "pki")],
    { encoding: "utf8" },
  );
  assert.equal(made.status, 0, made.stderr);
  const sha256 = createHash("sha256").update(KEY).digest("hex");
  writeFileSync(
    join(dir, "keys.json"),
    JSON.stringify({ keys: [{ name: "ts-admin", sha256, role: "admin", collections: ["ts-sec-*"] }] }),
  );
  target = `127.0.0.1:${await freePort()}`;
  const log = openSync(join(dir, "driftd.log"), "a");
  server = spawn(join(repo, ".venv", "bin", "driftd"), ["serve"], {
    env: {
      ...process.env,
      DRIFTD_ADDRESS: target,
      DRIFTD_METRICS_PORT: "0",
      DRIFTD_CHROMA_PATH: join(dir, "chroma"),
      DRIFTD_WORKERS: "1",
      DRIFTD_GRACE_SECONDS: "2",
      DRIFTD_TLS_CERT_FILE: join(dir, "pki", "server.pem"),
      DRIFTD_TLS_KEY_FILE: join(dir, "pki", "server-key.pem"),
      DRIFTD_TLS_CLIENT_CA_FILE: join(dir, "pki", "ca.pem"),
      DRIFTD_API_KEYS_FILE: join(dir, "keys.json"),
    },
    stdio: ["ignore", log, log],
  });
  const probe = client({ apiKey: KEY, tls: { caFile: pki().ca, certFile: pki().cert, keyFile: pki().key } });
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      for await (const _ of probe.listCollections()) break;
      return;
    } catch (err) {
      if (Date.now() > deadline || server?.exitCode != null) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
});

after(async () => {
  if (server && server.exitCode == null) {
    const exited = new Promise((r) => server!.once("exit", r));
    server.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("API keys and mutual TLS", () => {
  it("works with a key and a client certificate, within the key's scope", async () => {
    const { ca, cert, key } = pki();
    const db = client({ apiKey: KEY, tls: { caFile: ca, certFile: cert, keyFile: key } });
    const col = await db.createCollection("ts-sec-ok", { dimension: 4 });
    assert.equal(col.name, "collections/ts-sec-ok");
    const err = await code(db.createCollection("ts-other", { dimension: 4 }));
    assert.equal(err.code, Code.PermissionDenied);
    assert.deepEqual(errorReason(err), { reason: "PERMISSION_DENIED", metadata: { resource: "collections/ts-other" } });
  });

  it("is refused without a key, with a wrong key and without a client certificate", async () => {
    const { ca, cert, key } = pki();
    const noKey = await code(client({ tls: { caFile: ca, certFile: cert, keyFile: key } }).getCollection("ts-sec-ok"));
    assert.equal(noKey.code, Code.Unauthenticated);
    assert.equal(errorReason(noKey)?.reason, "API_KEY_MISSING");
    const wrong = await code(
      client({ apiKey: `${KEY}x`, tls: { caFile: ca, certFile: cert, keyFile: key } }).getCollection("ts-sec-ok"),
    );
    assert.equal(errorReason(wrong)?.reason, "API_KEY_INVALID");
    const noCert = await code(client({ apiKey: KEY, tls: { caFile: ca } }).getCollection("ts-sec-ok"));
    refusedByTransport(noCert);
    refusedByTransport(await code(client({ apiKey: KEY }).getCollection("ts-sec-ok"))); // plaintext
  });

  it("does not send a key in plaintext off loopback", () => {
    assert.throws(() => new DriftClient("10.1.2.3:50051", { apiKey: KEY }), /needs TLS/);
  });
});
