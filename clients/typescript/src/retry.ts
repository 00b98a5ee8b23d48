/**
 * Which RPCs the client sends again after UNAVAILABLE, and the interceptor that
 * does it.
 */
import type { Message } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

/**
 * The RPCs that DriftClient retries after UNAVAILABLE, as
 * "/package.Service/Method": the reads, and the writes whose repetition changes
 * nothing (UpsertPoints replaces points by id; DeletePoints ignores ids already
 * gone; ExtractFacts recomputes a branch's facts from its messages). The
 * server-streaming ones are retried only until the response starts.
 *
 * Every other RPC fails at the first UNAVAILABLE, because a connection lost
 * after the server did the work would repeat it: CreateCollection,
 * AttachCollection, ImportCollection, CreateDriftRule (a repeat fails with ALREADY_EXISTS or
 * creates a second rule), DeleteCollection, DeleteDriftRule (a repeat fails
 * with NOT_FOUND), ProcessBehaviors (a repeat applies the candidates twice),
 * RouteMessage (safe only with a message_id, which a per-method policy cannot
 * see), StreamUpsertPoints (the writer resumes it instead) and
 * grpc.health.v1.Health/Check (a probe must see the outage).
 *
 * The reference is the Python client's RETRYABLE_METHODS
 * (driftd/client/_common.py): keep this list equal to it. The tests fail on an
 * RPC of the generated services that is neither here nor in their list of
 * non-retryable ones.
 */
export const RETRYABLE_METHODS: readonly string[] = Object.freeze([
  "/driftd.v1.CollectionService/GetCollection",
  "/driftd.v1.CollectionService/ListCollections",
  "/driftd.v1.CollectionService/ExportCollection",
  "/driftd.v1.PointService/UpsertPoints",
  "/driftd.v1.PointService/GetPoints",
  "/driftd.v1.PointService/DeletePoints",
  "/driftd.v1.PointService/GetTrajectory",
  "/driftd.v1.PointService/SearchPoints",
  "/driftd.v1.FlowService/ProbeFlow",
  "/driftd.v1.FlowService/SimulatePaths",
  "/driftd.v1.FlowService/FindAttractors",
  "/driftd.v1.FlowService/DetectChapters",
  "/driftd.v1.MonitorService/CompareWindows",
  "/driftd.v1.MonitorService/EmbeddingHealth",
  "/driftd.v1.MonitorService/WatchCollection",
  "/driftd.v1.MonitorService/GetDriftRule",
  "/driftd.v1.MonitorService/ListDriftRules",
  "/driftd.v1.BehaviorService/ListBehaviors",
  "/driftd.v1.RoutingService/ListBranches",
  "/driftd.v1.RoutingService/GetBranchContext",
  "/driftd.v1.RoutingService/ExtractFacts",
]);

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
      // A server stream's one request message, read once and re-sent on each
      // attempt (the request iterable cannot be read twice). A stream that
      // fails after its response started is not retried: next() has resolved.
      if (req.method.methodKind !== "server_streaming") return next(req);
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
