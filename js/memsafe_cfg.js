// Memorization-safe CFG: the live guidance-norm curve on the sampling node, and widgets that follow the mode.
// Server events (nodes/live.py): "memsafe_cfg.step" {node, run, step, steps, norms[B], switched[]} per step,
// "memsafe_cfg.done" {node, run, steps, norms[steps][B], switch_step[B], summary[B], timesteps} or {error}.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const GUIDED = new Set(["MemSafeCFGGuider", "MemSafeKSampler", "MemSafeCFGPatch"]);
const SHOWN_IN = { switch_percent: ["static"], earliest_percent: ["dynamic"], latest_percent: ["dynamic"] };
const LIVE = "memsafe_live";
const CHART_H = 120, CHART_MIN = 44, LINE_H = 14, PAD = 10;
// the hues of guidance/render.py's curve image (sample b has one colour everywhere), lightened for the dark node
const COLORS = ["#4ea3e0", "#e85c5c", "#5cc45c", "#b08ad8", "#ffa040", "#3fd0e0", "#f08cd0", "#b0b0b0"];

const widget = (node, name) => node.widgets?.find((w) => w.name === name);
// isInputConnected: front end 1.58 deprecates reading input.link (a warning on every read)
const linked = (node, name) => node.inputs?.some((i, k) => i.widget?.name === name && node.isInputConnected(k));
/** Repaint the live panel: the canvas for classic nodes, the widget's own canvas for Vue nodes ("Nodes 2.0"),
 * whose legacy-widget wrapper repaints only when asked (widget.triggerDraw), not on setDirtyCanvas. */
function repaint(node, live, resize) {
  node.setDirtyCanvas(true, resize);
  live?.triggerDraw?.();
}

/** Show only the widgets the current transition uses; hidden widgets keep their values and positions. */
function applyMode(node, resize) {
  const mode = widget(node, "transition")?.value;
  const before = node.computeSize()[1];
  for (const [name, modes] of Object.entries(SHOWN_IN)) {
    const w = widget(node, name);
    if (!w) continue;
    const hide = !modes.includes(mode) && !linked(node, name);
    if (hide === !!w.hidden) continue;
    w.hidden = hide;  // classic canvas, and Nodes 2.0 on front ends that read it (1.58)
    if (w.options) w.options.hidden = hide;  // Nodes 2.0 on front ends that read the option (1.49)
    if (hide) w.computeSize = () => [0, -4];
    else delete w.computeSize;
  }
  const live = widget(node, LIVE);
  if (live) live.mode = mode;
  const after = node.computeSize()[1];
  const height = resize ? node.size[1] + after - before : Math.max(node.size[1], after);
  node.setSize([node.size[0], height]);
  repaint(node, live, true);
}

/** What the current settings do, in one or two lines (the threshold explains itself). */
function explain(node) {
  const mode = widget(node, "transition")?.value;
  if (mode === "off") return ["transition off: plain CFG, identical to stock CFG"];
  const thr = Number(widget(node, "detect_threshold")?.value ?? 0);
  const head = mode === "static" ? "static: switch to cfg at switch_percent"
    : "dynamic: switch after the first local minimum of the norm";
  return [head, thr > 0 ? `detect_threshold ${thr}: first-step norm below it = not memorized, plain CFG`
    : "detect_threshold 0: detection off, every sample gets the transition"];
}

function textLines(node, live) {
  const st = live.state;
  if (st.error) return [st.error.slice(0, 90)];
  if (st.summary) return st.summary.map((s, b) => `sample ${b}: ${s}`);
  if (st.run != null) return [`sampling: step ${st.received.length} of ${st.steps}`, ...explain(node).slice(1)];
  return explain(node);
}

/** Text lines under the chart, and the widget's height for a chart of the given height. */
const lineCount = (node, live) => Math.max(2, textLines(node, live).length);
const height = (node, live, chart) => chart + LINE_H * lineCount(node, live) + 6;

/** The panel's height: Vue nodes pass the height their wrapper sized the widget's canvas to; classic nodes pass
 * LiteGraph's row height, and the node layout's computedHeight is the panel's. */
function panelHeight(node, live, H) {
  if (H && H !== (globalThis.LiteGraph?.NODE_WIDGET_HEIGHT ?? 20)) return H;
  return live.computedHeight ?? height(node, live, CHART_H);
}

function drawLive(ctx, node, width, y, H) {
  if (this.mode !== widget(node, "transition")?.value) applyMode(node, false); // pasted or set without a callback
  const lines = lineCount(node, this);
  const total = panelHeight(node, this, H);
  const chartH = Math.max(CHART_MIN, total - LINE_H * lines - 6);
  const st = this.state, x0 = PAD, w = width - 2 * PAD, h = chartH - 8;
  ctx.save();
  ctx.fillStyle = "#151515";
  ctx.strokeStyle = "#444";
  ctx.beginPath();
  ctx.roundRect(x0, y, w, h, 4);
  ctx.fill();
  ctx.stroke();
  const left = x0 + 34, right = x0 + w - 8, top = y + 22, bottom = y + h - 16;
  const thr = Number(widget(node, "detect_threshold")?.value ?? 0);
  const finite = st.norms.flat().filter((v) => v != null && isFinite(v));
  const ymax = Math.max(...finite, thr, 1e-6) * 1.1;
  const steps = Math.max(st.steps || 0, 2);
  const px = (i) => left + ((right - left) * i) / (steps - 1);
  const py = (v) => bottom - ((bottom - top) * v) / ymax;
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#999";
  ctx.textAlign = "left";
  ctx.fillText(finite.length ? "guidance norm" : "guidance norm: shown here while sampling", x0 + 6, y + 12);
  ctx.textAlign = "right";
  if (finite.length) ctx.fillText(ymax.toPrecision(2), left - 3, top + 4);
  ctx.fillText("0", left - 3, bottom);
  if (st.steps) ctx.fillText(`step ${st.steps - 1}`, right, y + h - 4);
  ctx.textAlign = "left";
  if (st.steps) ctx.fillText("step 0", left, y + h - 4);
  ctx.strokeStyle = "#555";
  ctx.beginPath();
  ctx.moveTo(left, top);
  ctx.lineTo(left, bottom);
  ctx.lineTo(right, bottom);
  ctx.stroke();
  if (thr > 0 && this.mode !== "off") {
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "#aaa";
    ctx.beginPath();
    ctx.moveTo(left, py(thr));
    ctx.lineTo(right, py(thr));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  let drawn = 0;
  for (let b = 0; b < st.batch; b++) {
    ctx.strokeStyle = ctx.fillStyle = COLORS[b % COLORS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    st.norms.forEach((row, i) => {
      const v = row?.[b];
      if (v == null) return (pen = false);
      pen ? ctx.lineTo(px(i), py(v)) : ctx.moveTo(px(i), py(v));
      pen = true;
      drawn++;
    });
    ctx.stroke();
    const s = st.switchStep[b];
    if (s != null && s >= 0) {
      const v = st.norms[s]?.[b];
      ctx.setLineDash([2, 2]);
      ctx.beginPath();
      ctx.moveTo(px(s), top);
      ctx.lineTo(px(s), bottom);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath();
      ctx.arc(px(s), v == null ? bottom : py(v), 4, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  st.drawn = drawn;
  ctx.textAlign = "left";
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  const text = textLines(node, this);
  text.forEach((line, k) => {
    ctx.fillStyle = st.summary && st.batch > 1 ? COLORS[k % COLORS.length] : "#ccc";
    ctx.fillText(line, x0 + 4, y + chartH + LINE_H * (k + 0.5), w - 8);
  });
  // where the last text line ends, against the height the panel was given (tests check it fits)
  st.layout = { height: total, chart: h, textBottom: chartH + LINE_H * text.length, lines: text.length };
  ctx.restore();
}

function addLive(node) {
  const live = {
    name: LIVE, type: LIVE, value: "", serialize: false, options: { serialize: false },
    state: { run: null, steps: 0, batch: 0, norms: [], switchStep: [], received: [], summary: null, error: null, drawn: 0 },
    draw: drawLive,
    // before any run: a small chart that grows into free space (saved layouts stay); once sampling starts: full size
    computeLayoutSize() {
      const min = height(node, this, this.state.run == null ? CHART_MIN : CHART_H);
      return { minHeight: min, maxHeight: Math.max(min, height(node, this, CHART_H)), minWidth: 1 };
    },
  };
  node.addCustomWidget(live);
  node.setSize([node.size[0], node.size[1] + CHART_H - CHART_MIN]);
  return live;
}

function findNode(executionId) {
  const path = String(executionId).split(":");
  let graph = app.graph, node = null;
  for (const [k, id] of path.entries()) {
    node = graph?.getNodeById(id) ?? graph?.getNodeById(Number(id));
    if (k < path.length - 1) graph = node?.subgraph;
  }
  return node;
}

function liveFor(detail) {
  const node = findNode(detail.node);
  const live = node && widget(node, LIVE);
  if (!live) return [null, null];
  const st = live.state;
  if (st.run !== detail.run) {
    const batch = detail.switch_step?.length ?? detail.norms?.length ?? 0;
    Object.assign(st, { run: detail.run, steps: detail.steps, batch, norms: [], switchStep: [], received: [], summary: null,
      error: null, done: false });
    grow(node);
  }
  return [node, live];
}

function grow(node) {
  const need = node.computeSize()[1];
  if (node.size[1] < need) node.setSize([node.size[0], need]);
  repaint(node, widget(node, LIVE), true);
}

function onStep({ detail }) {
  const [node, live] = liveFor(detail);
  if (!live) return;
  const st = live.state;
  st.norms[detail.step] = detail.norms;
  for (const b of detail.switched) st.switchStep[b] = detail.step;
  st.received.push(detail.step);
  repaint(node, live, false);
}

function onDone({ detail }) {
  const [node, live] = liveFor(detail);
  if (!live) return;
  const st = live.state;
  if (detail.error) st.error = detail.error;
  else Object.assign(st, { norms: detail.norms, switchStep: detail.switch_step, summary: detail.summary, timesteps: detail.timesteps });
  st.done = true;
  grow(node);
}

app.registerExtension({
  name: "memsafe_cfg.live",
  setup() {
    api.addEventListener("memsafe_cfg.step", onStep);
    api.addEventListener("memsafe_cfg.done", onDone);
  },
  nodeCreated(node) {
    if (!GUIDED.has(node.comfyClass)) return;
    addLive(node);
    const transition = widget(node, "transition");
    const callback = transition?.callback;
    if (transition) transition.callback = function (...args) {
      const r = callback?.apply(this, args);
      applyMode(node, true);
      return r;
    };
    applyMode(node, true);
  },
  loadedGraphNode(node) {
    if (GUIDED.has(node.comfyClass)) applyMode(node, false);
  },
});
