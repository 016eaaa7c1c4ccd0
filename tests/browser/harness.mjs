// The browser test's parts: the real binary (serve, and the fake
// SuperOffice with its control API) as processes on free loopback ports,
// Debian's Chromium through playwright-core, and a static server for a
// page on another origin.

import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as netServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = process.env.TENANT_STATUS_BIN ?? join(ROOT, "target", "debug", "tenant-status");
export const CHROMIUM = process.env.TENANT_STATUS_CHROMIUM ?? "/usr/bin/chromium";
export const LOGS = mkdtempSync(join(tmpdir(), "ts-browser-"));
/** Where screenshots go: target/browser by default; `docs` refreshes the README's. */
export const SHOTS = join(ROOT, process.env.TENANT_STATUS_SCREENSHOT_DIR ?? join("target", "browser"));
mkdirSync(SHOTS, { recursive: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = netServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Waits until `f` returns a truthy value, or fails naming `what`. */
export async function until(what, f, ms = 20_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`not within ${ms} ms: ${what}${last ? ` (${last.message})` : ""}`);
}

/** One process of the binary, its output in a log file. */
export class Proc {
  constructor(name, args) {
    this.name = name;
    this.log = join(LOGS, `${name}-${Date.now()}.log`);
    const out = createWriteStream(this.log);
    this.child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "info" } });
    this.child.stdout.pipe(out);
    this.child.stderr.pipe(out);
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  /** SIGTERM, as an operator's restart does; waits for the exit. */
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 15_000);
    await this.exited;
    clearTimeout(timer);
  }

  tail(lines = 30) {
    try {
      return readFileSync(this.log, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "";
    }
  }
}

/** The fake SuperOffice with the demo's dozen tenants and its control API. */
export async function startFake({ validFor = "500ms", extra = ["--demo-script"] } = {}) {
  const port = await freePort();
  const controlPort = await freePort();
  const proc = new Proc("fake", [
    "fake-superoffice",
    "--addr", `127.0.0.1:${port}`,
    "--valid-for", validFor,
    "--control-addr", `127.0.0.1:${controlPort}`,
    ...extra,
  ]);
  const url = `http://127.0.0.1:${port}`;
  const control = `http://127.0.0.1:${controlPort}`;
  await until("the fake SuperOffice answers", async () => (await fetch(`${url}/api/state/Cust1`)).status > 0);
  await until("the fake's control API answers", async () => (await fetch(`${control}/notifications`, { method: "POST" })).status === 400 || false);
  return {
    proc,
    url,
    /** The fake's state API answers this from now on. */
    async set(ctx, state, host, version) {
      const r = await fetch(`${control}/tenants/${ctx}`, {
        method: "PUT",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ State: state, Host: host, Version: version }),
      });
      if (r.status !== 204) throw new Error(`the fake refused the state: ${r.status} ${await r.text()}`);
    },
    /** A notification body signed by the fake's key (SuperOffice's ChangeType numbers). */
    async notification(changeType, ctx, publicEndpoint) {
      const r = await fetch(`${control}/notifications`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ ChangeType: changeType, ContextIdentifier: ctx, PublicEndpoint: publicEndpoint }),
      });
      if (!r.ok) throw new Error(`the fake made no notification: ${r.status} ${await r.text()}`);
      return r.json();
    },
  };
}

export const DEMO_TENANTS = Array.from({ length: 12 }, (_, i) => `Cust${10001 + i}`);

/** `tenant-status serve` against the fake; `ports` to restart on the same ones. */
export async function startServe(fake, { extra = [], ports, tenants = ["--tenant", DEMO_TENANTS.join(",")] } = {}) {
  const p = ports ?? { grpc: await freePort(), webhook: await freePort(), admin: await freePort() };
  const proc = new Proc("serve", [
    "serve",
    "--grpc-addr", `127.0.0.1:${p.grpc}`,
    "--webhook-addr", `127.0.0.1:${p.webhook}`,
    "--admin-addr", `127.0.0.1:${p.admin}`,
    "--state-api-base-url", fake.url,
    ...tenants,
    "--poll-min-interval", "200ms",
    "--heartbeat-interval", "2s",
    "--shutdown-timeout", "3s",
    ...extra,
  ]);
  const base = `http://127.0.0.1:${p.grpc}`;
  // Ready: the first poll round of its tenants is done.
  await until("tenant-status is ready", async () => {
    if (proc.child.exitCode !== null) throw new Error(`serve exited: ${proc.tail()}`);
    return (await fetch(`http://127.0.0.1:${p.admin}/readyz`)).ok;
  }, 240_000);
  return { proc, ports: p, base, webhook: `http://127.0.0.1:${p.webhook}/NotifyCustomerStateChange` };
}

/** Debian's Chromium, headless, with nothing reaching out to the network. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    // playwright gives each launch a new empty profile (its own
    // --user-data-dir) and adds --headless.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A page that records console errors and uncaught exceptions. */
export async function openPage(browser, url, { width = 1440, height = 900 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") page.problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => page.problems.push(`exception: ${e.message}`));
  if (url) await page.goto(url);
  return page;
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };

/** Serves `dir` (and `extra` paths → HTML) on a free port: a site on another origin. */
export async function staticSite(dir, extra = {}) {
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (extra[path]) {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(extra[path]);
      return;
    }
    const file = normalize(join(dir, path === "/" ? "index.html" : path));
    if (!file.startsWith(dir)) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = readFileSync(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { port: server.address().port, close: () => new Promise((r) => server.close(r)) };
}
