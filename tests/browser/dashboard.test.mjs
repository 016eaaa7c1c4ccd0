// The dashboard in a real browser (Debian's Chromium, headless, driven by
// playwright-core) against the real binary and the project's fake
// SuperOffice, each a process on loopback ports. Run by
// scripts/browser-test.sh (`node --test`), which CI runs.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { LOGS, ROOT, SHOTS, launchChromium, openPage, startFake, startServe, staticSite, until } from "./harness.mjs";

const row = (id, state) => `.tr[data-tenant="${id}"]${state ? `[data-state="${state}"]` : ""}`;
const feedItem = (id, state) => `.feed-item[data-tenant="${id}"][data-state="${state}"]`;
const LIVE = '#connection[data-connection="live"]';
const RECONNECTING = '#connection[data-connection="reconnecting"]';

let browser;
let fake;
const started = [];

before(async () => {
  browser = await launchChromium();
  fake = await startFake();
  started.push(fake.proc);
});

after(async () => {
  await browser?.close();
  for (const p of started) await p.stop();
});

/** Fails with the processes' last log lines, so a CI failure says why. */
function explain(e, ...procs) {
  const logs = procs.map((p) => `--- ${p.name} (${p.log})\n${p.tail()}`).join("\n");
  e.message += `\n${logs}`;
  throw e;
}

describe("the dashboard, served by tenant-status at GET /", () => {
  let serve;
  let page;

  before(async () => {
    serve = await startServe(fake);
    started.push(serve.proc);
    page = await openPage(browser, `${serve.base}/`);
  });

  test("loads, goes live and shows every tenant with its state", async () => {
    try {
      await page.waitForSelector(LIVE, { timeout: 15_000 });
      await until("twelve rows", async () => (await page.locator(".tr[data-tenant]").count()) === 12, 10_000);
      // Cust10012 is suspended throughout the demo's script.
      await page.waitForSelector(row("Cust10012", "TENANT_STATE_SUSPENDED"), { timeout: 5_000 });
      assert.equal(await page.textContent('.card[data-count="all"] .card-value'), "12");
      assert.match(await page.textContent(`${row("Cust10012")} .c-host`), /sod2\.superoffice\.com/);
      assert.deepEqual(page.problems, [], "no console error (a CSP violation shows as one)");
    } catch (e) {
      explain(e, serve.proc, fake.proc);
    }
  });

  test("a state change at SuperOffice shows in the table and the feed", async () => {
    // The fake answers ValidUntil 500 ms ahead, so the service polls again
    // within 500 ms; then the stream and the page have a second.
    await fake.set("Cust10001", "OfflineMaintenance", "sod2.superoffice.com");
    const t0 = Date.now();
    try {
      await page.waitForSelector(row("Cust10001", "TENANT_STATE_OFFLINE_MAINTENANCE"), { timeout: 1500 });
      const t1 = Date.now();
      await page.waitForSelector(feedItem("Cust10001", "TENANT_STATE_OFFLINE_MAINTENANCE"), { timeout: 1000 });
      console.log(`# state change: in the table ${t1 - t0} ms after the fake's change (a poll included)`);
      assert.match(await page.textContent(feedItem("Cust10001", "TENANT_STATE_OFFLINE_MAINTENANCE")), /poll/);
    } catch (e) {
      explain(e, serve.proc, fake.proc);
    }
  });

  test("a signed notification shows in the table and the feed within a second", async () => {
    // Suspend (SuperOffice's ChangeType 2) of a tenant the fake goes on
    // answering Running for: the notification's state holds.
    const body = await fake.notification(2, "Cust10010");
    const r = await fetch(serve.webhook, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.equal(r.status, 204, await r.text());
    const t0 = Date.now();
    try {
      await page.waitForSelector(row("Cust10010", "TENANT_STATE_SUSPENDED"), { timeout: 1000 });
      await page.waitForSelector(feedItem("Cust10010", "TENANT_STATE_SUSPENDED"), { timeout: 1000 - (Date.now() - t0) });
      console.log(`# notification: in the table and the feed ${Date.now() - t0} ms after its 204`);
      assert.match(await page.textContent(row("Cust10010")), /notification · Suspend/);
      assert.match(await page.textContent(feedItem("Cust10010", "TENANT_STATE_SUSPENDED")), /notification · Suspend/);
      assert.match(await page.textContent(row("Cust10010")), /held/);
    } catch (e) {
      explain(e, serve.proc, fake.proc);
    }
    await page.screenshot({ path: join(SHOTS, "dashboard.png") });
  });

  test("filters by state and searches by identifier", async () => {
    await page.selectOption("#state-filter", "4"); // TENANT_STATE_SUSPENDED
    await until("only suspended rows", async () => {
      const states = await page.$$eval(".tr[data-tenant]:not([hidden])", (rows) => rows.map((r) => r.dataset.state));
      return states.length >= 2 && states.every((s) => s === "TENANT_STATE_SUSPENDED");
    });
    await page.selectOption("#state-filter", "all");
    await page.fill("#search", "cust10005");
    await until("one row", async () => {
      const ids = await page.$$eval(".tr[data-tenant]:not([hidden])", (rows) => rows.map((r) => r.dataset.tenant));
      return ids.length === 1 && ids[0] === "Cust10005";
    });
    await page.fill("#search", "");
    await until("every row again", async () => (await page.locator(".tr[data-tenant]:not([hidden])").count()) === 12);
  });

  test("survives a restart of the service and is current after it", async () => {
    try {
      await serve.proc.stop();
      await page.waitForSelector(RECONNECTING, { timeout: 10_000 });
      // While the service is down, SuperOffice moves the tenant.
      await fake.set("Cust10001", "Running", "sod3.superoffice.com");
      serve = await startServe(fake, { ports: serve.ports });
      started.push(serve.proc);
      // Backoff is at most 10 s (with jitter).
      await page.waitForSelector(LIVE, { timeout: 20_000 });
      await page.waitForSelector(row("Cust10001", "TENANT_STATE_RUNNING"), { timeout: 5_000 });
      await until("the new host", async () => /sod3\.superoffice\.com/.test(await page.textContent(`${row("Cust10001")} .c-host`)), 5_000);
      const detail = await page.textContent("#connection-detail");
      console.log(`# after the restart: ${detail}`);
      assert.match(detail, /resumed from revision \d+|full snapshot/);
      assert.equal(await page.locator(".tr[data-tenant]").count(), 12);
      // And it is live again: a change after the restart arrives too.
      await fake.set("Cust10001", "Suspended", "sod3.superoffice.com");
      await page.waitForSelector(row("Cust10001", "TENANT_STATE_SUSPENDED"), { timeout: 3_000 });
    } catch (e) {
      explain(e, serve.proc, fake.proc);
    }
  });
});

describe("with --grpc-token-file", () => {
  test("the page asks for the token and sends it as the bearer token", async () => {
    const token = "dashboard-browser-test-token-0123456789";
    const file = join(LOGS, "tokens.txt");
    writeFileSync(file, `# the browser test's\n${token}\n`);
    const serve = await startServe(fake, { extra: ["--grpc-token-file", file] });
    started.push(serve.proc);
    const page = await openPage(browser, `${serve.base}/`);
    try {
      await page.waitForSelector("#token-dialog[open]", { timeout: 10_000 });
      assert.equal(await page.getAttribute("#connection", "data-connection"), "reconnecting");
      await page.screenshot({ path: join(SHOTS, "dashboard-token.png") });
      // A wrong token is refused and asked for again.
      await page.fill("#token-input", "not-the-token-at-all-000000");
      await page.click('#token-form button[type="submit"]');
      await page.waitForSelector("#token-dialog[open]", { timeout: 10_000 });
      assert.match(await page.textContent("#token-reason"), /refused/);
      await page.fill("#token-input", token);
      await page.click('#token-form button[type="submit"]');
      await page.waitForSelector(LIVE, { timeout: 10_000 });
      await until("twelve rows", async () => (await page.locator(".tr[data-tenant]").count()) === 12, 10_000);
      // Kept for the tab: a reload connects without asking.
      await page.reload();
      await page.waitForSelector(LIVE, { timeout: 10_000 });
      assert.equal(await page.isVisible("#token-dialog"), false);
    } catch (e) {
      explain(e, serve.proc);
    } finally {
      await page.context().close();
      await serve.proc.stop();
    }
  });
});

describe("cross-origin gRPC-Web (CORS)", () => {
  // A grpc-web call from a page on another origin: ListTenants, an empty
  // request in one frame.
  async function callFrom(page, base) {
    return page.evaluate(async (url) => {
      try {
        const r = await fetch(`${url}/tenantstatus.v1.TenantStatusService/ListTenants`, {
          method: "POST",
          headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
          body: new Uint8Array([0, 0, 0, 0, 0]),
        });
        const bytes = new Uint8Array(await r.arrayBuffer());
        return { status: r.status, body: new TextDecoder().decode(bytes) };
      } catch (e) {
        return { error: String(e) };
      }
    }, base);
  }

  test("is refused without --grpc-web-allow-origin, and works for the origins it names", async () => {
    const site = await staticSite(join(ROOT, "dashboard", "dist"), { "/blank.html": "<!doctype html><title>elsewhere</title>" });
    const origin = `http://127.0.0.1:${site.port}`;
    const closed = await startServe(fake);
    const open = await startServe(fake, { extra: ["--grpc-web-allow-origin", origin] });
    started.push(closed.proc, open.proc);
    const page = await openPage(browser, `${origin}/blank.html`);
    try {
      const refused = await callFrom(page, closed.base);
      assert.ok(refused.error, `a cross-origin call without the flag must fail: ${JSON.stringify(refused)}`);
      const allowed = await callFrom(page, open.base);
      assert.equal(allowed.status, 200, JSON.stringify(allowed));
      assert.match(allowed.body, /grpc-status:\s*0/);
      assert.match(allowed.body, /Cust10001/);

      // Another origin (same port, other host name) is still refused.
      const other = await openPage(browser, `http://localhost:${site.port}/blank.html`);
      const stranger = await callFrom(other, open.base);
      assert.ok(stranger.error, `an origin the flag does not name must fail: ${JSON.stringify(stranger)}`);
      await other.context().close();

      // The dashboard itself hosted elsewhere, pointed at the server.
      const hosted = await openPage(browser, `${origin}/?api=${encodeURIComponent(open.base)}`);
      await hosted.waitForSelector(LIVE, { timeout: 15_000 });
      await until("twelve rows", async () => (await hosted.locator(".tr[data-tenant]").count()) === 12, 10_000);
      await hosted.context().close();
      const unhosted = await openPage(browser, `${origin}/?api=${encodeURIComponent(closed.base)}`);
      await unhosted.waitForSelector('#connection[data-phase="waiting"]', { timeout: 15_000 });
      assert.equal(await unhosted.locator(".tr[data-tenant]").count(), 0);
      await unhosted.context().close();
    } catch (e) {
      explain(e, closed.proc, open.proc);
    } finally {
      await page.context().close();
      await site.close();
      await closed.proc.stop();
      await open.proc.stop();
    }
  });
});
