// The whole flow through openapi-fetch, typed by what openapi-typescript generated from
// exportd's live spec (./schema.d.ts). Type-checked with `tsc --strict` before it runs, so a
// spec that does not describe the API as used here fails at compile time too.
// Usage: node roundtrip.js BASE_URL OUT_FILE REQUEST_JSON; prints the ids as one JSON line.
import createClient from "openapi-fetch";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import type { components, paths } from "./schema.js";

type CreateExportRequest = components["schemas"]["CreateExportRequest"];
type ErrorBody = components["schemas"]["ErrorBody"];

function check(ok: boolean, what: string, detail?: unknown): asserts ok {
  if (!ok) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

const [base, out, requestJson] = process.argv.slice(2);
check(base !== undefined && out !== undefined && requestJson !== undefined, "usage: BASE_URL OUT_FILE REQUEST_JSON");
const request: CreateExportRequest = JSON.parse(requestJson);
// Without a key every operation is refused: 401 with an ErrorBody, as the spec declares.
const anonymous = await createClient<paths>({ baseUrl: base }).GET("/api/datasets");
if (anonymous.response.status !== 401 || anonymous.error?.error !== "unauthorized") {
  throw new Error(`without a key: ${anonymous.response.status} ${JSON.stringify(anonymous.error)}`);
}
const client = createClient<paths>({
  baseUrl: base,
  headers: { Authorization: `Bearer ${process.env.EXPORTD_KEY}` },
});

const datasets = await client.GET("/api/datasets");
check(datasets.data !== undefined, "datasets", datasets.error);
const orders = datasets.data.find((d) => d.name === "orders");
check(orders !== undefined && orders.default && orders.columns.some((c) => c.name === "customer_email"), "orders", orders);

const created = await client.POST("/api/export", {
  body: request,
  params: { header: { "Idempotency-Key": randomUUID() } },
});
check(created.data !== undefined, "create", created.error);
check(created.data.status === "queued", "a new export is queued", created.data);
const id = created.data.jobId;

const deadline = Date.now() + 60_000;
let status: components["schemas"]["ExportStatusView"];
for (;;) {
  const polled = await client.GET("/api/export/{id}/status", { params: { path: { id } } });
  check(polled.data !== undefined, "status", polled.error);
  status = polled.data;
  if (status.status !== "queued" && status.status !== "running") break;
  check(Date.now() < deadline, "the export finishes within 60 s", status);
  await new Promise((r) => setTimeout(r, 50));
}
check(status.status === "completed" && status.error == null && status.finishedAt != null, "completed", status);
check(status.options?.compression === "gzip", "options echo the request", status.options);

const file = await client.GET("/api/export/{id}/download", { params: { path: { id } }, parseAs: "arrayBuffer" });
check(file.data !== undefined, "download", file.error);
const bytes = Buffer.from(file.data);
check(bytes.length === status.bytesWritten, "the whole file", [bytes.length, status.bytesWritten]);
writeFileSync(out, bytes);

// Another export, throttled so that it is still queued or running, cancelled.
const slow = await client.POST("/api/export", { body: { maxRowsPerSecond: 1, chunkSize: 100 } });
check(slow.data !== undefined, "create the slow export", slow.error);
const cancelled = await client.DELETE("/api/export/{id}", { params: { path: { id: slow.data.jobId } } });
check(cancelled.data?.status === "cancelled", "cancelled", cancelled.data ?? cancelled.error);

const page = await client.GET("/api/exports", { params: { query: { limit: 10 } } });
check(page.data !== undefined, "list", page.error);
const ids = page.data.items.map((e) => e.jobId);
check(ids.includes(id) && ids.includes(slow.data.jobId) && page.data.nextCursor == null, "listed", ids);

// A Parquet export, typed by the spec's enums (a wrong literal would not compile); the file
// starts and ends with Parquet's magic.
const parquet = await client.POST("/api/export", {
  body: { columns: ["id", "amount"], format: { type: "parquet", codec: "snappy" } },
});
check(parquet.data !== undefined, "create a parquet export", parquet.error);
for (const until = Date.now() + 60_000; ; ) {
  const polled = await client.GET("/api/export/{id}/status", { params: { path: { id: parquet.data.jobId } } });
  check(polled.data !== undefined && Date.now() < until, "parquet status", polled.data ?? polled.error);
  if (polled.data.status === "queued" || polled.data.status === "running") {
    await new Promise((r) => setTimeout(r, 50));
    continue;
  }
  check(polled.data.status === "completed" && polled.data.options?.format?.type === "parquet", "parquet done", polled.data);
  break;
}
const pq = await client.GET("/api/export/{id}/download", {
  params: { path: { id: parquet.data.jobId } },
  parseAs: "arrayBuffer",
});
check(pq.data !== undefined, "parquet download", pq.error);
const pqBytes = Buffer.from(pq.data);
check(pqBytes.subarray(0, 4).toString() === "PAR1" && pqBytes.subarray(-4).toString() === "PAR1", "a Parquet file", pqBytes.length);

// Errors arrive as the declared ErrorBody.
const bad = await client.POST("/api/export", { body: { columns: ["id", "no_such_column"] } });
const badError: ErrorBody | undefined = bad.error;
check(bad.response.status === 400 && badError?.error === "bad_request", "400", badError);
check(badError.message.includes("no_such_column"), "the message names the field", badError);
const missing = await client.GET("/api/export/{id}/status", { params: { path: { id: randomUUID() } } });
check(missing.response.status === 404 && missing.error?.error === "not_found", "404", missing.error);

console.log(JSON.stringify({ completed: id, cancelled: slow.data.jobId }));
