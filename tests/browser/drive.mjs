// Drives the real ComfyUI front end in headless Debian chromium for tests/test_browser.py.
// Usage: node drive.mjs CONFIG.json  (config: see test_browser.py); writes its findings as JSON to config.result.
// One run = one front end in one rendering mode: cfg.vue turns on "Nodes 2.0" (setting Comfy.VueNodes.Enabled),
// where nodes are DOM elements and a canvas widget paints into its own <canvas> only when asked (triggerDraw).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = { extensions: [], templates: {}, run: null, page_errors: [], console_errors: [], pack_console: [] };
const PACK_URL = `/extensions/${cfg.module}/`;
const GUIDED_TYPES = ["MemSafeCFGGuider", "MemSafeKSampler", "MemSafeCFGPatch"];
const shot = (name) => path.join(cfg.artifacts, name);
const escapeRe = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

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
    // newer front ends check model files themselves and say so in an overlay
    notices: [...document.querySelectorAll("[data-testid=error-overlay]")].filter((d) => d.offsetParent !== null)
      .map((d) => d.innerText.slice(0, 600)),
    missing: app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type),
    flagged: app.graph.nodes.filter((n) => n.has_errors).map((n) => ({ type: n.type,
      values: (n.widgets ?? []).map((w) => w.value).filter((v) => typeof v === "string") })),
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
  // its heading was "Custom Nodes" (1.27) and is "Extensions" (1.58); the pack's entry is its folder name or, with
  // locales/, its display name
  const dialog = page.getByRole("dialog").filter({ has: page.getByText(/^(custom nodes|extensions)$/i) });
  const label = new RegExp(`^(${escapeRe(module)}|${escapeRe(cfg.category)})$`);
  await dialog.getByText(label).first().click();
  await dialog.getByTestId(`template-workflow-${name}`).click();
  const ids = (wf.nodes ?? []).map((n) => String(n.id)).sort();
  await page.waitForFunction((want) => JSON.stringify(app.graph.nodes.map((n) => String(n.id)).sort()) === want,
    JSON.stringify(ids), { timeout: 30000 });
  await settle(page);
  return wf;
}

/** Page-side helpers, installed once per page load: what a node shows (classic: widget flags; Nodes 2.0: the DOM). */
async function installPageHelpers(page) {
  await page.evaluate((vue) => {
    window.__memsafeHelpers = {
      element: (n) => document.querySelector(`[data-node-id="${n.id}"]`),
      /** Names of the widgets a person sees: Vue nodes render rows labelled with the widget's label or name. */
      shown(n) {
        const el = this.element(n);
        if (!vue) return n.widgets.filter((w) => !w.hidden).map((w) => w.name);
        if (!el) return null;
        const texts = new Set([...el.querySelectorAll("*")].filter((e) => e.children.length === 0 && e.offsetParent !== null)
          .map((e) => e.textContent.trim()));
        return n.widgets.filter((w) => texts.has(w.label ?? w.name)).map((w) => w.name);
      },
    };
  }, !!cfg.vue);
}

/** The guided MemSafe nodes: mode, which widgets show, what serialises, and the live widget's state. */
async function guidedNodes(page) {
  return page.evaluate((types) => app.graph.nodes.filter((n) => types.includes(n.type))
    .map((n) => {
      const live = n.widgets.find((w) => w.name === "memsafe_live");
      const el = window.__memsafeHelpers.element(n);
      return { id: String(n.id), type: n.type, transition: n.widgets.find((w) => w.name === "transition")?.value,
        shown: (window.__memsafeHelpers.shown(n) ?? []).filter((name) => name !== "memsafe_live"),
        widgets_values: n.serialize().widgets_values, live: live ? JSON.parse(JSON.stringify(live.state)) : null,
        images: Math.max((n.imgs ?? []).length, el ? el.querySelectorAll("img").length : 0),
        outputs: app.nodeOutputs?.[String(n.id)]?.images?.length ?? 0, pos: [...n.pos], size: [...n.size] };
    }), GUIDED_TYPES);
}

/** Flip each guided node through every transition and back; report what shows (after a repaint) and what serialises. */
async function modeCycle(page) {
  return page.evaluate(async () => {
    const frame = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const result = [];
    for (const n of app.graph.nodes.filter((n) => n.widgets?.some((w) => w.name === "memsafe_live"))) {
      const t = n.widgets.find((w) => w.name === "transition");
      const original = t.value, before = n.serialize().widgets_values, seen = {};
      for (const mode of ["static", "dynamic", "off", original]) {
        t.value = mode;
        t.callback?.(mode, app.canvas, n);
        await frame();
        seen[mode] = { shown: window.__memsafeHelpers.shown(n), values: n.serialize().widgets_values };
      }
      const reloaded = LiteGraph.createNode(n.type);
      reloaded.configure(JSON.parse(JSON.stringify(n.serialize())));
      result.push({ id: String(n.id), original, before, seen, after: n.serialize().widgets_values, reloaded: reloaded.serialize().widgets_values });
    }
    return result;
  });
}

/** What the live panel of node ``id`` really painted: pixels of the curve hues inside its chart area (the text lines
 * below it are excluded), whether its text fits the height it was given, and whether the panel lies inside the node. */
async function painted(page, id) {
  return page.evaluate(({ nid, vue }) => {
    const HUES = [[0x4e, 0xa3, 0xe0], [0xe8, 0x5c, 0x5c], [0x5c, 0xc4, 0x5c], [0xb0, 0x8a, 0xd8]];
    const n = app.graph.getNodeById(nid), live = n.widgets.find((w) => w.name === "memsafe_live");
    const layout = live.state.layout;
    if (!layout) return { curve_pixels: 0, fits: false, inside: false, layout: null };
    let canvas, x0, y0, w, h, inside;
    if (vue) {
      const el = window.__memsafeHelpers.element(n);
      canvas = el?.querySelector("canvas");
      if (!canvas) return { curve_pixels: 0, fits: false, inside: false, layout, error: "no canvas in the Vue node" };
      const k = canvas.width / canvas.clientWidth, r = canvas.getBoundingClientRect(), box = el.getBoundingClientRect();
      [x0, y0, w, h] = [0, 0, canvas.width, Math.round(layout.chart * k)];
      inside = r.top >= box.top - 1 && r.bottom <= box.bottom + 1 && r.left >= box.left - 1 && r.right <= box.right + 1;
    } else {
      const c = app.canvas;
      c.setDirty(true, true);
      c.draw(true, true);
      canvas = c.canvas;
      const k = canvas.width / canvas.clientWidth, wy = live.y ?? live.last_y ?? 0;
      const [ax, ay] = c.ds.convertOffsetToCanvas([n.pos[0], n.pos[1] + wy]);
      const [bx, by] = c.ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + wy + layout.chart]);
      [x0, y0, w, h] = [Math.round(ax * k), Math.round(ay * k), Math.round((bx - ax) * k), Math.round((by - ay) * k)];
      inside = wy + layout.height <= n.size[1] + 1;
    }
    const data = canvas.getContext("2d").getImageData(x0, y0, Math.max(w, 1), Math.max(h, 1)).data;
    let hits = 0;
    for (let p = 0; p < data.length; p += 4) {
      if (HUES.some(([r, g, b]) => Math.abs(data[p] - r) + Math.abs(data[p + 1] - g) + Math.abs(data[p + 2] - b) < 60)) hits++;
    }
    return { curve_pixels: hits, fits: layout.textBottom <= layout.height + 0.5, inside, layout };
  }, { nid: Number(id), vue: !!cfg.vue });
}

/** Every node's box as drawn, after fitting the graph into view (issue 21): classic mode, LiteGraph's pos and size
 * with the title bar above pos (canvas units); Nodes 2.0, each node element's getBoundingClientRect (screen pixels). */
async function nodeBoxes(page) {
  await page.evaluate(() => app.extensionManager.command.execute("Comfy.Canvas.FitView"));
  await settle(page, 400);
  return page.evaluate((vue) => app.graph.nodes.map((n) => {
    const base = { id: String(n.id), type: n.type, title: n.title, size: [...n.size], scale: app.canvas.ds.scale };
    if (vue) {
      const el = document.querySelector(`[data-node-id="${n.id}"]`);
      if (!el) return { ...base, box: null };
      const r = el.getBoundingClientRect();
      return { ...base, box: [r.left, r.top, r.width, r.height] };
    }
    const title = n.constructor.title_mode === LiteGraph.NO_TITLE ? 0 : LiteGraph.NODE_TITLE_HEIGHT;
    return { ...base, box: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title] };
  }), !!cfg.vue);
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

/** Node search as a person uses it: double-click the empty canvas, type, read the listed titles in order. */
async function searchNodes(page, queries, top) {
  const found = {};
  await page.evaluate(() => { app.graph.clear(); app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0]; });
  for (const q of queries) {
    await page.keyboard.press("Escape");
    const r = await page.evaluate(() => app.canvas.canvas.getBoundingClientRect());
    await page.mouse.dblclick(r.left + r.width / 2, r.top + r.height / 2);
    const opened = await page.waitForSelector("[role=dialog] input", { timeout: 3000 }).catch(() => null);
    if (!opened) {  // the same search box, from its command (a double click can land while the canvas is busy)
      await page.evaluate(() => app.extensionManager.command.execute("Workspace.SearchBox.Toggle"));
      await page.waitForSelector("[role=dialog] input", { timeout: 10000 });
    }
    await page.keyboard.type(q, { delay: 20 });
    await page.waitForFunction(() => document.querySelectorAll("[role=option]").length > 0, null, { timeout: 10000 });
    await settle(page, 800);
    found[q] = await page.evaluate((n) => [...document.querySelectorAll("[role=option]")].slice(0, n)
      .map((o) => o.innerText.split("\n")[0].trim()), top);
    await page.screenshot({ path: shot(`search-${q.replace(/\W+/g, "_")}.png`) });
    await page.keyboard.press("Escape");
    await settle(page, 200);
  }
  return found;
}

/** The help panel: select a node, press the selection toolbox's info button, read what the panel shows. */
async function helpPanel(page, type) {
  await closeDialogs(page);
  await page.evaluate((t) => {
    app.graph.clear();
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];  // the node and its selection toolbox on screen
    const n = LiteGraph.createNode(t);
    n.pos = [200, 200];
    app.graph.add(n);
    app.canvas.selectNode(n);
  }, type);
  await settle(page, 500);
  await page.getByTestId("info-button").click();
  await page.waitForFunction(() => [...document.querySelectorAll("img")].some((i) => i.src.includes("/docs/")) ||
    document.body.innerText.includes("## "), null, { timeout: 10000 }).catch(() => {});
  await settle(page, 1500);
  const seen = await page.evaluate(() => ({
    text: document.body.innerText,
    images: [...document.querySelectorAll("img")].filter((i) => i.src.includes("/docs/")).map((i) => ({ src: i.src, width: i.naturalWidth })),
  }));
  await page.screenshot({ path: shot(`help-${type}.png`) });
  return seen;
}

/** Screenshot a node with its direct neighbours, fitted to the viewport (the README picture). */
async function neighbourhoodShot(page, id, file) {
  const box = await page.evaluate((nid) => {
    const g = app.graph, n = g.getNodeById(nid), c = app.canvas;
    const near = new Set([n]);
    (n.inputs ?? []).forEach((_, k) => { const m = n.getInputNode(k); if (m) near.add(m); });
    (n.outputs ?? []).forEach((_, k) => (n.getOutputNodes(k) ?? []).forEach((m) => near.add(m)));
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
// The settings the front end starts with: the rendering mode under test, no first-run template browser.
const SETTINGS = { "Comfy.VueNodes.Enabled": !!cfg.vue, "Comfy.TutorialCompleted": true };
await context.route((url) => url.hostname !== new URL(cfg.url).hostname, (route) => route.abort());  // loopback only
await context.route(/\/api\/(settings|userdata)(\/|\?|$)/, (route) => {
  const { pathname, search } = new URL(route.request().url());
  if (route.request().method() !== "GET") return route.fulfill({ status: 200, contentType: "application/json", body: "{}" });
  if (pathname.endsWith("/settings")) return route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(SETTINGS) });
  if (search.includes("dir=")) return route.fulfill({ status: 200, contentType: "application/json", body: "[]" });
  return route.fulfill({ status: 404, body: "" });
});
// Console warnings and errors whose call stack passes through this pack's script (a deprecation warning is logged
// by the front end's own code, called from ours): recorded before any script runs.
await context.addInitScript((packUrl) => {
  window.__memsafeConsole = [];
  for (const level of ["warn", "error"]) {
    const original = console[level];
    console[level] = function (...args) {
      const stack = new Error().stack ?? "";
      if (stack.includes(packUrl)) window.__memsafeConsole.push({ level, text: args.map(String).join(" ").slice(0, 400) });
      return original.apply(this, args);
    };
  }
}, PACK_URL);
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.on("pageerror", (e) => out.page_errors.push(String(e.stack ?? e).slice(0, 800)));
  page.on("console", (m) => {
    if (m.type() === "error") out.console_errors.push(m.text().slice(0, 300));
    if (/already registered/.test(m.text())) out.console_errors.push(m.text().slice(0, 300));
  });
  await page.goto(cfg.url);
  await page.waitForFunction(() => window.app?.graph && window.app.extensions?.length > 0, null, { timeout: 90000 });
  await settle(page, 1500);
  await closeDialogs(page);
  await installPageHelpers(page);
  out.extensions = await page.evaluate(() => app.extensions.map((e) => e.name));
  out.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
  out.vue_nodes = await page.evaluate(() => !!(LiteGraph.vueNodesMode ?? app.extensionManager.setting.get("Comfy.VueNodes.Enabled")));

  for (const name of cfg.templates) {
    const errorsBefore = out.page_errors.length;
    await clearToasts(page);
    const wf = await loadTemplate(page, cfg.module, name);
    await settle(page, 800);
    const entry = { ...(await uiState(page)), nodes: wf.nodes.length, guided: await guidedNodes(page) };
    entry.boxes = await nodeBoxes(page);  // as the template opens, before any widget is flipped
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
    const before = {};
    for (const g of await guidedNodes(page)) before[g.id] = await painted(page, g.id);
    const events = await runFromUI(page, run);
    const guided = await guidedNodes(page);
    out.runs[run.name] = { events, guided, ui: await uiState(page), curves: await page.evaluate(() => app.graph.nodes
      .filter((n) => n.type === "MemSafeGuidanceCurve").map((n) => {
        const src = (name) => { const k = n.inputs.findIndex((x) => x.name === name); const m = k < 0 ? null : n.getInputNode(k);
          return m ? String(m.id) : null; };
        const el = document.querySelector(`[data-node-id="${n.id}"]`);
        return { id: String(n.id), source: src("guider") ?? src("model"),
          images: Math.max((n.imgs ?? []).length, el ? el.querySelectorAll("img").length : 0),
          prefix: n.widgets.find((w) => w.name === "filename_prefix")?.value };
      })) };
    await page.screenshot({ path: shot(`run-${run.name}.png`) });
    for (const g of guided) {
      await nodeShot(page, g.id, shot(`run-${run.name}-node-${g.id}.png`));
      g.painted = { before: before[g.id], after: await painted(page, g.id) };
    }
    const readme = guided.find((g) => g.live?.summary && g.images) ?? guided.find((g) => g.live?.summary);
    if (run.readme_shot && readme) await neighbourhoodShot(page, readme.id, run.readme_shot);
  }
  if (cfg.findable) {
    out.searches = await searchNodes(page, cfg.findable.queries, cfg.findable.top);
    out.help = {};
    for (const [type, lines] of Object.entries(cfg.findable.help)) {
      const seen = await helpPanel(page, type);
      out.help[type] = { lines: lines.filter((line) => seen.text.includes(line)), images: seen.images };
    }
  }
  out.pack_console = await page.evaluate(() => window.__memsafeConsole);
} catch (e) {
  out.fatal = String(e.stack ?? e).slice(0, 2000);
  try { await context.pages()[0]?.screenshot({ path: shot("fatal.png") }); } catch {}
} finally {
  fs.writeFileSync(cfg.result, JSON.stringify(out, null, 1));
  await context.close();
  fs.rmSync(userData, { recursive: true, force: true });
}
