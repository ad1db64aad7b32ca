// Headless Chromium (Debian's, driven by playwright-core): one tab on each of two nodes; a
// message typed in the first appears in the second. Saves a screenshot of the second tab.
// usage: node browser.js URL_A URL_B SCREENSHOT
const { chromium } = require("playwright-core");
const [urlA, urlB, shot] = process.argv.slice(2);
(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const a = await browser.newPage();
    const b = await browser.newPage({ viewport: { width: 900, height: 500 } });
    await a.goto(urlA);
    await b.goto(urlB);
    await a.fill("#name", "alice");
    await a.click("#login button");
    await b.fill("#name", "bob");
    await b.click("#login button");
    await b.waitForSelector("text=welcome, bob");
    await a.fill("#text", "hello from node A");
    await a.press("#text", "Enter");
    await b.waitForSelector("#log >> text=hello from node A", { timeout: 10000 });
    const who = await b.textContent("#log li:last-child .who");
    if (who !== "alice") throw new Error("expected the message from alice, got " + who);
    await b.waitForFunction(() => document.getElementById("online").textContent === "2", null, { timeout: 10000 });
    await b.screenshot({ path: shot });
    console.log("ok");
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
