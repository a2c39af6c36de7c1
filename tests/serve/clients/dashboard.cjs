// Drives the sidecar's dashboard in a real browser (Debian's headless Chromium through
// playwright-core) and prints what the page showed, as JSON, for the Rust test to judge.
// Usage: node dashboard.cjs ADMIN_URL TOKEN MODULE_FILE SCREENSHOT_DIR
"use strict";
const { chromium } = require("playwright-core");

async function main() {
  const [admin, token, moduleFile, shots] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // The browser logs the refused change below as a failed load: that one is expected.
    if (m.type() === "error" && !m.text().includes("401 (Unauthorized)")) {
      problems.push(`console: ${m.text()}`);
    }
  });
  await page.goto(`${admin}/`);
  await page.waitForSelector("body[data-ready=true]", { timeout: 10000 });
  // Let the spike show: a model that has answered, and a throttle counted.
  await page.waitForFunction(
    () => [...document.querySelectorAll("#chains tr[data-model]")].some(
      (row) => Number(row.children[3].textContent) > 0,
    ),
    null,
    { timeout: 15000 },
  );
  const table = () =>
    page.$$eval("#chains tr[data-model]", (rows) =>
      rows.map((row) => ({
        model: row.dataset.model,
        breaker: row.children[1].textContent,
        requests: Number(row.children[2].textContent),
        throttles: Number(row.children[3].textContent),
      })),
    );
  const during = {
    live: await page.textContent("#live-policy"),
    models: await table(),
    requests_series: await page.textContent("#series-requests .label"),
    fallbacks_series: await page.textContent("#series-fallback_invocations .label"),
    in_flight: await page.textContent("#in-flight"),
  };
  await page.screenshot({ path: `${shots}/dashboard-spike.png`, fullPage: true });

  // Without the token a change is refused, and the page says so.
  await page.click("#rollback");
  await page.waitForFunction(() => document.querySelector("#answer").textContent.includes("POST"));
  const refused = await page.textContent("#answer");

  // With it, a module uploaded from the page goes live.
  await page.fill("#token", token);
  await page.setInputFiles("#module", moduleFile);
  await page.click("#swap");
  await page.waitForFunction(
    (before) => document.querySelector("#live-policy").textContent !== before,
    during.live,
    { timeout: 20000 },
  );
  const after = {
    live: await page.textContent("#live-policy"),
    answer: await page.textContent("#answer"),
    events: await page.$$eval("#events li", (items) => items.map((i) => i.textContent)),
  };
  await page.screenshot({ path: `${shots}/dashboard-swapped.png`, fullPage: true });
  await browser.close();
  console.log(JSON.stringify({ during, refused, after, problems }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
