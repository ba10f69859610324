// Swagger UI in headless Chromium (Debian's, driven by playwright-core), as a person uses it:
// open /docs, see create refused without a key (401), enter the key (EXPORTD_KEY) under
// "Authorize", then "Try it out" on create with the example body, on status until it is completed,
// and on download, saving the file the page offers. Then a page on another origin calls the
// API with fetch (CORS). Screenshots go to SHOT_DIR.
// Usage: node swagger.mjs BASE_URL SHOT_DIR OTHER_ORIGIN_PAGE_URL; prints one JSON line.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [base, shots, otherPage] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"], // CI runs as root
});
const result = {};
try {
  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 2000 } });
  const page = await context.newPage();
  await page.goto(`${base}/docs`);

  // Opens an operation, presses "Try it out", fills parameters, presses "Execute" and returns
  // the status and body Swagger UI shows.
  async function run(operationId, params = {}) {
    const op = page.locator(`#operations-Exports-${operationId}`);
    if (!(await op.locator(".opblock-body").isVisible())) await op.locator(".opblock-summary").first().click();
    const tryOut = op.locator("button.try-out__btn");
    if ((await tryOut.innerText()).includes("Try it out")) await tryOut.click();
    for (const [name, value] of Object.entries(params)) {
      await op.locator(`tr[data-param-name="${name}"] input`).fill(value);
    }
    await op.locator("button.execute").click();
    const status = op.locator(".live-responses-table tr.response td.response-col_status").first();
    await status.waitFor();
    await op.locator(".loading-container").waitFor({ state: "detached" }).catch(() => {});
    const code = (await status.innerText()).trim();
    const bodyEl = op.locator(".live-responses-table tr.response .response-col_description pre.microlight").first();
    const body = (await bodyEl.count()) ? await bodyEl.innerText() : "";
    return { op, code, body };
  }

  // Without a key: refused, and Swagger UI shows the 401.
  const refused = await run("createExport");
  if (refused.code !== "401") throw new Error(`create without a key answered ${refused.code}: ${refused.body}`);
  result.withoutKey = JSON.parse(refused.body).error;
  // "Authorize": the spec's bearer scheme asks for the key.
  await page.locator(".auth-wrapper button.authorize").click();
  const dialog = page.locator(".dialog-ux .modal-ux");
  await dialog.locator("input").first().fill(process.env.EXPORTD_KEY);
  await dialog.locator("button.modal-btn.auth.authorize").click();
  await dialog.screenshot({ path: `${shots}/swagger-authorize.png` });
  await dialog.locator("button.btn-done").click();

  const created = await run("createExport");
  if (created.code !== "202") throw new Error(`create answered ${created.code}: ${created.body}`);
  const id = JSON.parse(created.body).jobId;
  result.id = id;
  await created.op.screenshot({ path: `${shots}/swagger-create.png` });

  let status;
  for (let i = 0; ; i++) {
    status = await run("getExportStatus", { id });
    if (status.code !== "200") throw new Error(`status answered ${status.code}: ${status.body}`);
    const s = JSON.parse(status.body).status;
    if (s === "completed") break;
    if (s !== "queued" && s !== "running") throw new Error(`the export ended ${s}: ${status.body}`);
    if (i > 200) throw new Error("the export did not complete");
    await page.waitForTimeout(100);
  }
  result.rows = JSON.parse(status.body).rowsWritten;
  await status.op.screenshot({ path: `${shots}/swagger-status.png` });

  const downloaded = await run("downloadExport", { id });
  if (downloaded.code !== "200") throw new Error(`download answered ${downloaded.code}`);
  const link = downloaded.op.locator(".live-responses-table a", { hasText: "Download file" });
  const [file] = await Promise.all([page.waitForEvent("download"), link.click()]);
  result.file = `${shots}/swagger-download.bin`;
  await file.saveAs(result.file);
  result.fileBytes = readFileSync(result.file).length;
  await downloaded.op.screenshot({ path: `${shots}/swagger-download.png` });
  await page.screenshot({ path: `${shots}/swagger-ui.png`, fullPage: true });

  // A page on another origin: fetch works, and it can read the ETag, when CORS lets it.
  const other = await context.newPage();
  await other.goto(otherPage);
  result.crossOrigin = await other.evaluate(async ([api, id, key]) => {
    try {
      const headers = { Authorization: `Bearer ${key}` }; // a preflighted request
      const resp = await fetch(`${api}/api/export/${id}/download`, { method: "GET", headers });
      return { status: resp.status, etag: resp.headers.get("etag"), bytes: (await resp.arrayBuffer()).byteLength };
    } catch (e) {
      return { error: String(e) };
    }
  }, [base, id, process.env.EXPORTD_KEY]);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
