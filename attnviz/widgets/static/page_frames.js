// attnviz exported page: an app's frames, picked by its controls
// (inlined by attnviz.widgets.export; makes no request)
const DATA = JSON.parse(document.getElementById("attnviz-data").textContent);
const controls = document.getElementById("controls");
const panels = document.getElementById("panels");
const info = document.getElementById("info");
const path = [];
const imgs = {};
for (const name of DATA.panels) {
  const img = document.createElement("img");
  img.className = "attnviz-panel-" + name;
  img.alt = name;
  panels.append(img);
  imgs[name] = img;
}
function build() {
  controls.textContent = "";
  let n = DATA.tree;
  let depth = 0;
  while (n.control !== undefined) {
    const d = depth;
    if (path[d] === undefined || path[d] >= n.options.length) path[d] = n.start || 0;
    const wrap = document.createElement("label");
    const el = document.createElement("input");
    Object.assign(el, { type: "range", min: 0, max: n.options.length - 1, value: path[d] });
    el.className = "attnviz-" + n.control;
    const readout = document.createElement("span");
    readout.textContent = n.options[path[d]];
    el.addEventListener("input", () => {
      path[d] = Number(el.value);
      path.length = d + 1;
      build();
    });
    wrap.append(n.control, el, readout);
    controls.append(wrap);
    n = n.children[path[d]];
    depth += 1;
  }
  for (const name of DATA.panels) {
    const id = n.panels[name];
    imgs[name].style.display = id === undefined || id === null ? "none" : "";
    if (id !== undefined && id !== null) {
      const [b64, k, width, height] = DATA.pngs[id];
      imgs[name].src = "data:image/png;base64," + b64;
      imgs[name].dataset.factor = String(k); // stored k times smaller, shown k times larger
      imgs[name].style.width = width + "px";
      imgs[name].style.height = height + "px";
    }
  }
  info.innerHTML = n.info;
}
build();
window.attnvizFrames = { path, build };
