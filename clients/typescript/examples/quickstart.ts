// Quickstart: create a collection, stream four timelines into it, probe the
// flow and follow a simulated path.
//
//   npm run example -- 127.0.0.1:50051
import { Code, ConnectError, DriftClient, Distance, type PointInput, atPoint, atVector } from "../src/index.js";

const target = process.argv[2] ?? "127.0.0.1:50051";
const id = "ts-quickstart";
const db = new DriftClient(target);

await db.deleteCollection(id).catch((err) => {
  if (ConnectError.from(err).code !== Code.NotFound) throw err;
});
await db.createCollection(id, { dimension: 2, distance: Distance.L2 });

// Four timelines spiralling into the origin, one batch each.
const writer = db.writer(id);
const start = Date.UTC(2024, 0, 1);
for (let s = 0; s < 4; s++) {
  const batch: PointInput[] = Array.from({ length: 40 }, (_, i) => {
    const r = 3 * Math.exp(-0.05 * i);
    const a = (s * Math.PI) / 2 + 0.1 * i;
    return {
      id: `s${s}-${String(i).padStart(2, "0")}`,
      series: `spiral-${s}`,
      time: new Date(start + i * 3_600_000),
      vector: [r * Math.cos(a), r * Math.sin(a)],
    };
  });
  const ack = await writer.write(batch);
  console.log(`batch ${ack.sequence} acknowledged: ${ack.acceptedCount} points (collection version ${ack.collectionVersion})`);
}
await writer.close();

const probe = await db.probe(id, atVector([2, 0]));
console.log(
  `flow at (2, 0): velocity [${probe.velocity.map((x) => x.toExponential(2)).join(", ")}] per second, ` +
    `confidence ${probe.confidence.toFixed(2)}, nearest point ${probe.nearestPointId}`,
);

console.log("simulated path from s0-00:");
for await (const step of db.simulate({ parent: id, start: atPoint("s0-00"), steps: 12, includeVectors: true })) {
  const [x = 0, y = 0] = step.position;
  console.log(`  step ${String(step.step).padStart(2)}  (${x.toFixed(2)}, ${y.toFixed(2)})  nearest ${step.nearestPointId} ${step.stopReason}`);
}
