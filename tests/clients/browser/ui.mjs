// The exports page (/ui) in headless Chromium (Debian's, driven by playwright-core), as a
// person uses it: sign in with a key (EXPORTD_KEY), see only that owner's exports, watch a
// running export's bar advance without reloading, download a completed one, cancel the running
// one; then the same list with JavaScript switched off. Screenshots go to SHOT_DIR.
// Usage: node ui.mjs BASE_URL SHOT_DIR RUNNING_ID COMPLETED_ID OTHER_OWNERS_ID; prints one JSON line.
import { chromium } from "playwright-core";

const [base, shots, running, completed, other] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox"], // CI runs as root
});
const result = {};
try {
  // Without JavaScript: sign-in and the list are plain forms and HTML.
  const plain = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1280, height: 900 } });
  const p0 = await plain.newPage();
  await p0.goto(`${base}/ui`);
  await p0.fill("#key", "exk_not_a_key");
  await p0.click("button[type=submit]");
  result.badKey = (await p0.locator(".error").innerText()).trim();
  await p0.fill("#key", process.env.EXPORTD_KEY);
  await p0.click("button[type=submit]");
  await p0.locator("#exports").waitFor();
  result.noJsRows = await p0.locator("#exports tbody tr").count();
  result.noJsSeesRunning = await p0.locator(`#export-${running}`).count();
  await p0.screenshot({ path: `${shots}/ui-no-javascript.png`, fullPage: true });
  await plain.close();

  const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  let loads = 0;
  page.on("load", () => loads++);
  await page.goto(`${base}/ui`);
  await page.fill("#key", process.env.EXPORTD_KEY);
  await page.click("button[type=submit]");
  await page.locator("#exports").waitFor();
  // The table is in the DOM before the signed-in page's load event: count loads only after
  // it (a CI run counted that event as a reload while watching).
  await page.waitForLoadState("load");
  result.otherOwnersVisible = await page.locator(`#export-${other}`).count();
  result.completedVisible = await page.locator(`#export-${completed}`).count();
  const bar = () => page.locator(`#export-${running} progress`).getAttribute("value").then(Number);
  result.progressBefore = await bar();
  const loadsBefore = loads;
  // The script refreshes the table: the bar moves while the page stays loaded.
  await page.waitForFunction(
    ([id, before]) => Number(document.querySelector(`#export-${id} progress`)?.value) > before,
    [running, result.progressBefore],
    { timeout: 20000 },
  );
  result.progressAfter = await bar();
  result.reloadsWhileWatching = loads - loadsBefore;
  result.rate = (await page.locator(`#export-${running} td.num`).nth(1).innerText()).trim();
  await page.screenshot({ path: `${shots}/ui.png`, fullPage: true });

  const [download] = await Promise.all([
    page.waitForEvent("download"),
    page.locator(`#export-${completed} a.download`).click(),
  ]);
  result.file = `${shots}/downloaded.csv`;
  await download.saveAs(result.file);

  await page.locator(`#export-${running} button.cancel`).click();
  await page.waitForFunction(
    (id) => document.querySelector(`#export-${id}`)?.dataset.status === "cancelled",
    running,
    { timeout: 15000 },
  );
  result.cancelled = await page.locator(`#export-${running}`).getAttribute("data-status");
  await page.screenshot({ path: `${shots}/ui-cancelled.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
