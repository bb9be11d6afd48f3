// racnn app: send the chosen photos to POST /predict (the endpoint programs use too) and show each answer:
// the fused top-k, each scale's answer, the attention boxes over the photo and the zoomed regions.
// Everything user-supplied (file names, class names) goes into the page as text, never as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const state = { colors: {} };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children); // strings become text nodes
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

const percent = (p) => `${(100 * p).toFixed(1)} %`;
const number = (x) => String(Math.round(x * 10) / 10);
const color = (scale) => state.colors[scale] || "#000000";

async function describeModel() {
  const info = await (await fetch("/health")).json();
  state.colors = info.scale_colors;
  const m = info.model;
  document.getElementById("model").textContent =
    `${m.name || "model"}: ${m.backbone}, ${m.num_classes} classes, ${m.num_scales} scales, on ${m.device}`;
  const l = info.limits;
  document.getElementById("limits").textContent =
    `Up to ${l.max_files} photos at once, ${number(l.max_mb)} MB in all, ${number(l.max_megapixels)} megapixels ` +
    "each; JPEG, PNG, WebP, GIF, BMP or TIFF. Nothing is stored.";
  const legend = document.getElementById("legend");
  legend.append("Attention boxes:");
  for (let s = 2; s <= m.num_scales; s++) {
    const swatch = el("span", { class: "swatch" });
    swatch.style.borderColor = color(String(s));
    legend.append(swatch, `scale ${s}`);
  }
}

async function classify(files) {
  if (!files.length) return;
  const batch = el("div", { class: "batch" });
  document.getElementById("results").prepend(batch);
  const cards = files.map((file) => {
    const card = el("article", { class: "result pending", "data-file": file.name }, el("h2", {}, file.name));
    batch.append(card);
    return card;
  });
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  let status = 0;
  let body;
  try {
    const response = await fetch("/predict?crops=1", { method: "POST", body: form });
    status = response.status;
    body = await response.json();
  } catch (error) {
    body = { error: status ? `the server answered ${status}` : `no answer from the server (${error.message})` };
  }
  if (Array.isArray(body.results)) {
    body.results.forEach((record, i) => show(cards[i], record, files[i]));
  } else { // the request as a whole was refused: too large, too many files, busy, ...
    const what = files.length === 1 ? files[0].name : `${files.length} photos`;
    batch.replaceChildren(el("p", { class: "batch-error", role: "alert" }, `${what}: ${body.error || status}`));
  }
}

function show(card, record, file) {
  card.classList.remove("pending");
  if (record.error) {
    card.classList.add("failed");
    card.append(el("p", { class: "error", role: "alert" }, record.error));
    return;
  }
  const scales = Object.keys(record.scales);
  const fusedKey = scales.join("+"); // the all-scale fusion head, whose top-k is the answer
  const top = record.prediction;
  const answer = el("div", { class: "answer" },
    el("span", { class: "fused-label" }, top.name),
    el("span", { class: "prob" }, percent(top.prob)),
    el("span", { class: "head" }, `fused ${fusedKey}`));

  // The photo as uploaded, with every zoomed scale's box in the model's pixel coordinates on top.
  const [width, height] = record.image_size;
  const photo = el("img", { alt: file.name, src: URL.createObjectURL(file) });
  photo.addEventListener("load", () => URL.revokeObjectURL(photo.src), { once: true });
  const overlay = svg("svg", { class: "boxes", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  for (const [scale, [x1, y1, x2, y2]] of Object.entries(record.boxes)) {
    overlay.append(svg("rect", {
      class: "box", "data-scale": scale, x: x1, y: y1, width: x2 - x1, height: y2 - y1,
      fill: "none", stroke: color(scale), "stroke-width": 3, "vector-effect": "non-scaling-stroke",
    }));
  }
  const caption = (scale) => {
    const best = record.scales[scale][0];
    return el("figcaption", {}, `scale ${scale}: ${best.name} ${percent(best.prob)}`);
  };
  const stage = el("div", { class: "stage" }, photo, overlay);
  photo.addEventListener("error", () => stage.replaceChildren( // e.g. TIFF: the model read it, the browser cannot
    el("p", { class: "note" }, "This browser cannot display the photo; the boxes are in the JSON answer.")));
  const panels = el("div", { class: "panels" }, el("figure", { class: "input" }, stage, caption("1")));
  for (const [scale, url] of Object.entries(record.crops || {})) {
    const zoom = el("img", { src: url, alt: `the region scale ${scale} zoomed into` });
    zoom.style.borderColor = color(scale);
    panels.append(el("figure", { class: "zoom", "data-scale": scale }, zoom, caption(scale)));
  }

  const topk = el("ol", { class: "topk" }, ...record.topk.map((c) => {
    const bar = el("div", { class: "bar" });
    bar.style.width = `${(100 * c.prob).toFixed(1)}%`;
    return el("li", {}, el("span", { class: "name" }, c.name), el("div", { class: "track" }, bar),
      el("span", { class: "p" }, percent(c.prob)));
  }));
  const heads = [
    ...scales.map((s) => [`scale ${s}`, record.scales[s][0]]),
    ...Object.entries(record.fused).map(([key, list]) => [`fused ${key}`, list[0]]),
  ];
  const table = el("table", { class: "scales" },
    el("tr", {}, el("th", {}, "head"), el("th", {}, "answer"), el("th", {}, "prob")),
    ...heads.map(([head, c]) => el("tr", {}, el("td", {}, head), el("td", {}, c.name),
      el("td", { class: "p" }, percent(c.prob)))));
  card.append(answer, panels, el("div", { class: "details" },
    el("div", {}, el("h3", {}, `top-${record.topk.length}, fused ${fusedKey}`), topk),
    el("div", {}, el("h3", {}, "each scale"), table)));
}

function setUp() {
  const input = document.getElementById("file-input");
  const drop = document.getElementById("drop");
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // choosing the same file again is a new request
    classify(files);
  });
  // Photos dropped anywhere on the page are classified (and the browser does not navigate to them).
  window.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  window.addEventListener("dragleave", (event) => { if (!event.relatedTarget) drop.classList.remove("over"); });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    classify([...event.dataTransfer.files]);
  });
  describeModel().catch((error) => {
    document.getElementById("model").textContent = `cannot reach the model server (${error.message})`;
  });
}

setUp();
