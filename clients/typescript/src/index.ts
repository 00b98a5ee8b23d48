/**
 * TypeScript client for driftd, the flow-native vector database, over gRPC
 * (Connect's gRPC transport for Node 20+; messages generated from proto/ by
 * protoc-gen-es).
 *
 * ```ts
 * import { DriftClient, atPoint } from "@driftd/client";
 * const db = new DriftClient("127.0.0.1:50051");
 * // a server with API keys and TLS:
 * // new DriftClient("driftd.example:50051", { apiKey, tls: { caFile: "ca.crt" } });
 * await db.createCollection("notes", { dimension: 8 });
 * const writer = db.writer("notes");
 * await writer.write([{ id: "n1", time: new Date(), vector: [...] }]);
 * await writer.close();
 * const probe = await db.probe("notes", atPoint("n1"));
 * for await (const step of db.simulate({ parent: "notes", start: atPoint("n1"), steps: 10 })) { ... }
 * ```
 *
 * The generated service clients are available as `db.collections`,
 * `db.points` and `db.flow`, and every generated message type is exported.
 */
import { readFileSync } from "node:fs";

import { create, type JsonObject, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { type Collection, type CollectionSchema, CollectionService } from "./gen/driftd/v1/collection_pb.js";
import {
  type FlowStart,
  type FlowStartSchema,
  FlowService,
  type ProbeFlowResponse,
  type SimulatePathsRequestSchema,
  type SimulatePathsResponse,
} from "./gen/driftd/v1/flow_pb.js";
import {
  type GetTrajectoryRequestSchema,
  type Point,
  PointService,
  type PointSchema,
  StreamUpsertPointsRequestSchema,
  type StreamUpsertPointsResponse,
  type UpsertPointsResponse,
} from "./gen/driftd/v1/point_pb.js";
import { retryUnavailable } from "./retry.js";

export * from "./gen/driftd/v1/collection_pb.js";
export * from "./gen/driftd/v1/error_reason_pb.js";
export * from "./gen/driftd/v1/flow_pb.js";
export * from "./gen/driftd/v1/point_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";
export { RETRYABLE_METHODS } from "./retry.js";

/** Options of {@link DriftClient}. */
export interface DriftClientOptions {
  /** Deadline of unary calls made without one (ms); default 30 000, 0 for none. Streams get none. */
  timeoutMs?: number;
  /**
   * Tries in all for a call failing with UNAVAILABLE before any response, with
   * exponential backoff; default 4, 1 for none. Only the {@link RETRYABLE_METHODS}
   * (those safe to repeat) are retried; a `transport` of your own is used as is.
   */
  maxAttempts?: number;
  /**
   * API key, sent as `authorization: Bearer <key>` on every call. Without `tls`
   * it is sent only to a loopback target (the constructor throws otherwise).
   */
  apiKey?: string;
  /** TLS to a server started with `--tls-cert-file` (default: plaintext). */
  tls?: TlsOptions;
  /** A transport of your own; `target`, `apiKey`, `tls` and `interceptors` are then ignored. */
  transport?: Transport;
  /** Extra interceptors for the default transport. */
  interceptors?: Interceptor[];
}

/** TLS settings of {@link DriftClientOptions.tls}: PEM file paths. */
export interface TlsOptions {
  /** CA bundle the server's certificate must chain to; default: Node's roots. */
  caFile?: string;
  /** Client certificate chain, for servers that require one (`--tls-client-ca-file`, mutual TLS). */
  certFile?: string;
  /** Private key of `certFile`. */
  keyFile?: string;
  /** Name checked against the server's certificate; default: the target's host. */
  serverName?: string;
}

/** Whether `host:port` names this machine (127.0.0.0/8, ::1, localhost). */
function isLoopback(target: string): boolean {
  const host = target.replace(/^https?:\/\//, "").replace(/:\d+\/?$/, "").replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

/** The key and TLS settings as a transport's base URL, Node options and interceptor. */
function security(target: string, options: DriftClientOptions) {
  const host = target.replace(/^https?:\/\//, "");
  const tls = options.tls;
  if (options.apiKey && !tls && !isLoopback(host)) {
    throw new Error(
      `an API key needs TLS to reach ${host}: pass tls: { caFile } (without TLS keys go only to loopback targets)`,
    );
  }
  if ((tls?.certFile === undefined) !== (tls?.keyFile === undefined)) {
    throw new Error("tls.certFile and tls.keyFile go together");
  }
  const key = options.apiKey;
  const interceptors: Interceptor[] = key
    ? [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${key}`);
          return next(req);
        },
      ]
    : [];
  return {
    baseUrl: `${tls ? "https" : "http"}://${host}`,
    nodeOptions: tls
      ? {
          ca: tls.caFile ? readFileSync(tls.caFile) : undefined,
          cert: tls.certFile ? readFileSync(tls.certFile) : undefined,
          key: tls.keyFile ? readFileSync(tls.keyFile) : undefined,
          servername: tls.serverName,
        }
      : undefined,
    interceptors,
  };
}

/** A point as written. */
export interface PointInput {
  /** Unique within the collection. */
  id: string;
  /** When it was observed. */
  time: Date;
  /** The timeline it belongs to; empty is the default series. */
  series?: string;
  /** The embedding (float32 on the wire); or give `text`. */
  vector?: number[] | Float32Array;
  /** Text, embedded server-side when there is no vector. */
  text?: string;
  /** Flat metadata (string, number or bool values). */
  payload?: JsonObject;
}

/** The resource name of a collection id: "collections/{id}". */
export function collectionName(id: string): string {
  return id.startsWith("collections/") ? id : `collections/${id}`;
}

/** Start a probe or a simulation at a vector. */
export function atVector(values: number[] | Float32Array): MessageInitShape<typeof FlowStartSchema> {
  return { start: { case: "vector", value: { values: Array.from(values) } } };
}

/** Start a probe or a simulation at a text (embedded server-side). */
export function atText(text: string): MessageInitShape<typeof FlowStartSchema> {
  return { start: { case: "text", value: text } };
}

/** Start a probe or a simulation at a stored point. */
export function atPoint(id: string): MessageInitShape<typeof FlowStartSchema> {
  return { start: { case: "pointId", value: id } };
}

function toPoint(p: PointInput): MessageInitShape<typeof PointSchema> {
  return { ...p, time: timestampFromDate(p.time), vector: p.vector ? Array.from(p.vector) : [] };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A connection to a driftd server. */
export class DriftClient {
  readonly collections: Client<typeof CollectionService>;
  readonly points: Client<typeof PointService>;
  readonly flow: Client<typeof FlowService>;
  readonly transport: Transport;
  private readonly timeoutMs: number;

  /** @param target "host:port" (plaintext, as driftd serves) or a base URL such as "https://host:port". */
  constructor(target: string, options: DriftClientOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 30_000;
    const secure = options.transport ? undefined : security(target, options);
    this.transport =
      options.transport ??
      createGrpcTransport({
        baseUrl: secure!.baseUrl,
        nodeOptions: secure!.nodeOptions,
        interceptors: [
          ...secure!.interceptors,
          retryUnavailable(options.maxAttempts ?? 4),
          ...(options.interceptors ?? []),
        ],
        // Within driftd's keepalive policy (pings no more often than every 10 s).
        pingIntervalMs: 30_000,
        pingTimeoutMs: 10_000,
        readMaxBytes: 64 << 20,
        writeMaxBytes: 64 << 20,
      });
    this.collections = createClient(CollectionService, this.transport);
    this.points = createClient(PointService, this.transport);
    this.flow = createClient(FlowService, this.transport);
  }

  private unary(options?: CallOptions): CallOptions {
    return this.timeoutMs > 0 ? { timeoutMs: this.timeoutMs, ...options } : { ...options };
  }

  /** Creates a collection (`settings`: dimension, distance, embedModel). */
  createCollection(
    id: string,
    settings: MessageInitShape<typeof CollectionSchema> = {},
    options?: CallOptions,
  ): Promise<Collection> {
    return this.collections.createCollection({ collectionId: id, collection: settings }, this.unary(options));
  }

  /** Gets a collection with its counts, time span and version. */
  getCollection(id: string, options?: CallOptions): Promise<Collection> {
    return this.collections.getCollection({ name: collectionName(id) }, this.unary(options));
  }

  /** Deletes a collection and its points. */
  async deleteCollection(id: string, options?: CallOptions): Promise<void> {
    await this.collections.deleteCollection({ name: collectionName(id) }, this.unary(options));
  }

  /** Every collection in name order, fetched page by page. */
  async *listCollections(options?: CallOptions): AsyncGenerator<Collection> {
    let pageToken = "";
    do {
      const page = await this.collections.listCollections({ pageToken }, this.unary(options));
      yield* page.collections;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Upserts one batch, validated whole (an invalid point fails the call; nothing is written). */
  upsert(id: string, points: PointInput[], options?: CallOptions): Promise<UpsertPointsResponse> {
    return this.points.upsertPoints({ parent: collectionName(id), points: points.map(toPoint) }, this.unary(options));
  }

  /** The points of a time window in time order (`parent` may be a bare id). */
  async *trajectory(
    request: MessageInitShape<typeof GetTrajectoryRequestSchema>,
    options?: CallOptions,
  ): AsyncGenerator<Point> {
    const req = { ...request, parent: collectionName(request.parent ?? "") };
    for await (const chunk of this.points.getTrajectory(req, options)) yield* chunk.points;
  }

  /** The local velocity of the flow at `start`. */
  probe(
    id: string,
    start: MessageInitShape<typeof FlowStartSchema>,
    options?: CallOptions,
  ): Promise<ProbeFlowResponse> {
    return this.flow.probeFlow({ parent: collectionName(id), start }, this.unary(options));
  }

  /**
   * The steps of simulated paths as the server streams them (`parent` may be a
   * bare id). Leaving the loop early cancels the call, which stops the server's work.
   */
  async *simulate(
    request: MessageInitShape<typeof SimulatePathsRequestSchema>,
    options?: CallOptions,
  ): AsyncGenerator<SimulatePathsResponse> {
    const abort = new AbortController();
    const signal = options?.signal ? AbortSignal.any([options.signal, abort.signal]) : abort.signal;
    try {
      const req = { ...request, parent: collectionName(request.parent ?? "") };
      yield* this.flow.simulatePaths(req, { ...options, signal });
    } finally {
      abort.abort();
    }
  }

  /** A batching writer over StreamUpsertPoints for the collection `id`. */
  writer(id: string, options: { maxAttempts?: number } = {}): StreamWriter {
    return new StreamWriter(this.points, collectionName(id), options.maxAttempts ?? 10);
  }
}

/** An async queue of requests feeding one bidi stream. */
class RequestQueue<T> {
  private items: T[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
      } else if (this.ended) {
        return;
      } else {
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    }
  }
}

/**
 * Streams batches into one collection. Each `write` sends one batch and
 * resolves with its acknowledgement, sent by the server only once the batch is
 * durably written (backpressure: one batch in flight). If the stream breaks
 * with UNAVAILABLE, `write` reconnects with backoff and re-sends the
 * unacknowledged batch on a new stream that resumes after the last
 * acknowledged sequence (upserts are idempotent). Not for concurrent writes.
 */
export class StreamWriter {
  private queue: RequestQueue<MessageInitShape<typeof StreamUpsertPointsRequestSchema>> | undefined;
  private acks: AsyncIterator<StreamUpsertPointsResponse> | undefined;
  private abort: AbortController | undefined;
  private acked = 0n;

  constructor(
    private readonly client: Client<typeof PointService>,
    private readonly parent: string,
    private readonly maxAttempts: number,
  ) {}

  /** Sequence number of the last acknowledged batch (0n before any). */
  get lastAcked(): bigint {
    return this.acked;
  }

  /** Sends `points` as the next batch; resolves with its acknowledgement (rejected points listed). */
  async write(points: PointInput[]): Promise<StreamUpsertPointsResponse> {
    const sequence = this.acked + 1n;
    const message = create(StreamUpsertPointsRequestSchema, {
      parent: this.parent,
      sequence,
      points: points.map(toPoint),
    });
    for (let attempt = 1, backoff = 100; ; attempt++, backoff = Math.min(2 * backoff, 5000)) {
      try {
        if (!this.queue) this.open();
        this.queue!.push(message);
        const next = await this.acks!.next();
        if (next.done) throw new ConnectError("stream closed before the acknowledgement", Code.Unavailable);
        this.acked = next.value.sequence;
        return next.value;
      } catch (err) {
        this.reset();
        if (ConnectError.from(err).code !== Code.Unavailable || attempt >= this.maxAttempts) throw err;
        await sleep(backoff);
      }
    }
  }

  private open(): void {
    this.queue = new RequestQueue();
    this.abort = new AbortController();
    this.acks = this.client.streamUpsertPoints(this.queue, { signal: this.abort.signal })[Symbol.asyncIterator]();
  }

  private reset(): void {
    this.abort?.abort();
    this.queue = this.acks = this.abort = undefined;
  }

  /** Ends the stream (every written batch was already acknowledged). */
  async close(): Promise<void> {
    if (!this.queue) return;
    this.queue.end();
    try {
      while (!(await this.acks!.next()).done);
    } finally {
      this.queue = this.acks = this.abort = undefined;
    }
  }
}

/** driftd's google.rpc.ErrorInfo of a failed call: reason (an ErrorReason name) and metadata. */
export function errorReason(err: unknown): { reason: string; metadata: Record<string, string> } | undefined {
  for (const d of ConnectError.from(err).details) {
    if (!("type" in d) || d.type !== "google.rpc.ErrorInfo") continue;
    const r = new BinaryReader(d.value);
    let reason = "";
    let domain = "";
    const metadata: Record<string, string> = {};
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (field === 1) reason = r.string();
      else if (field === 2) domain = r.string();
      else if (field === 3) {
        const entry = new BinaryReader(r.bytes());
        let key = "";
        let value = "";
        while (entry.pos < entry.len) {
          const [f, w] = entry.tag();
          if (f === 1) key = entry.string();
          else if (f === 2) value = entry.string();
          else entry.skip(w);
        }
        metadata[key] = value;
      } else r.skip(wire);
    }
    if (domain === "driftd") return { reason, metadata };
  }
  return undefined;
}

/** The request fields named by a failed call's google.rpc.BadRequest, e.g. "points[3].vector". */
export function fieldViolations(err: unknown): string[] {
  const fields: string[] = [];
  for (const d of ConnectError.from(err).details) {
    if (!("type" in d) || d.type !== "google.rpc.BadRequest") continue;
    const r = new BinaryReader(d.value);
    while (r.pos < r.len) {
      const [field, wire] = r.tag();
      if (field !== 1) {
        r.skip(wire);
        continue;
      }
      const v = new BinaryReader(r.bytes());
      while (v.pos < v.len) {
        const [f, w] = v.tag();
        if (f === 1) fields.push(v.string());
        else v.skip(w);
      }
    }
  }
  return fields;
}

export type { FlowStart, Point };
