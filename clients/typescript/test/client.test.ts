// Tests of the TypeScript client against a live driftd. With DRIFTD_TARGET set
// they use that server; otherwise they start `driftd serve` from the
// repository's .venv on a free loopback port with a fresh Chroma directory.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import {
  Code,
  ConnectError,
  DriftClient,
  Distance,
  type PointInput,
  atPoint,
  atVector,
  errorReason,
  fieldViolations,
} from "../src/index.js";

const DIM = 8;
const T0 = Date.UTC(2024, 0, 1);
let target = process.env.DRIFTD_TARGET ?? "";
let server: ChildProcess | undefined;
let dataDir = "";

function findDriftd(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const exe = join(dir, ".venv", "bin", "driftd");
    if (existsSync(exe)) return exe;
    const parent = resolve(dir, "..");
    if (parent === dir) throw new Error("no .venv/bin/driftd found: run `make test` first or set DRIFTD_TARGET");
    dir = parent;
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

before(async () => {
  if (!target) {
    dataDir = mkdtempSync(join(tmpdir(), "driftd-ts-test-"));
    target = `127.0.0.1:${await freePort()}`;
    const log = openSync(join(dataDir, "driftd.log"), "a");
    server = spawn(findDriftd(), ["serve"], {
      env: {
        ...process.env,
        DRIFTD_ADDRESS: target,
        DRIFTD_METRICS_PORT: "0",
        DRIFTD_CHROMA_PATH: join(dataDir, "chroma"),
        DRIFTD_WORKERS: "2",
        DRIFTD_GRACE_SECONDS: "2",
      },
      stdio: ["ignore", log, log],
    });
  }
  // Ready once a call succeeds (driftd answers UNAVAILABLE until storage is open).
  const probe = new DriftClient(target, { timeoutMs: 2000, maxAttempts: 1 });
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
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** A timeline relaxing towards `goal`, one point a minute (a planted flow). */
function relaxing(series: string, goal: number[], n: number, seed: number): PointInput[] {
  let state = seed * 7919 + 1;
  const rand = () => ((state = (state * 48271) % 2147483647) / 2147483647) * 2 - 1;
  const x = Array.from({ length: DIM }, () => 2 * rand());
  return Array.from({ length: n }, (_, i) => {
    for (let j = 0; j < DIM; j++) x[j]! += 0.15 * (goal[j]! - x[j]!) + 0.01 * rand();
    return { id: `${series}-${String(i).padStart(3, "0")}`, series, time: new Date(T0 + i * 60_000), vector: [...x] };
  });
}

async function newCollection(db: DriftClient, name: string): Promise<string> {
  const id = `ts-${name}-${Math.floor(Math.random() * 1e6)}`;
  const col = await db.createCollection(id, { dimension: DIM, distance: Distance.L2 });
  assert.equal(col.name, `collections/${id}`);
  return id;
}

describe("DriftClient against a live driftd", () => {
  it("creates a collection, stream-upserts, probes and reads a simulation stream", async () => {
    const db = new DriftClient(target);
    const id = await newCollection(db, "flow");
    const goal = [3, 0, 0, 0, 0, 0, 0, 0];
    const points = [0, 1, 2].flatMap((s) => relaxing(`s${s}`, goal, 30, s + 1));

    const writer = db.writer(id);
    for (let i = 0, n = 1; i < points.length; i += 25, n++) {
      const ack = await writer.write(points.slice(i, i + 25));
      assert.equal(ack.sequence, BigInt(n));
      assert.equal(ack.rejectedCount, 0);
    }
    await writer.close();
    assert.equal(writer.lastAcked, 4n);

    const col = await db.getCollection(id);
    assert.equal(col.pointCount, BigInt(points.length));
    assert.equal(col.seriesCount, 3n);

    const times: number[] = [];
    for await (const p of db.trajectory({ parent: id, chunkSize: 7 })) {
      times.push(Number(p.time!.seconds));
    }
    assert.equal(times.length, points.length);
    assert.deepEqual(times, [...times].sort((a, b) => a - b));

    const probe = await db.probe(id, atVector(new Array(DIM).fill(0)));
    const v = probe.velocity;
    const norm = Math.hypot(...v);
    assert.equal(v.length, DIM);
    assert.ok(v[0]! > 0 && v[0]! / norm > 0.8, `velocity ${v} should point to +x0`);

    const steps = [];
    for await (const step of db.simulate({ parent: id, start: atPoint("s1-002"), steps: 10, includeVectors: true })) {
      steps.push(step);
    }
    assert.ok(steps.length >= 2 && steps.length <= 11, `${steps.length} steps`);
    steps.forEach((s, i) => assert.equal(s.step, i));
    assert.equal(steps[0]!.nearestPointId, "s1-002");
    assert.notEqual(steps.at(-1)!.stopReason, "");
    const dist = (p: number[]) => Math.hypot(...p.map((x, j) => x - goal[j]!));
    assert.ok(dist(steps.at(-1)!.position) < dist(steps[0]!.position), "the path approaches the attractor");

    // Leaving the loop early cancels the stream.
    let n = 0;
    for await (const _ of db.simulate({ parent: id, start: atPoint("s0-000"), steps: 1000 })) {
      if (++n === 3) break;
    }
    assert.equal(n, 3);

    const names = [];
    for await (const c of db.listCollections()) names.push(c.name);
    assert.ok(names.includes(`collections/${id}`));
    await db.deleteCollection(id);
  });

  it("exposes driftd's rich errors", async () => {
    const db = new DriftClient(target);
    const id = await newCollection(db, "errors");
    const err = await db.upsert(id, [{ id: "bad", time: new Date(T0), vector: [1, 2, 3] }]).catch((e) => e);
    assert.equal(ConnectError.from(err).code, Code.InvalidArgument);
    assert.equal(errorReason(err)?.reason, "DIMENSION_MISMATCH");
    assert.ok(fieldViolations(err).includes("points[0].vector"), String(fieldViolations(err)));

    const missing = await db.getCollection("ts-does-not-exist").catch((e) => e);
    assert.equal(ConnectError.from(missing).code, Code.NotFound);
    assert.equal(errorReason(missing)?.reason, "COLLECTION_NOT_FOUND");

    await db.upsert(id, relaxing("few", new Array(DIM).fill(0), 3, 9));
    const few = await db.probe(id, atPoint("few-000")).catch((e) => e);
    assert.equal(ConnectError.from(few).code, Code.FailedPrecondition);
    const info = errorReason(few);
    assert.equal(info?.reason, "NOT_ENOUGH_POINTS");
    assert.ok(Number(info?.metadata.required) > 3, JSON.stringify(info));
    await db.deleteCollection(id);
  });

  it("gives unary calls a default deadline", async () => {
    const db = new DriftClient(target, { timeoutMs: 1, maxAttempts: 1 });
    const err = await db.getCollection("ts-deadline").catch((e) => e);
    assert.equal(ConnectError.from(err).code, Code.DeadlineExceeded);
  });
});
