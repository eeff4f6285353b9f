// Drives wardgate's status page in a real headless Chromium (playwright-core, the
// system's /usr/bin/chromium; nothing is downloaded) and reports what a technician
// would see, as JSON lines on stdout:
//
//   {"phase":"live", devices, spoolFirst, spoolLater, conn, ...}  once the devices
//       table has the expected rows and the spool figure has changed on its own;
//   {"phase":"done", staleConn, ...}  once the page says "stale" after the server
//       stopped (the driving test stops it when it reads the "live" line);
//   {"phase":"error", message}  on any failure (exit status 1).
//
// Usage: node tests/browser/status-page.mjs <url with #token=...> <expected device rows>
// Exit status 3: playwright-core or chromium is missing (the caller decides whether
// that is a skip or a failure).
//
// playwright-core is looked up in tests/.work/node/node_modules (where tests/run
// installs it), then in $NODE_PATH.

import { createRequire } from "node:module";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const STEP_TIMEOUT_MS = 20000;

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", ".work", "node", "package.json"));

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

const [url, expectedRowsArg] = process.argv.slice(2);
const expectedRows = Number.parseInt(expectedRowsArg ?? "", 10);
if (!url || !Number.isInteger(expectedRows)) {
  emit({ phase: "error", message: "usage: status-page.mjs <url> <expected device rows>" });
  process.exit(2);
}

let chromium;
try {
  ({ chromium } = require("playwright-core"));
} catch (e) {
  process.stderr.write(
    "MISSING playwright-core: install it with `npm install --prefix tests/.work/node playwright-core@1.64.1` " +
      `(tests/run does), or put it on NODE_PATH (${e.message})\n`,
  );
  process.exit(3);
}
if (!existsSync(CHROMIUM)) {
  process.stderr.write(`MISSING ${CHROMIUM}: install it with \`apt-get install chromium\` (tests/run does)\n`);
  process.exit(3);
}

const origin = new URL(url).origin;
const userDataDir = mkdtempSync(path.join(tmpdir(), "wardgate-chromium-"));
let context;
const consoleErrors = [];
const pageErrors = [];
const foreignRequests = [];
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith("data:") && new URL(u).origin !== origin) foreignRequests.push(u);
  });

  await page.goto(url, { waitUntil: "load", timeout: STEP_TIMEOUT_MS });
  await page.waitForFunction(
    (n) => document.querySelectorAll("#devices tbody tr").length === n,
    expectedRows,
    { timeout: STEP_TIMEOUT_MS },
  );
  const devices = await page.$$eval("#devices tbody tr", (rows) =>
    rows.map((r) => ({
      id: r.cells[0].textContent,
      kind: r.cells[1].textContent,
      state: r.cells[3].textContent,
      stateClass: r.cells[3].className,
    })),
  );
  const spoolFirst = await page.textContent("#spool-records");
  await page.waitForFunction(
    (first) => {
      const now = document.getElementById("spool-records").textContent;
      return now !== first && now !== "–";
    },
    spoolFirst,
    { timeout: STEP_TIMEOUT_MS },
  );
  const spoolLater = await page.textContent("#spool-records");
  emit({
    phase: "live",
    devices,
    spoolFirst,
    spoolLater,
    conn: await page.textContent("#conn"),
    connClass: await page.getAttribute("#conn", "class"),
    uplink: await page.textContent("#uplink-state"),
    patches: await page.textContent("#patches"),
    urlAfterLoad: page.url(),
    tokenInSessionStorage: await page.evaluate(() => sessionStorage.getItem("wardgate.status.token") !== null),
    tokenFormHidden: await page.$eval("#token-form", (f) => f.hidden),
  });

  // The driving test stops the server now; the page must say so instead of showing
  // the last figures as current.
  await page.waitForFunction(() => document.getElementById("conn").className === "stale", null, {
    timeout: STEP_TIMEOUT_MS,
  });
  emit({
    phase: "done",
    staleConn: await page.textContent("#conn"),
    dataClass: await page.getAttribute("#data", "class"),
    spoolShown: await page.textContent("#spool-records"),
    consoleErrors,
    pageErrors,
    foreignRequests,
  });
} catch (e) {
  emit({ phase: "error", message: String(e && e.stack ? e.stack : e), consoleErrors, pageErrors, foreignRequests });
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
