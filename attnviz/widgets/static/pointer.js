// attnviz pointer view: click or hover on a picture to ask where it looks.
//
// One script for two hosts: the live widget (anywidget: `model` is the widget's model,
// synced with the kernel) and an exported page (attnviz.widgets.export: `model` is a
// plain object with the same get / set / on / save_changes). No imports, no requests.
//
// mode "attention": the page holds every block's rows (float16, packed by
// attnviz.render.pointer.pack_attention) and draws the map of the pointed pixel itself,
// by the rule that module states and mirrors in numpy (draw_panel, draw_grid): the
// same float64 arithmetic and integer geometry, so the pixels are the same.
// mode "png": the kernel draws the picture; the page reports the pointed pixel.

const HALF = (() => {
  const t = new Float64Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    let v;
    if (e === 0) v = f * Math.pow(2, -24);
    else if (e === 31) v = f ? NaN : Infinity;
    else v = (1 + f / 1024) * Math.pow(2, e - 15);
    t[h] = sign * v;
  }
  return t;
})();

const CROSSHAIR = [0, 255, 255];
const PREVIEW = [255, 255, 0];
const CELL = [255, 255, 255];
const WINDOW = [80, 200, 255];
const SELECTED = [0, 255, 255];
const GAP = 3;

function view(dv) {
  if (dv instanceof DataView) return dv;
  if (dv instanceof ArrayBuffer) return new DataView(dv);
  if (dv && dv.buffer) return new DataView(dv.buffer, dv.byteOffset, dv.byteLength);
  return new DataView(new ArrayBuffer(0));
}

function f16(dv, offset, count) {
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) out[i] = HALF[dv.getUint16(offset + 2 * i, true)];
  return out;
}

function findBlock(meta, name) {
  for (const b of meta.blocks) if (b.name === name) return b;
  return meta.blocks[0];
}

function slotOf(b, head) {
  return head === null || head < 0 || head >= b.heads ? 0 : head + 1;
}

// the map (float64 over the key grid) a block, head and "show" pick; null if none
function rowOf(meta, dv, b, head, show, cell) {
  const n = b.key_size[0] * b.key_size[1];
  const slot = slotOf(b, head);
  if (show === "rollout") {
    return meta.rollout ? f16(dv, meta.rollout.offset, meta.rollout.keys) : null;
  }
  if (show === "query") {
    const q = b.query_size[0] * b.query_size[1];
    const k = b.k;
    const at = (slot * q + cell) * k;
    const values = f16(dv, b.qoff + 2 * at, k);
    if (b.ioff === null) return values;
    const out = new Float64Array(n);
    for (let j = 0; j < k; j++) out[dv.getUint16(b.ioff + 2 * (at + j), true)] = values[j];
    return out;
  }
  const s = b.specials.indexOf(show);
  if (s < 0) return null;
  return f16(dv, b.soff + 2 * (slot * b.specials.length + s) * n, n);
}

function colourIndices(m) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of m) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const out = new Uint8Array(m.length);
  if (!(hi > lo)) return out;
  for (let i = 0; i < m.length; i++) out[i] = Math.min(255, Math.floor(((m[i] - lo) / (hi - lo)) * 256));
  return out;
}

function queryCell(b, xy, h, w) {
  const [hq, wq] = b.query_size;
  return Math.floor((xy[1] * hq) / h) * wq + Math.floor((xy[0] * wq) / w);
}

function setPx(px, cw, x, y, c) {
  const o = 4 * (y * cw + x);
  px[o] = c[0];
  px[o + 1] = c[1];
  px[o + 2] = c[2];
  px[o + 3] = 255;
}

function fill(px, cw, ch, xa, ya, xb, yb, c) {
  xa = Math.max(xa, 0);
  ya = Math.max(ya, 0);
  xb = Math.min(xb, cw - 1);
  yb = Math.min(yb, ch - 1);
  for (let y = ya; y <= yb; y++) for (let x = xa; x <= xb; x++) setPx(px, cw, x, y, c);
}

function outline(px, cw, ch, x0, y0, x1, y1, c) {
  fill(px, cw, ch, x0, y0, x1, y0 + 1, c);
  fill(px, cw, ch, x0, y1 - 1, x1, y1, c);
  fill(px, cw, ch, x0, y0, x0 + 1, y1, c);
  fill(px, cw, ch, x1 - 1, y0, x1, y1, c);
}

function crosshair(px, cw, ch, cx, cy, arm, colour) {
  for (const [c, width] of [[[0, 0, 0], 1], [colour, 0]]) {
    fill(px, cw, ch, cx - arm, cy - width, cx + arm, cy + width, c);
    fill(px, cw, ch, cx - width, cy - arm, cx + width, cy + arm, c);
  }
}

// where each pixel of a (tw x th) picture of an h x w image over a hk x wk key grid comes
// from: the photo pixel (times 3) and the key cell; cached, the geometry rarely changes
const GEOMETRY = new Map();
function geometry(tw, th, h, w, hk, wk) {
  const key = [tw, th, h, w, hk, wk].join(",");
  let g = GEOMETRY.get(key);
  if (!g) {
    const pix = new Int32Array(tw * th);
    const cell = new Int32Array(tw * th);
    for (let v = 0; v < th; v++) {
      const y = Math.floor((v * h) / th);
      const ky = Math.floor((y * hk) / h);
      for (let u = 0; u < tw; u++) {
        const x = Math.floor((u * w) / tw);
        pix[v * tw + u] = 3 * (y * w + x);
        cell[v * tw + u] = 3 * (ky * wk + Math.floor((x * wk) / w)); // times 3: a colour
      }
    }
    g = { pix, cell };
    if (GEOMETRY.size > 64) GEOMETRY.clear();
    GEOMETRY.set(key, g);
  }
  return g;
}

// the photo's term of the blend, p (255 - A) + 127, at each pixel of a geometry's picture
function photoTerms(g, photo, alpha) {
  if (g.photo !== photo || g.alpha !== alpha) {
    const B = new Int32Array(3 * g.pix.length);
    for (let i = 0; i < g.pix.length; i++) {
      const p = g.pix[i];
      B[3 * i] = photo[p] * (255 - alpha) + 127;
      B[3 * i + 1] = photo[p + 1] * (255 - alpha) + 127;
      B[3 * i + 2] = photo[p + 2] * (255 - alpha) + 127;
    }
    Object.assign(g, { photo, alpha, B });
  }
  return g.B;
}

// overlay `row` (over a hk x wk key grid) on the photo into a (tw x th) rectangle at (x0, y0)
// of a canvas cw pixels wide: (c A + p (255 - A) + 127) // 255 per channel, the division
// done as ((x + 1) * 257) >> 16, exact for 0 <= x <= 65535 (here x <= 255 * 255 + 127)
function paint(px, cw, photo, h, w, row, hk, wk, lut, alpha, x0, y0, tw, th) {
  const g = geometry(tw, th, h, w, hk, wk);
  const { pix, cell } = g;
  if (!row) {
    let i = 0;
    for (let v = 0; v < th; v++) {
      let o = 4 * ((y0 + v) * cw + x0);
      for (let u = 0; u < tw; u++, i++, o += 4) {
        const p = pix[i];
        px[o] = photo[p];
        px[o + 1] = photo[p + 1];
        px[o + 2] = photo[p + 2];
        px[o + 3] = 255;
      }
    }
    return;
  }
  const idx = colourIndices(row);
  const colour = new Int32Array(3 * idx.length); // each key's colour, times A, plus 1
  for (let k = 0; k < idx.length; k++) {
    colour[3 * k] = lut[3 * idx[k]] * alpha + 1;
    colour[3 * k + 1] = lut[3 * idx[k] + 1] * alpha + 1;
    colour[3 * k + 2] = lut[3 * idx[k] + 2] * alpha + 1;
  }
  const B = photoTerms(g, photo, alpha);
  let i = 0;
  for (let v = 0; v < th; v++) {
    let o = 4 * ((y0 + v) * cw + x0);
    for (let u = 0; u < tw; u++, i++, o += 4) {
      const c = cell[i];
      const b = 3 * i;
      px[o] = ((colour[c] + B[b]) * 257) >> 16;
      px[o + 1] = ((colour[c + 1] + B[b + 1]) * 257) >> 16;
      px[o + 2] = ((colour[c + 2] + B[b + 2]) * 257) >> 16;
      px[o + 3] = 255;
    }
  }
}

// a canvas of cw x ch pixels, shown at that size (never stretched), and pixels to fill
function pixels(canvas, cw, ch) {
  if (canvas.width !== cw || canvas.height !== ch) {
    canvas.width = cw;
    canvas.height = ch;
    canvas.style.width = cw + "px";
    canvas.style.height = ch + "px";
  }
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(cw, ch);
  return { ctx, out, px: out.data };
}

function bytesOf(value) {
  const dv = view(value);
  return new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength);
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "attnviz-pointer";
  root.style.cssText = "display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap";
  const main = document.createElement("canvas");
  main.className = "attnviz-pointer-main";
  main.style.cssText = "cursor:crosshair;image-rendering:pixelated;touch-action:none;flex:none";
  const img = document.createElement("img");
  img.className = "attnviz-pointer-png";
  img.style.cssText = "cursor:crosshair;image-rendering:pixelated;touch-action:none;flex:none";
  img.draggable = false;
  const side = document.createElement("div");
  side.className = "attnviz-pointer-grid";
  side.style.cssText = "display:flex;flex-direction:column;font:11px monospace";
  const heads = document.createElement("div");
  const gridRow = document.createElement("div");
  gridRow.style.cssText = "display:flex;gap:4px";
  const labels = document.createElement("div");
  labels.style.cssText = "display:flex;flex-direction:column";
  const grid = document.createElement("canvas");
  grid.className = "attnviz-pointer-heads";
  grid.style.cssText = "cursor:pointer;image-rendering:pixelated;flex:none";
  gridRow.append(labels, grid);
  side.append(heads, gridRow);
  root.append(main, img, side);
  el.append(root);

  let labelsFor = ""; // the grid's labels are rebuilt only when blocks or sizes change
  let quiet = false; // while the page itself sets several traits: one draw, not one each
  let preview = null; // the hovered pixel, drawn but not chosen
  let pending = null; // a hover waiting for the next frame to be sent to the kernel
  const state = { photo: null, dv: null, lut: null };

  const get = (k) => model.get(k);
  const size = () => get("size");
  const head = () => (get("head") < 0 ? null : get("head"));

  function loadData() {
    state.photo = bytesOf(get("image"));
    state.dv = view(get("data"));
    state.lut = bytesOf(get("lut"));
  }

  function pixelAt(e, target) {
    const r = target.getBoundingClientRect();
    const [h, w] = size();
    const s = get("scale");
    const u = Math.floor(((e.clientX - r.left) * w * s) / r.width);
    const v = Math.floor(((e.clientY - r.top) * h * s) / r.height);
    const x = Math.min(w - 1, Math.max(0, Math.floor(u / s)));
    const y = Math.min(h - 1, Math.max(0, Math.floor(v / s)));
    return [x, y];
  }

  function drawMain() {
    const meta = get("meta");
    const [h, w] = size();
    const s = get("scale");
    const cw = w * s;
    const ch = h * s;
    const { ctx, out, px } = pixels(main, cw, ch);
    const b = findBlock(meta, get("block"));
    const show = get("show");
    const where = preview || get("query");
    const cell = queryCell(b, where, h, w);
    const row = rowOf(meta, state.dv, b, head(), show, cell);
    let [hk, wk] = b.key_size;
    if (show === "rollout" && meta.rollout) [hk, wk] = meta.rollout.key_size;
    paint(px, cw, state.photo, h, w, row, hk, wk, state.lut, get("alpha"), 0, 0, cw, ch);
    if (row && show === "query") {
      const [hq, wq] = b.query_size;
      const i = Math.floor(cell / wq);
      const j = cell % wq;
      if (b.windows) {
        const [r0, c0, r1, c1] = b.windows[cell];
        outline(
          px, cw, ch,
          Math.floor((c0 * w * s) / wk), Math.floor((r0 * h * s) / hk),
          Math.floor((c1 * w * s) / wk) - 1, Math.floor((r1 * h * s) / hk) - 1, WINDOW,
        );
      }
      outline(
        px, cw, ch,
        Math.floor((j * w * s) / wq), Math.floor((i * h * s) / hq),
        Math.floor(((j + 1) * w * s) / wq) - 1, Math.floor(((i + 1) * h * s) / hq) - 1, CELL,
      );
      const arm = Math.max(3, 2 * s);
      const c = preview ? PREVIEW : CROSSHAIR;
      crosshair(px, cw, ch, where[0] * s + Math.floor(s / 2), where[1] * s + Math.floor(s / 2), arm, c);
    }
    ctx.putImageData(out, 0, 0);
    main.dataset.block = b.name;
    main.dataset.head = String(head());
    main.dataset.show = show;
    main.dataset.query = where.join(",");
    main.dataset.preview = preview ? "1" : "0";
  }

  function thumb() {
    const [h, w] = size();
    const tw = get("thumb");
    return [tw, Math.max(1, Math.floor((tw * h) / w))];
  }

  function drawGrid() {
    const meta = get("meta");
    const [h, w] = size();
    const [tw, th] = thumb();
    const blocks = meta.blocks;
    let cols = 0;
    for (const b of blocks) cols = Math.max(cols, b.heads + 1);
    const cw = GAP + cols * (tw + GAP);
    const ch = GAP + blocks.length * (th + GAP);
    const { ctx, out, px } = pixels(grid, cw, ch);
    px.fill(255);
    const show = get("show") === "rollout" ? "cls" : get("show");
    const where = get("query"); // the grid follows clicks; a hover previews the main picture only
    const current = findBlock(meta, get("block"));
    const selected = slotOf(current, head());
    blocks.forEach((b, bi) => {
      const [hk, wk] = b.key_size;
      const cell = queryCell(b, where, h, w);
      for (let c = 0; c <= b.heads; c++) {
        const row = rowOf(meta, state.dv, b, c === 0 ? null : c - 1, show, cell);
        if (!row) continue;
        paint(px, cw, state.photo, h, w, row, hk, wk, state.lut, get("alpha"),
          GAP + c * (tw + GAP), GAP + bi * (th + GAP), tw, th);
      }
      if (b.name === current.name) {
        const x0 = GAP + selected * (tw + GAP);
        const y0 = GAP + bi * (th + GAP);
        outline(px, cw, ch, x0 - 2, y0 - 2, x0 + tw + 1, y0 + th + 1, SELECTED);
      }
    });
    ctx.putImageData(out, 0, 0);
    grid.dataset.query = where.join(",");
    grid.dataset.block = current.name;
    const labelKey = JSON.stringify([blocks.map((b) => b.name), cols, tw, th]);
    if (labelKey === labelsFor) return;
    labelsFor = labelKey;
    heads.textContent = "";
    const headLine = document.createElement("div");
    headLine.style.cssText = `margin-left:${labels.offsetWidth + 4}px;display:flex;gap:${GAP}px;padding-left:${GAP}px`;
    for (let c = 0; c < cols; c++) {
      const label = document.createElement("span");
      label.style.cssText = `width:${tw}px;text-align:center;overflow:hidden`;
      label.textContent = c === 0 ? "mean" : `h${c - 1}`;
      headLine.append(label);
    }
    heads.append(headLine);
    labels.textContent = "";
    labels.style.paddingTop = GAP + "px";
    blocks.forEach((b) => {
      const label = document.createElement("span");
      label.style.cssText = `height:${th + GAP}px;line-height:${th}px;text-align:right;white-space:nowrap`;
      label.textContent = b.name;
      labels.append(label);
    });
  }

  function draw(withGrid = true) {
    const png = get("mode") === "png";
    main.style.display = png ? "none" : "";
    img.style.display = png ? "" : "none";
    side.style.display = !png && get("grid") ? "" : "none";
    if (png) return;
    const t0 = performance.now();
    drawMain();
    if (withGrid && get("grid")) drawGrid();
    el.dataset.drawMs = String(performance.now() - t0);
  }

  function timed(e, fn) {
    fn();
    const done = performance.now();
    // event time -> pixels written, and -> the next frame that shows them
    requestAnimationFrame(() => {
      const log = (window.__attnvizTimes = window.__attnvizTimes || []);
      log.push({ drawn: done - e.timeStamp, frame: performance.now() - e.timeStamp });
    });
  }

  function setAll(pairs) {
    quiet = true;
    try {
      for (const [k, v] of pairs) model.set(k, v);
    } finally {
      quiet = false;
    }
  }

  // only a kernel-drawn picture needs the hovered pixel; attention pages draw it themselves
  function sendHover() {
    pending = null;
    if (get("mode") !== "png") return;
    setAll([["hover", preview ? preview.slice() : []]]);
    model.save_changes();
  }

  function onMove(e) {
    const xy = pixelAt(e, e.currentTarget);
    if (preview && xy[0] === preview[0] && xy[1] === preview[1]) return;
    preview = xy;
    timed(e, () => draw(false));
    if (pending === null) pending = requestAnimationFrame(sendHover);
  }

  function onLeave() {
    preview = null;
    draw(false);
    if (pending !== null) cancelAnimationFrame(pending);
    sendHover();
  }

  function onClick(e) {
    const xy = pixelAt(e, e.currentTarget);
    if (get("mode") === "png") {
      setAll([["click", [xy[0], xy[1], (get("click")[2] || 0) + 1]]]);
    } else {
      preview = null;
      setAll([["query", xy]]);
      timed(e, draw);
    }
    model.save_changes();
  }

  function onGrid(e) {
    const r = grid.getBoundingClientRect();
    const u = Math.floor(((e.clientX - r.left) * grid.width) / r.width);
    const v = Math.floor(((e.clientY - r.top) * grid.height) / r.height);
    const [tw, th] = thumb();
    const blocks = get("meta").blocks;
    const bi = Math.floor((v - GAP) / (th + GAP));
    const c = Math.floor((u - GAP) / (tw + GAP));
    const inside = (v - GAP) % (th + GAP) < th && (u - GAP) % (tw + GAP) < tw && u >= GAP && v >= GAP;
    if (!inside || bi < 0 || bi >= blocks.length || c < 0 || c > blocks[bi].heads) return;
    setAll([["block", blocks[bi].name], ["head", c === 0 ? -1 : c - 1]]);
    timed(e, draw);
    model.save_changes();
  }

  for (const target of [main, img]) {
    target.addEventListener("pointermove", onMove);
    target.addEventListener("pointerleave", onLeave);
    target.addEventListener("click", onClick);
  }
  grid.addEventListener("click", onGrid);

  let url = null;
  function showPng() {
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(new Blob([bytesOf(get("png"))], { type: "image/png" }));
    img.src = url;
    const [h, w] = size();
    img.style.width = w * get("scale") + "px"; // pinned: never stretched or squeezed
    img.style.height = h * get("scale") + "px";
  }

  // what the kernel (or the exported page's controls) changed: one draw for all of it
  let scheduled = false;
  function later() {
    if (quiet || scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      scheduled = false;
      draw();
    });
  }
  for (const k of ["block", "head", "show", "query", "alpha", "grid", "thumb", "scale", "mode"]) {
    model.on(`change:${k}`, later);
  }
  for (const k of ["image", "data", "meta", "lut", "size"]) {
    model.on(`change:${k}`, () => {
      loadData();
      later();
    });
  }
  model.on("change:png", showPng);
  loadData();
  if (get("mode") === "png") showPng();
  draw();
  return () => {
    if (url) URL.revokeObjectURL(url);
  };
}

export default { render };
