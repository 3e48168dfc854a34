// The dashboard in a real browser: Debian's chromium driven by playwright-core against a running
// gateway. Run by the e2e case `cases::browser` (which starts the gateway and a mock upstream);
// it can also be run by hand:
//
//   TOLLGATE_URL=http://127.0.0.1:8080 TOLLGATE_ADMIN_TOKEN=... TOLLGATE_MODEL=demo-chat \
//   TOLLGATE_ARTIFACTS=/tmp/shots node tests/browser/dashboard.cjs
//
// Steps: sign in, create a key (reading the revealed secret from the page), send a chat request
// with it over HTTP, find it in the usage explorer with its cost, open its decision trail,
// revoke the key in the UI, and see the next request refused with 401 api_key_revoked; manage a
// team, a user and a team budget (create, edit, delete) in the UI. Every
// step leaves a screenshot in TOLLGATE_ARTIFACTS. Any failed expectation, page error or CSP
// violation exits non-zero.

"use strict";

const fs = require("node:fs");
const path = require("node:path");

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return value;
};

const BASE = env("TOLLGATE_URL");
const ADMIN_TOKEN = env("TOLLGATE_ADMIN_TOKEN");
const MODEL = env("TOLLGATE_MODEL", "chat");
const ARTIFACTS = env("TOLLGATE_ARTIFACTS");
const CHROMIUM = env("TOLLGATE_CHROMIUM", "/usr/bin/chromium");
// Optional: a CEL rule the trail must name, and the gateway's policy directory (the test breaks a
// file there and checks the policy page shows the reload error with its file and line).
const EXPECT_RULE = process.env.TOLLGATE_EXPECT_RULE;
const POLICY_DIR = process.env.TOLLGATE_POLICY_DIR;
const MODULES = env("TOLLGATE_BROWSER_NODE_MODULES", path.join(process.env.HOME || "/root", ".cache/tollgate-browser/node/node_modules"));

const { chromium } = require(path.join(MODULES, "playwright-core"));

// Generous bounds: they only stop a broken run from hanging, they are not performance checks.
const STEP_TIMEOUT = 20000;

function check(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

let shot = 0;
async function screenshot(page, name) {
  shot += 1;
  const file = path.join(ARTIFACTS, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
}

async function chat(secret) {
  const response = await fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hello from the browser test" }] }),
  });
  return { status: response.status, requestId: response.headers.get("x-request-id"), body: await response.json() };
}

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Containers run as root without user namespaces: chromium's sandbox cannot start there.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
  });
  const problems = [];
  // Set while a step sends a bad form on purpose: its 400 is not a problem.
  let expect400 = false;
  try {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_TIMEOUT);
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    page.on("console", (m) => {
      // A 401 on purpose shows as a failed resource load; anything else is a problem,
      // CSP violations above all.
      if (m.type() === "error" && !/status of 401/.test(m.text()) && !(expect400 && /status of 400/.test(m.text()))) {
        problems.push(`console error: ${m.text()}`);
      }
    });

    // 1. Sign in.
    await page.goto(`${BASE}/ui/`);
    await page.waitForSelector("#admin-token");
    await screenshot(page, "sign-in");
    await page.fill("#admin-token", "not-the-admin-token-000000000");
    await page.click("form.signin button[type=submit]");
    await page.waitForSelector(".signin-error .error-box");
    check((await page.textContent(".signin-error")).includes("not accepted"), "a wrong token is refused with a message");
    await page.fill("#admin-token", ADMIN_TOKEN);
    await page.click("form.signin button[type=submit]");
    await page.waitForSelector("nav .who");
    await page.waitForSelector(".page-overview .stats");
    await screenshot(page, "overview-empty");

    // 2. Create a key; read the secret the page reveals once.
    await page.click("nav a[data-page=keys]");
    await page.waitForSelector("#create-key");
    await page.click("#create-key");
    await page.fill("#create-key-form input[name=name]", "browser-test");
    await page.fill("#create-key-form input[name=models]", MODEL);
    await page.click("#create-key-form button[type=submit]");
    await page.waitForSelector("#revealed-secret");
    const secret = (await page.textContent("#revealed-secret")).trim();
    const keyId = (await page.textContent("#revealed-key-id")).trim();
    check(/^tg_/.test(secret), `the revealed secret looks like a virtual key (${secret.slice(0, 3)}…)`);
    await screenshot(page, "key-created");
    await page.click("#secret-done");
    await page.waitForSelector(`tr.key-${keyId}`);
    check((await page.textContent(`tr.key-${keyId}`)).includes("active"), "the new key is listed as active");
    check(!(await page.content()).includes(secret), "the secret is gone from the page once the dialog closes");

    // 3. A request through the gateway with that key, over HTTP from the test.
    const first = await chat(secret);
    check(first.status === 200, `the chat request with the new key succeeds (got ${first.status}: ${JSON.stringify(first.body)})`);
    const requestId = first.requestId;
    console.log(`request ${requestId} sent with key ${keyId}`);

    // 4. The usage explorer shows it with its cost (the writer is asynchronous: re-query, bounded).
    const row = `tr.req-${requestId}`;
    let found = false;
    for (let attempt = 0; attempt < 40 && !found; attempt++) {
      await page.goto(`${BASE}/ui/#/usage?key=${encodeURIComponent(keyId)}&n=${attempt}`);
      await page.waitForSelector(".page-usage table, .page-usage .empty, .page-usage .error-box");
      found = (await page.$(row)) !== null;
      if (!found) await page.waitForTimeout(250);
    }
    check(found, `request ${requestId} appears in the usage explorer`);
    const apiRows = await (await fetch(`${BASE}/admin/v1/usage/${requestId}`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } })).json();
    const costNanos = Number(apiRows.data[0].cost_nanos);
    check(costNanos > 0, `the request was priced (cost_nanos ${costNanos})`);
    const costText = (await page.textContent(`${row} td.cost`)).trim();
    check(costText === `$${(costNanos / 1e9).toFixed(6)}` || costText === `$${(costNanos / 1e9).toFixed(4)}` || costText === `$${(costNanos / 1e9).toFixed(2)}`, `the row shows the request's cost (${costText} for ${costNanos} nano-USD)`);
    await screenshot(page, "usage-explorer");

    // 5. Its decision trail.
    await page.click(row);
    await page.waitForSelector("#decision-trail");
    const trail = await page.textContent("#decision-trail");
    check(/authenticate/.test(trail) && /authorize/.test(trail) && /model_access/.test(trail), `the decision trail names the stages and checks (${trail.slice(0, 200)})`);
    if (EXPECT_RULE) check(trail.includes(EXPECT_RULE), `the decision trail names the access rule ${EXPECT_RULE}`);
    check((await page.textContent(".request-detail")).includes(costText), "the detail shows the cost");
    await screenshot(page, "decision-trail");

    // 6. Revoke the key in the UI.
    await page.click("nav a[data-page=keys]");
    await page.waitForSelector(`tr.key-${keyId}`);
    await page.click(`tr.key-${keyId} button.danger`);
    await page.waitForSelector("dialog .confirm");
    await screenshot(page, "revoke-confirm");
    await page.click("dialog .confirm button.danger");
    await page.waitForSelector(`tr.key-${keyId} .badge.bad`);
    check((await page.textContent(`tr.key-${keyId}`)).includes("revoked"), "the key is listed as revoked");
    await screenshot(page, "key-revoked");

    // 7. The next request with it is refused (revocation reaches the key cache: poll, bounded).
    let refused = null;
    for (let attempt = 0; attempt < 40; attempt++) {
      refused = await chat(secret);
      if (refused.status !== 200) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    check(refused.status === 401, `the request after revocation is refused with 401 (got ${refused.status})`);
    check(refused.body.error && refused.body.error.code === "api_key_revoked", `the error code is api_key_revoked (got ${JSON.stringify(refused.body)})`);
    console.log(`request with the revoked key refused: 401 ${refused.body.error.code}`);

    // 8. The refusal is in the usage explorer too, denied at authenticate.
    found = false;
    for (let attempt = 0; attempt < 40 && !found; attempt++) {
      await page.goto(`${BASE}/ui/#/usage?status=401&n=${attempt}`);
      await page.waitForSelector(".page-usage table, .page-usage .empty, .page-usage .error-box");
      found = (await page.$(`tr.req-${refused.requestId}`)) !== null;
      if (!found) await page.waitForTimeout(250);
    }
    check(found, "the refused request appears in the usage explorer");
    await screenshot(page, "usage-refused");

    // 9. The other pages render without errors.
    for (const [name, ready] of [
      ["overview", ".page-overview .charts"],
      ["budgets", ".page-budgets .budget-grid, .page-budgets .empty"],
      ["people", ".page-people table, .page-people .empty"],
      ["policy", ".page-policy .stats"],
      ["mcp", ".page-mcp table, .page-mcp .empty"],
      ["providers", ".page-providers table"],
      ["audit", ".page-audit table, .page-audit .empty"],
    ]) {
      await page.click(`nav a[data-page=${name}]`);
      await page.waitForSelector(ready);
      check((await page.$(`.page-${name} .error-box`)) === null, `the ${name} page shows no error (${await page.textContent(`.page-${name}`)})`.slice(0, 400));
      await screenshot(page, name);
    }
    check((await page.textContent(".page-audit")).includes("key.revoke"), "the audit log lists the revocation");

    // 9b. Teams, users and budgets are managed in the UI too: create a team and a user in it,
    // give the team a budget, change its limit, delete it; the admin API sees each change.
    const api = async (p) => (await fetch(`${BASE}/admin/v1${p}`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } })).json();
    await page.click("nav a[data-page=people]");
    await page.waitForSelector("#create-team");
    await page.click("#create-team");
    await page.fill("#team-form input[name=id]", "browser-team");
    await page.fill("#team-form input[name=name]", "Browser team");
    await page.click("#team-form button[type=submit]");
    await page.waitForSelector("tr.team-browser-team");
    await page.click("#create-user");
    await page.fill("#user-form input[name=id]", "browser-user");
    await page.fill("#user-form input[name=name]", "Browser user");
    await page.fill("#user-form input[name=team]", "no-such-team");
    expect400 = true;
    await page.click("#user-form button[type=submit]");
    await page.waitForSelector("#user-form .error-box");
    expect400 = false;
    check((await page.textContent("#user-form .error-box")).includes("does not exist"), "a user in a missing team is refused in the form");
    await page.fill("#user-form input[name=team]", "browser-team");
    await page.click("#user-form button[type=submit]");
    await page.waitForSelector("tr.user-browser-user");
    check((await page.textContent("tr.user-browser-user")).includes("browser-team"), "the user is listed in its team");
    await screenshot(page, "teams-and-users");
    const user = await api("/users/browser-user");
    check(user.team === "browser-team" && user.name === "Browser user", `the API has the user (${JSON.stringify(user)})`);

    await page.click("nav a[data-page=budgets]");
    await page.waitForSelector("#create-budget");
    await page.click("#create-budget");
    await page.selectOption("#budget-form select[name=scope]", "team");
    await page.fill("#budget-form input[name=subject]", "browser-team");
    await page.selectOption("#budget-form select[name=window]", "monthly");
    await page.fill("#budget-form input[name=limit_usd]", "12.5");
    await page.click("#budget-form button[type=submit]");
    let budget = null;
    for (let attempt = 0; attempt < 40 && !budget; attempt++) {
      budget = ((await api("/budgets?limit=500")).data || []).find((b) => b.scope === "team" && b.subject === "browser-team");
      if (!budget) await page.waitForTimeout(250);
    }
    check(budget && Number(budget.limit_nanos) === 12500000000, `the team budget was created with its limit (${JSON.stringify(budget)})`);
    await page.waitForSelector(`.budget-${budget.id} button.edit`);
    await screenshot(page, "budget-created");
    await page.click(`.budget-${budget.id} button.edit`);
    await page.fill("#budget-form input[name=limit_usd]", "20");
    await page.click("#budget-form button[type=submit]");
    let changed = false;
    for (let attempt = 0; attempt < 40 && !changed; attempt++) {
      changed = Number((await api(`/budgets/${budget.id}`)).limit_nanos) === 20000000000;
      if (!changed) await page.waitForTimeout(250);
    }
    check(changed, "the budget's new limit reached the API");
    await page.waitForSelector(`.budget-${budget.id} button.danger`);
    await page.click(`.budget-${budget.id} button.danger`);
    await page.waitForSelector("dialog .confirm");
    await page.click("dialog .confirm button.danger");
    let gone = false;
    for (let attempt = 0; attempt < 40 && !gone; attempt++) {
      gone = !((await api("/budgets?limit=500")).data || []).some((b) => b.id === budget.id);
      if (!gone) await page.waitForTimeout(250);
    }
    check(gone, "the budget was deleted");
    await page.click("nav a[data-page=people]");
    await page.waitForSelector("tr.user-browser-user");
    await page.click("tr.user-browser-user button.danger");
    await page.waitForSelector("dialog .confirm");
    await page.click("dialog .confirm button.danger");
    await page.waitForSelector("tr.team-browser-team");
    let userGone = false;
    for (let attempt = 0; attempt < 40 && !userGone; attempt++) {
      userGone = !((await api("/users?limit=500")).data || []).some((u) => u.id === "browser-user");
      if (!userGone) await page.waitForTimeout(250);
    }
    check(userGone, "the user was deleted");
    await screenshot(page, "people-after-delete");

    // 11. A broken policy file: the policy page shows the reload error with file and line.
    if (POLICY_DIR) {
      fs.writeFileSync(path.join(POLICY_DIR, "access", "zz-broken.cel"), "// a syntax error on line 2\nrequest.model ==\n");
      await page.click("nav a[data-page=policy]");
      await page.waitForSelector("#reload-policy");
      await page.click("#reload-policy");
      await page.waitForSelector(".policy-error");
      const where = await page.textContent(".policy-error .where");
      check(/zz-broken\.cel:\d+/.test(where), `the reload error names the file and line (${where})`);
      await screenshot(page, "policy-reload-error");
      fs.unlinkSync(path.join(POLICY_DIR, "access", "zz-broken.cel"));
    }

    // 10. Signing out forgets the token.
    await page.click("nav .who button");
    await page.waitForSelector("#admin-token");
    check((await page.evaluate(() => sessionStorage.length)) === 0, "signing out clears sessionStorage");

    // 12. A read-only admin token sees the keys but no button that changes them.
    const created = await fetch(`${BASE}/admin/v1/admin-tokens`, {
      method: "POST",
      headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, "Content-Type": "application/json" },
      body: JSON.stringify({ name: "browser-read", role: "read" }),
    });
    check(created.status === 201, `a read token is created (got ${created.status})`);
    const readSecret = (await created.json()).secret;
    await page.fill("#admin-token", readSecret);
    await page.click("form.signin button[type=submit]");
    await page.waitForSelector("nav .who");
    check((await page.textContent("nav .who")).includes("read"), "the read role is shown");
    await page.click("nav a[data-page=keys]");
    await page.waitForSelector(`tr.key-${keyId}`);
    check((await page.$("#create-key")) === null, "no Create key button for a read token");
    check((await page.$(`tr.key-${keyId} button.danger`)) === null && (await page.$(`tr.key-${keyId} button`)) !== null, "only Details on a key row for a read token");
    await screenshot(page, "keys-read-only");
  } finally {
    await browser.close();
  }
  if (problems.length) throw new Error(`the page reported problems:\n${problems.join("\n")}`);
  console.log(`browser test passed; screenshots in ${ARTIFACTS}`);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
