/**
 * Which RPCs the client sends again after UNAVAILABLE, and the interceptor that
 * does it.
 */
import type { DescMethod, Message } from "@bufbuild/protobuf";
import { MethodOptions_IdempotencyLevel } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

import { file_driftd_v1_behavior } from "./gen/driftd/v1/behavior_pb.js";
import { file_driftd_v1_collection } from "./gen/driftd/v1/collection_pb.js";
import { file_driftd_v1_flow } from "./gen/driftd/v1/flow_pb.js";
import { file_driftd_v1_monitor } from "./gen/driftd/v1/monitor_pb.js";
import { file_driftd_v1_point } from "./gen/driftd/v1/point_pb.js";
import { file_driftd_v1_routing } from "./gen/driftd/v1/routing_pb.js";

/**
 * Whether the client may send `method` again after UNAVAILABLE: the proto marks
 * its `idempotency_level` NO_SIDE_EFFECTS or IDEMPOTENT (each RPC's decision
 * and its reason are in proto/driftd/v1), and the client sends one request
 * message. Calls that stream requests are never re-sent: the writer resumes
 * StreamUpsertPoints after the last acknowledged batch itself, and
 * ImportCollection is not idempotent.
 */
function retriedByTransport(method: DescMethod): boolean {
  return (
    method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN &&
    (method.methodKind === "unary" || method.methodKind === "server_streaming")
  );
}

/**
 * The RPCs that DriftClient retries after UNAVAILABLE, as
 * "/package.Service/Method", sorted: read from the generated descriptors of
 * driftd.v1 ({@link retriedByTransport}), as the Python and Go clients read
 * theirs. The server-streaming ones are retried only until the response
 * starts. Every other RPC fails at the first UNAVAILABLE, as does
 * grpc.health.v1.Health/Check (a probe must see the outage).
 */
export const RETRYABLE_METHODS: readonly string[] = Object.freeze(
  [
    file_driftd_v1_collection,
    file_driftd_v1_point,
    file_driftd_v1_flow,
    file_driftd_v1_monitor,
    file_driftd_v1_behavior,
    file_driftd_v1_routing,
  ]
    .flatMap((file) => file.services.flatMap((service) => service.methods))
    .filter(retriedByTransport)
    .map((m) => `/${m.parent.typeName}/${m.name}`)
    .sort(),
);

const retryable = new Set(RETRYABLE_METHODS);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function* replay<T>(items: readonly T[]): AsyncGenerator<T> {
  yield* items;
}

/**
 * Retries the {@link RETRYABLE_METHODS} that fail with UNAVAILABLE before any
 * response (0.1 s doubling to 2 s, jittered), `maxAttempts` tries in all; other
 * methods go through once.
 */
export function retryUnavailable(maxAttempts: number): Interceptor {
  return (next) => async (req) => {
    if (maxAttempts <= 1 || !retryable.has(`/${req.service.typeName}/${req.method.name}`)) return next(req);
    let attempt = (): ReturnType<typeof next> => next(req);
    if (req.stream) {
      // A server stream's one request message (the retried methods send
      // one), read once and re-sent on each attempt (the request iterable
      // cannot be read twice). A stream that fails after its response started
      // is not retried: next() has resolved.
      const messages: Message[] = [];
      for await (const m of req.message) messages.push(m);
      attempt = () => next({ ...req, message: replay(messages) });
    }
    for (let n = 1, backoff = 100; ; n++, backoff = Math.min(2 * backoff, 2000)) {
      try {
        return await attempt();
      } catch (err) {
        const code = ConnectError.from(err).code;
        if (code !== Code.Unavailable || n >= maxAttempts || req.signal.aborted) throw err;
        await sleep(backoff * (0.5 + Math.random() / 2));
      }
    }
  };
}
