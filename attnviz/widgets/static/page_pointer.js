// attnviz exported page: the query explorer's controls around pointer.js
// (inlined by attnviz.widgets.export; makes no request)
const DATA = JSON.parse(document.getElementById("attnviz-data").textContent);
const bytes = (b64) => {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return new DataView(out.buffer);
};
const values = Object.assign({}, DATA.state, { lut: bytes(DATA.lut), hover: [], click: [0, 0, 0] });
const handlers = {};
const model = {
  get: (k) => values[k],
  set: (k, v) => {
    values[k] = v;
    (handlers["change:" + k] || []).forEach((f) => f());
  },
  on: (event, f) => (handlers[event] = handlers[event] || []).push(f),
  off: () => {},
  save_changes: () => {},
  send: () => {},
};
const cache = {};
function useImage(i) {
  const v = DATA.images[i];
  if (!cache[i]) cache[i] = { image: bytes(v.photo), data: bytes(v.data) };
  values.size = v.size;
  values.image = cache[i].image;
  values.meta = v.meta;
  values.data = cache[i].data;
}
useImage(0);
const controls = document.getElementById("controls");
function control(label, el) {
  const wrap = document.createElement("label");
  wrap.append(label, el);
  controls.append(wrap);
  return el;
}
function fill(el, options, value) {
  el.textContent = "";
  for (const [text, v] of options) {
    const o = document.createElement("option");
    o.textContent = text;
    o.value = JSON.stringify(v);
    el.append(o);
  }
  el.value = JSON.stringify(value);
}
function select(label, options, value, onChange) {
  const el = document.createElement("select");
  el.className = "attnviz-" + label;
  fill(el, options, value);
  el.addEventListener("change", () => onChange(JSON.parse(el.value)));
  return control(label, el);
}
const images = select("image", DATA.images.map((v, i) => [v.label, i]), 0, (i) => {
  useImage(i);
  model.set("data", values.data);
  refresh();
});
const blocks = select("block", [], values.block, (b) => model.set("block", b));
const shows = select("show", [], values.show, (s) => model.set("show", s));
const heads = select("head", [], values.head, (h) => model.set("head", h));
const opacity = document.createElement("input");
Object.assign(opacity, { type: "range", min: 0, max: 255, value: values.alpha, className: "attnviz-opacity" });
opacity.addEventListener("input", () => model.set("alpha", Number(opacity.value)));
control("opacity", opacity);
const grid = document.createElement("input");
Object.assign(grid, { type: "checkbox", checked: values.grid, className: "attnviz-grid" });
grid.addEventListener("change", () => model.set("grid", grid.checked));
control("head grid", grid);
if (DATA.images.length < 2) images.parentElement.style.display = "none";
const info = document.getElementById("info");
function refresh() {
  const meta = values.meta;
  if (!meta.blocks.some((b) => b.name === values.block)) values.block = meta.blocks[0].name;
  fill(blocks, meta.blocks.map((b) => [`${b.name} (${b.query_size.join("x")} -> ${b.key_size.join("x")})`, b.name]), values.block);
  const showOptions = [["where the query looks", "query"], ["where the whole image looks", "received"]];
  for (const t of meta.tokens) showOptions.push([`where the ${t} token looks`, t]);
  if (meta.rollout) showOptions.push(["attention rollout (all blocks)", "rollout"]);
  fill(shows, showOptions, values.show);
  let most = 0;
  for (const b of meta.blocks) most = Math.max(most, b.heads);
  const headOptions = [["mean over heads", -1]];
  for (let h = 0; h < most; h++) headOptions.push([`head ${h}`, h]);
  fill(heads, headOptions, values.head);
  const b = meta.blocks.find((x) => x.name === values.block);
  const n = b.key_size[0] * b.key_size[1];
  const kept = b.k === n ? "whole rows" : `the ${b.k} largest of ${n} weights per query row`;
  info.textContent = `${b.name}: queries ${b.query_size.join("x")}, keys ${b.key_size.join("x")}, ` +
    `${b.heads} heads; query ${values.query.join(", ")}; ${kept} (float16), named tokens whole. ` +
    "Click the picture to choose a query pixel, hover to preview; click a grid cell to open it.";
}
for (const k of ["block", "head", "show", "query"]) model.on("change:" + k, refresh);
refresh();
window.attnvizPointer.render({ model, el: document.getElementById("view") });
window.attnvizModel = model;
