// Loads the collector's fleet page in Debian's headless Chromium (driven
// by playwright-core), checks what it shows against the values the Rust
// test read from the JSON API, and saves screenshots at desktop and phone
// widths.
//
//   node fleet_page.mjs <page url> <expected.json> <screenshot dir> [token]
//
// With a token, the collector's API needs one: the page must ask for it
// (refusing a wrong one with the collector's error), then show the fleet.
//
// Run by tests/tests/fleet_page.rs; exits non-zero naming the first check
// that failed.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, expectedPath, outDir, token] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(expectedPath, "utf8"));
mkdirSync(outDir, { recursive: true });

let checks = 0;
function check(ok, what) {
  if (!ok) throw new Error(`fleet page: ${what}`);
  checks++;
}
function near(a, b) {
  return Math.abs(Number(a) - Number(b)) <= 1e-9 * Math.max(1, Math.abs(Number(b)));
}

const profile = mkdtempSync(join(tmpdir(), "ferry-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1280, height: 900 },
});
try {
  const page = context.pages()[0] || (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  if (token) {
    // No data without a token: the prompt, and nothing else.
    await page.waitForSelector("#login:not([hidden])", { timeout: 20000 });
    check(await page.locator("main").isHidden(), "the fleet is hidden until a token is given");
    await page.fill("#token", "ferry_" + "0".repeat(64));
    await page.click("#login button[type=submit]");
    await page.waitForFunction(
      () => document.getElementById("login-error").textContent.includes("not valid"),
      null,
      { timeout: 20000 },
    );
    const refused = await page.locator("#login-error").innerText();
    check(refused === "the token is not valid: unknown or revoked", `a wrong token is refused: ${refused}`);
    await page.fill("#token", token);
    await page.click("#login button[type=submit]");
  }
  await page.waitForSelector('body[data-loaded="1"]', { timeout: 20000 });
  if (token) {
    check(await page.locator("#login").isHidden(), "the prompt is gone once the token works");
    const stored = await page.evaluate(() => localStorage.getItem("ferry.token"));
    check(stored === token, "the token is kept in the browser's local storage");
  }

  // Agents: one row each, with the state, remote address and readings.
  for (const a of expected.agents) {
    const row = page.locator(`#agents tr[data-agent="${a.id}"]`);
    check((await row.count()) === 1, `agent ${a.id} has one row`);
    check((await row.locator("td.state").innerText()).trim() === a.state, `agent ${a.id} state ${a.state}`);
    check((await row.locator("td.remote").innerText()).trim() === a.remote, `agent ${a.id} remote ${a.remote}`);
    const readings = (await row.locator("td.readings").innerText()).trim();
    check(readings === Number(a.readings).toLocaleString("en-US"), `agent ${a.id} readings ${a.readings}, page says ${readings}`);
    check((await row.locator("td.last-seen time").count()) === 1, `agent ${a.id} last seen`);
    const backlog = (await row.locator("td.backlog").innerText()).trim();
    const wantBacklog = a.backlog_readings == null ? "—" : Number(a.backlog_readings).toLocaleString("en-US");
    check(backlog === wantBacklog, `agent ${a.id} backlog ${wantBacklog}, page says ${backlog}`);
  }

  // Devices: the board, with its series count.
  for (const d of expected.devices) {
    const row = page.locator(`#devices tr[data-device="${d.device}"][data-agent="${d.agent}"]`);
    check((await row.count()) === 1, `device ${d.device} of ${d.agent} has one row`);
    const n = (await row.locator("td.series-count").innerText()).trim();
    check(n === String(d.series.length), `device ${d.device}: ${d.series.length} series, page says ${n}`);
    check((await row.locator("td.last-seen time").count()) === 1, `device ${d.device} last seen`);
    const firmware = (await row.locator("td.firmware").innerText()).trim();
    const wantFirmware = d.firmware == null ? "—" : d.firmware;
    check(firmware === wantFirmware, `device ${d.device} firmware ${wantFirmware}, page says ${firmware}`);
  }

  // Alerts: the firing one, with its rule, subject and value.
  const alert = expected.alert;
  const firing = page.locator(`#firing tr[data-alert="${alert.id}"]`);
  check((await firing.count()) === 1, `alert ${alert.id} is listed as firing`);
  check((await firing.locator("td.rule").innerText()).trim() === alert.rule, `alert rule ${alert.rule}`);
  check((await firing.locator("td.subject").innerText()).trim() === alert.subject, `alert subject ${alert.subject}`);
  check(near((await firing.locator("td.value").innerText()).trim(), alert.value), `alert value ${alert.value}`);

  // The chart of the board's series: its windows and the newest one's values.
  await page.selectOption("#series-select", expected.series);
  await page.waitForFunction(
    (name) => document.querySelector("#chart-svg")?.dataset.series === name,
    expected.series,
    { timeout: 20000 },
  );
  const data = await page.locator("#chart-svg").evaluate((e) => ({ ...e.dataset }));
  check(Number(data.windows) === expected.windows.length, `chart: ${expected.windows.length} windows, page has ${data.windows}`);
  const last = expected.windows[expected.windows.length - 1];
  check(Number(data.lastWindowStartNs) === Number(last.start_ns) || near(data.lastWindowStartNs, last.start_ns), "chart: newest window start");
  check(near(data.lastWindowMax, last.max), `chart: newest window max ${last.max}, page ${data.lastWindowMax}`);
  check(near(data.lastWindowMin, last.min), `chart: newest window min ${last.min}, page ${data.lastWindowMin}`);
  check(Number(data.lastWindowCount) === last.count, `chart: newest window count ${last.count}`);
  check((await page.locator("#chart-svg .band-minmax").count()) === 1, "chart: a min–max band");
  check((await page.locator("#chart-svg .line-windows").count()) === 1, "chart: the windows' line");

  await page.screenshot({ path: join(outDir, "fleet-desktop.png"), fullPage: true });

  // A phone: nothing wider than the screen, then a screenshot.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  check(overflow <= 390, `phone width: the page is ${overflow} px wide at 390`);
  await page.screenshot({ path: join(outDir, "fleet-phone.png"), fullPage: true });

  check(errors.length === 0, `no script errors (${errors.join("; ")})`);
  console.log(`fleet page: ${checks} checks passed; screenshots in ${outDir}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
