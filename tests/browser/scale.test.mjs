// The dashboard with 100,000 tenants: it loads them, stays responsive
// while it does, keeps only the visible rows in the page, and a change
// still shows within a second. The service polls all of them from the
// fake first (about a minute in a debug build on two cores).

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { LOGS, launchChromium, openPage, startFake, startServe, until } from "./harness.mjs";

const N = Number(process.env.TENANT_STATUS_BROWSER_SCALE ?? 100_000);
let browser;
const procs = [];

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  for (const p of procs) await p.stop();
});

test(`stays responsive with ${N.toLocaleString("en")} tenants`, { timeout: 300_000 }, async () => {
  const fake = await startFake({ validFor: "1h", extra: ["--tenants", String(N)] });
  procs.push(fake.proc);
  const file = join(LOGS, "tenants.txt");
  writeFileSync(file, Array.from({ length: N }, (_, i) => `Cust${i + 1}`).join("\n"));
  const serve = await startServe(fake, { tenants: ["--tenants-file", file], extra: ["--superoffice-max-in-flight", "128", "--ready-timeout", "10m"] });
  procs.push(serve.proc);

  const page = await openPage(browser);
  // Every frame's distance from the one before, from the first paint on.
  await page.addInitScript(() => {
    const gaps = [];
    let last = performance.now();
    const tick = (t) => {
      gaps.push(t - last);
      last = t;
      requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    window.__frameGaps = gaps;
  });
  const t0 = Date.now();
  await page.goto(`${serve.base}/`);
  await page.waitForSelector('#connection[data-connection="live"]', { timeout: 120_000 });
  const loaded = Date.now() - t0;
  await until("all of them counted", async () => (await page.textContent('.card[data-count="all"] .card-value')).replace(/\D/g, "") === String(N), 10_000);
  const worst = await page.evaluate(() => Math.max(...window.__frameGaps));
  const rowsInPage = await page.locator(".tr[data-tenant]").count();
  console.log(`# ${N} tenants: live ${loaded} ms after opening; longest frame while loading ${worst.toFixed(0)} ms; ${rowsInPage} rows in the page`);
  assert.ok(rowsInPage < 100, `only the visible rows are in the page, not ${rowsInPage}`);
  assert.ok(worst < 1000, `the page froze for ${worst.toFixed(0)} ms while loading`);

  // Search, scroll to the end, and a notification for the last tenant.
  let t = Date.now();
  const last = `Cust${N}`;
  await page.fill("#search", last);
  await page.waitForSelector(`.tr[data-tenant="${last}"]:not([hidden])`, { timeout: 2_000 });
  await until("one row", async () => (await page.locator(".tr[data-tenant]:not([hidden])").count()) === 1, 2_000);
  console.log(`# search: ${Date.now() - t} ms`);
  await page.fill("#search", "");
  // Identifiers sort by their numbers: Cust1 first, the last one last.
  await until("Cust1 at the top", async () => (await page.getAttribute('.tr[data-tenant]:not([hidden])[aria-rowindex="2"]', "data-tenant")) === "Cust1", 2_000);
  assert.equal(await page.locator(`.tr[data-tenant="${last}"]`).count(), 0, "the last row is not in the page before scrolling");
  t = Date.now();
  await page.$eval("#viewport", (v) => {
    v.scrollTop = v.scrollHeight;
  });
  await page.waitForSelector(`.tr[data-tenant="${last}"]:not([hidden])`, { timeout: 2_000 });
  console.log(`# scroll to the end: ${Date.now() - t} ms`);

  const body = await fake.notification(0, last); // Upgrade
  const r = await fetch(serve.webhook, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  assert.equal(r.status, 204);
  t = Date.now();
  await page.waitForSelector(`.tr[data-tenant="${last}"][data-state="TENANT_STATE_OFFLINE_MAINTENANCE"]`, { timeout: 1_000 });
  await page.waitForSelector(`.feed-item[data-tenant="${last}"]`, { timeout: 1_000 });
  console.log(`# a notification among ${N}: in the table and the feed ${Date.now() - t} ms after its 204`);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});
