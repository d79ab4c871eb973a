// Drives the real ComfyUI front end in headless Debian chromium for tests/test_browser.py.
// Usage: node drive.mjs CONFIG.json  (config: see test_browser.py); writes its findings as JSON to config.result.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = { extensions: [], templates: {}, run: null, page_errors: [], console_errors: [] };
const shot = (name) => path.join(cfg.artifacts, name);

async function settle(page, ms = 600) {
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  await page.waitForTimeout(ms);
}

/** What the UI shows right now: open dialogs, toasts, and graph nodes whose type is not registered. */
async function uiState(page) {
  return page.evaluate(() => ({
    dialogs: [...document.querySelectorAll("[role=dialog]")].filter((d) => d.offsetParent !== null)
      .map((d) => d.innerText.slice(0, 600)),
    toasts: [...document.querySelectorAll(".p-toast-message")].map((t) => ({
      severity: [...t.classList].find((c) => /p-toast-message-(error|warn|info|success)/.test(c)) ?? "",
      text: t.innerText.slice(0, 600) })),
    missing: app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type] || n.has_errors).map((n) => n.type),
  }));
}

async function clearToasts(page) {
  await page.evaluate(() => document.querySelectorAll(".p-toast-message .p-toast-close-button").forEach((b) => b.click()));
}

async function closeDialogs(page) {
  for (let k = 0; k < 5 && (await page.locator(".p-dialog-mask").count()); k++) {
    await page.keyboard.press("Escape");
    await page.waitForTimeout(300);
  }
}

/** Open the templates dialog, pick this pack's category, click the template's card; wait for its nodes. */
async function loadTemplate(page, module, name) {
  const wf = await page.evaluate(async ([m, n]) => (await fetch(`/api/workflow_templates/${m}/${n}.json`)).json(), [module, name]);
  await closeDialogs(page);
  await page.evaluate(() => app.extensionManager.command.execute("Comfy.BrowseTemplates"));
  const dialog = page.getByRole("dialog").filter({ hasText: "Custom Nodes" });
  await dialog.getByText(module, { exact: true }).click();
  await dialog.getByTestId(`template-workflow-${name}`).click();
  const ids = (wf.nodes ?? []).map((n) => String(n.id)).sort();
  await page.waitForFunction((want) => JSON.stringify(app.graph.nodes.map((n) => String(n.id)).sort()) === want,
    JSON.stringify(ids), { timeout: 30000 });
  await settle(page);
  return wf;
}

/** The guided MemSafe nodes: mode, which widgets show, what serialises, and the live widget's state. */
async function guidedNodes(page) {
  return page.evaluate(() => app.graph.nodes.filter((n) => ["MemSafeCFGGuider", "MemSafeKSampler", "MemSafeCFGPatch"].includes(n.type))
    .map((n) => {
      const live = n.widgets.find((w) => w.name === "memsafe_live");
      return { id: String(n.id), type: n.type, transition: n.widgets.find((w) => w.name === "transition")?.value,
        shown: n.widgets.filter((w) => !w.hidden && w.name !== "memsafe_live").map((w) => w.name),
        widgets_values: n.serialize().widgets_values, live: live ? JSON.parse(JSON.stringify(live.state)) : null,
        images: (n.imgs ?? []).length, outputs: app.nodeOutputs?.[String(n.id)]?.images?.length ?? 0, pos: [...n.pos], size: [...n.size] };
    }));
}

/** Flip each guided node through every transition and back; report what shows and what serialises. */
async function modeCycle(page) {
  return page.evaluate(() => app.graph.nodes.filter((n) => n.widgets?.some((w) => w.name === "memsafe_live")).map((n) => {
    const t = n.widgets.find((w) => w.name === "transition");
    const original = t.value, before = n.serialize().widgets_values, seen = {};
    for (const mode of ["static", "dynamic", "off", original]) {
      t.value = mode;
      t.callback?.(mode, app.canvas, n);
      seen[mode] = { shown: n.widgets.filter((w) => !w.hidden).map((w) => w.name), values: n.serialize().widgets_values };
    }
    const reloaded = LiteGraph.createNode(n.type);
    reloaded.configure(JSON.parse(JSON.stringify(n.serialize())));
    return { id: String(n.id), original, before, seen, after: n.serialize().widgets_values, reloaded: reloaded.serialize().widgets_values };
  }));
}

/** Server-side validation of the UI's prompt; a prompt that validates is queued, so wait for it and free the cache. */
async function validate(page) {
  return page.evaluate(async () => {
    const { output } = await app.graphToPrompt();
    const r = await fetch("/prompt", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: output, client_id: "memsafe-validate" }) });
    const body = await r.json();
    if (r.status === 200) {
      for (let k = 0; k < 600; k++) {
        const h = await (await fetch(`/history/${body.prompt_id}`)).json();
        if (h[body.prompt_id]?.status?.completed !== undefined) break;
        await new Promise((res) => setTimeout(res, 200));
      }
      await fetch("/free", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ free_memory: true }) });
    }
    return { status: r.status, body };
  });
}

/** Build a graph in the UI from {id, type, widgets: {name: value}, inputs: {name: [src, slot]}}. */
async function buildGraph(page, spec) {
  await page.evaluate((nodes) => {
    app.graph.clear();
    const made = {};
    nodes.forEach((s, k) => {
      const n = LiteGraph.createNode(s.type);
      n.pos = s.pos ?? [40 + 330 * (k % 4), 60 + 320 * Math.floor(k / 4)];
      app.graph.add(n);
      for (const [name, v] of Object.entries(s.widgets ?? {})) {
        const w = n.widgets.find((x) => x.name === name);
        w.value = v;
        w.callback?.(v, app.canvas, n);
      }
      made[s.id] = n;
    });
    for (const s of nodes) for (const [name, [src, slot]] of Object.entries(s.inputs ?? {})) {
      const target = made[s.id], idx = target.inputs.findIndex((i) => i.name === name);
      made[src].connect(slot, target, idx);
    }
  }, spec);
  await settle(page);
}

/** Queue from the Run button; record the live messages and execution events as they arrive. */
async function runFromUI(page, run) {
  await page.evaluate((r) => {
    const first = !window.__memsafe;
    window.__memsafe = { events: [], t0: performance.now() };
    const log = (type) => (e) => window.__memsafe.events.push({ type, t: performance.now() - window.__memsafe.t0, detail: e.detail });
    if (first) for (const type of ["memsafe_cfg.step", "memsafe_cfg.done", "executed", "execution_error", "execution_success",
      "execution_interrupted"]) window.comfyAPI.api.api.addEventListener(type, log(type));
    for (const n of app.graph.nodes) {
      const set = { ...(r.set?.[n.type] ?? {}) };
      if (n.type === "MemSafeGuidanceCurve" && r.trace_prefix) Object.assign(set, { save_trace: true, filename_prefix: `${r.trace_prefix}/curve_${n.id}` });
      for (const [name, v] of Object.entries(set)) {
        const w = n.widgets?.find((x) => x.name === name);
        if (w) w.value = v;
      }
    }
  }, run);
  await clearToasts(page);
  await closeDialogs(page);
  await page.getByRole("button", { name: "Run", exact: true }).first().click();
  await page.waitForFunction(() => window.__memsafe.events.some((e) => /execution_(success|error|interrupted)/.test(e.type)),
    null, { timeout: cfg.timeout_ms ?? 240000 });
  await page.waitForFunction(() => app.graph.nodes.every((n) => !app.nodeOutputs?.[String(n.id)]?.images?.length
    || (n.imgs ?? []).length === app.nodeOutputs[String(n.id)].images.length), null, { timeout: 20000 }).catch(() => {});
  await settle(page, 500);
  return page.evaluate(() => window.__memsafe.events);
}

/** Screenshot one node (and a margin) at a readable zoom. */
async function nodeShot(page, id, file) {
  const box = await page.evaluate((nid) => {
    const n = app.graph.getNodeById(nid), c = app.canvas;
    c.ds.scale = 1.25;
    c.ds.offset = [-n.pos[0] + 40, -n.pos[1] + 60];
    c.setDirty(true, true);
    c.draw(true, true);
    const r = c.canvas.getBoundingClientRect();
    return { x: r.left + 10, y: r.top + 10, width: Math.min((n.size[0] + 60) * 1.25, r.width - 20),
      height: Math.min((n.size[1] + 80) * 1.25, r.height - 20) };
  }, Number(id));
  await settle(page, 300);
  await page.screenshot({ path: file, clip: box });
}

/** Screenshot a node with its direct neighbours, fitted to the viewport (the README picture). */
async function neighbourhoodShot(page, id, file) {
  const box = await page.evaluate((nid) => {
    const g = app.graph, n = g.getNodeById(nid), c = app.canvas;
    const near = new Set([n]);
    for (const i of n.inputs ?? []) if (i.link != null) near.add(g.getNodeById(g.links.get(i.link).origin_id));
    for (const o of n.outputs ?? []) for (const l of o.links ?? []) near.add(g.getNodeById(g.links.get(l).target_id));
    const x0 = Math.min(...[...near].map((m) => m.pos[0])) - 20, y0 = Math.min(...[...near].map((m) => m.pos[1])) - 50;
    const x1 = Math.max(...[...near].map((m) => m.pos[0] + m.size[0])) + 20, y1 = Math.max(...[...near].map((m) => m.pos[1] + m.size[1])) + 20;
    const r = c.canvas.getBoundingClientRect(), scale = Math.min(1.5, (r.width - 20) / (x1 - x0), (r.height - 20) / (y1 - y0));
    c.ds.scale = scale;
    c.ds.offset = [-x0 + 10 / scale, -y0 + 10 / scale];
    c.setDirty(true, true);
    c.draw(true, true);
    return { x: r.left, y: r.top, width: Math.min(r.width, (x1 - x0) * scale + 20), height: Math.min(r.height, (y1 - y0) * scale + 20) };
  }, Number(id));
  await settle(page, 300);
  await page.screenshot({ path: file, clip: box });
}

const userData = fs.mkdtempSync(path.join(os.tmpdir(), "memsafe-chromium-"));
const context = await chromium.launchPersistentContext(userData, { executablePath: cfg.chromium ?? "/usr/bin/chromium",
  headless: true, args: FLAGS, viewport: { width: 1600, height: 1000 } });
// Settings and user files stay in the browser (a fresh user each run): nothing is read from or written to the
// server's user directory, which ComfyUI keeps inside its own checkout unless started with --user-directory.
await context.route((url) => url.hostname !== new URL(cfg.url).hostname, (route) => route.abort());  // loopback only
await context.route(/\/api\/(settings|userdata)(\/|\?|$)/, (route) => {
  const { pathname, search } = new URL(route.request().url());
  if (route.request().method() !== "GET") return route.fulfill({ status: 200, contentType: "application/json", body: "{}" });
  if (pathname.endsWith("/settings")) return route.fulfill({ status: 200, contentType: "application/json", body: "{}" });
  if (search.includes("dir=")) return route.fulfill({ status: 200, contentType: "application/json", body: "[]" });
  return route.fulfill({ status: 404, body: "" });
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => out.page_errors.push(String(e.stack ?? e).slice(0, 800)));
  page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text().slice(0, 300)); });
  await page.goto(cfg.url);
  await page.waitForFunction(() => window.app?.graph && window.app.extensions?.length > 0, null, { timeout: 90000 });
  await settle(page, 1500);
  out.extensions = await page.evaluate(() => app.extensions.map((e) => e.name));
  out.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);

  for (const name of cfg.templates) {
    const errorsBefore = out.page_errors.length;
    await clearToasts(page);
    const wf = await loadTemplate(page, cfg.module, name);
    await settle(page, 800);
    const entry = { ...(await uiState(page)), nodes: wf.nodes.length, guided: await guidedNodes(page) };
    entry.modes = await modeCycle(page);
    entry.page_errors = out.page_errors.slice(errorsBefore);
    await page.screenshot({ path: shot(`template-${name}.png`) });
    if (!(cfg.runs ?? []).some((r) => r.template === name)) entry.validation = await validate(page);
    out.templates[name] = entry;
  }

  if (cfg.runs?.length) await page.evaluate(async () => {  // a clean picture: no canvas statistics, no minimap
    await app.extensionManager.setting.set("Comfy.Graph.CanvasInfo", false);
    await app.extensionManager.setting.set("Comfy.Minimap.Visible", false);
  });
  out.runs = {};
  for (const run of cfg.runs ?? []) {
    if (run.template) await loadTemplate(page, cfg.module, run.template);
    else await buildGraph(page, run.graph);
    await page.evaluate(() => fetch("/free", { method: "POST", headers: { "Content-Type": "application/json" },  // no cached
      body: JSON.stringify({ free_memory: true }) }));  // results from other tests on this server: everything samples
    await closeDialogs(page);
    await page.evaluate(() => app.extensionManager.command.execute("Comfy.Canvas.FitView"));  // previews load on screen
    await settle(page);
    const events = await runFromUI(page, run);
    const guided = await guidedNodes(page);
    out.runs[run.name] = { events, guided, ui: await uiState(page), curves: await page.evaluate(() => app.graph.nodes
      .filter((n) => n.type === "MemSafeGuidanceCurve").map((n) => {
        const src = (name) => { const i = n.inputs.find((x) => x.name === name); const l = i?.link != null && app.graph.links.get?.(i.link);
          return l ? String(l.origin_id) : null; };
        return { id: String(n.id), source: src("guider") ?? src("model"), images: (n.imgs ?? []).length,
          prefix: n.widgets.find((w) => w.name === "filename_prefix")?.value };
      })) };
    await page.screenshot({ path: shot(`run-${run.name}.png`) });
    for (const g of guided) await nodeShot(page, g.id, shot(`run-${run.name}-node-${g.id}.png`));
    const readme = guided.find((g) => g.live?.summary && g.images) ?? guided.find((g) => g.live?.summary);
    if (run.readme_shot && readme) await neighbourhoodShot(page, readme.id, run.readme_shot);
  }
} catch (e) {
  out.fatal = String(e.stack ?? e).slice(0, 2000);
  try { await context.pages()[0]?.screenshot({ path: shot("fatal.png") }); } catch {}
} finally {
  fs.writeFileSync(cfg.result, JSON.stringify(out, null, 1));
  await context.close();
  fs.rmSync(userData, { recursive: true, force: true });
}
