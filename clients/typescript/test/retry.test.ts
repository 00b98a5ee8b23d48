// Which RPCs the client retries after UNAVAILABLE. These tests do not use
// driftd: the second one runs against a fake HTTP/2 server that fails every call.
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { type Http2Server, type Http2Session, createServer } from "node:http2";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import type { DescFile, DescMethod } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";

import { Code, ConnectError, DriftClient, RETRYABLE_METHODS } from "../src/index.js";

/**
 * The RPCs the proto deliberately leaves unmarked (IDEMPOTENCY_UNKNOWN): a
 * repeat after a lost answer could change something (why: each RPC's comment in
 * proto/driftd/v1). A new RPC must be marked in the proto or listed here (and in
 * the Python and Go retry tests).
 */
const NOT_IDEMPOTENT = [
  "/driftd.v1.CollectionService/CreateCollection",
  "/driftd.v1.CollectionService/AttachCollection",
  "/driftd.v1.CollectionService/DeleteCollection",
  "/driftd.v1.CollectionService/ImportCollection",
  "/driftd.v1.MonitorService/CreateDriftRule",
  "/driftd.v1.MonitorService/DeleteDriftRule",
  "/driftd.v1.BehaviorService/ProcessBehaviors",
  "/driftd.v1.RoutingService/RouteMessage",
];

/**
 * Marked IDEMPOTENT but never re-sent by the transport, because the client
 * streams its requests: the writer resumes it after the last acknowledged batch.
 */
const RESUMED_BY_THE_WRITER = "/driftd.v1.PointService/StreamUpsertPoints";

const fullName = (m: DescMethod) => `/${m.parent.typeName}/${m.name}`;

/** Every RPC of the generated services: those of each generated file, src/gen/driftd/v1/*_pb.ts. */
async function generatedMethods(): Promise<DescMethod[]> {
  // The sources are listed (dist/ may hold the output of a deleted file), their output imported.
  const sources = fileURLToPath(new URL("../../src/gen/driftd/v1/", import.meta.url));
  const files = readdirSync(sources).filter((f) => f.endsWith("_pb.ts"));
  assert.ok(files.length > 0, `no generated files in ${sources}`);
  const methods: DescMethod[] = [];
  for (const f of files) {
    const module = (await import(`../src/gen/driftd/v1/${f.replace(/\.ts$/, ".js")}`)) as Record<string, unknown>;
    const descs = Object.entries(module).filter(([name]) => name.startsWith("file_"));
    assert.equal(descs.length, 1, `${f} exports one file descriptor`);
    for (const service of (descs[0]![1] as DescFile).services) methods.push(...service.methods);
  }
  return methods;
}

describe("retries", () => {
  it("has a retry decision for every RPC of the generated services: the proto's marks", async () => {
    const methods = await generatedMethods();
    const known = new Set(methods.map(fullName));
    const marked: string[] = [];
    for (const m of methods) {
      const name = fullName(m);
      const isMarked = m.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN;
      assert.notEqual(
        isMarked,
        NOT_IDEMPOTENT.includes(name),
        `${name}: mark its idempotency_level in the proto, or list it in NOT_IDEMPOTENT`,
      );
      if (isMarked && name !== RESUMED_BY_THE_WRITER) marked.push(name);
    }
    // No stale entries.
    for (const name of [...NOT_IDEMPOTENT, RESUMED_BY_THE_WRITER]) {
      assert.ok(known.has(name), `${name} is not a generated RPC`);
    }
    assert.deepEqual(RETRYABLE_METHODS, marked.sort());
  });

  describe("against a server that answers UNAVAILABLE", () => {
    const attempts = new Map<string, number>();
    let server: Http2Server;
    const sessions = new Set<Http2Session>();
    let target = "";

    before(async () => {
      server = createServer((req, res) => {
        attempts.set(req.url, (attempts.get(req.url) ?? 0) + 1);
        req.resume();
        req.on("end", () => {
          // A trailers-only gRPC response.
          res.writeHead(200, { "content-type": "application/grpc", "grpc-status": "14", "grpc-message": "down" });
          res.end();
        });
      });
      server.on("session", (session) => {
        sessions.add(session);
        session.on("close", () => sessions.delete(session));
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      target = `127.0.0.1:${(server.address() as { port: number }).port}`;
    });

    // close() waits for the clients' connections, which stay open: end them.
    after(async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const session of sessions) session.destroy();
      await closed;
    });

    /** Calls `m` as its generated client would, with an empty request; returns the error. */
    async function call(db: DriftClient, m: DescMethod): Promise<unknown> {
      const fn = (createClient(m.parent, db.transport) as Record<string, (input: unknown) => unknown>)[m.localName]!;
      async function* one() {
        yield {};
      }
      try {
        switch (m.methodKind) {
          case "unary":
            await fn({});
            break;
          case "client_streaming":
            await fn(one());
            break;
          case "server_streaming":
            for await (const _ of fn({}) as AsyncIterable<unknown>);
            break;
          case "bidi_streaming":
            for await (const _ of fn(one()) as AsyncIterable<unknown>);
            break;
        }
      } catch (err) {
        return err;
      }
      return undefined;
    }

    it("retries the retryable methods only, maxAttempts tries in all", async () => {
      const maxAttempts = 3;
      const clients: [DriftClient, number][] = [
        [new DriftClient(target, { maxAttempts }), maxAttempts],
        [new DriftClient(target, { maxAttempts: 1 }), 1],
      ];
      for (const m of await generatedMethods()) {
        const name = fullName(m);
        for (const [db, tries] of clients) {
          const want = RETRYABLE_METHODS.includes(name) ? tries : 1;
          const before = attempts.get(name) ?? 0;
          const err = await call(db, m);
          assert.equal(ConnectError.from(err).code, Code.Unavailable, `${name}: ${String(err)}`);
          assert.equal((attempts.get(name) ?? 0) - before, want, `${name} (maxAttempts ${tries}): attempts`);
        }
      }
    });
  });
});
