// The musecl map explorer: a choropleth of a city's regions; click a region (or a point) to
// highlight its most similar regions, listed with scores and modality attention.
// Plain browser JavaScript over the JSON API of `musecl serve`; Leaflet is vendored.
"use strict";

const RAMP = ["#440154", "#482878", "#3e4a89", "#31688e", "#26828e",
  "#1f9e89", "#35b779", "#6dcd59", "#b4de2c", "#fde725"];
const NO_DATA = "#c8c8c8";
const BRANCH_COLOURS = { remote: "#4e79a7", street: "#f28e2b", poi_text: "#59a14f",
  poi_counts: "#b07aa1", mobility: "#e15759" };

const $ = (id) => document.getElementById(id);
const state = { city: null, layer: null, regions: null, paths: {}, marker: null };
const map = L.map("map", { zoomSnap: 0.25, preferCanvas: false });

function status(text, error) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(error));
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const where = body.parameter ? ` (${body.parameter})` : "";
    throw new Error((body.error || response.statusText) + where);
  }
  return body;
}

function colour(t) {
  if (t === null || t === undefined || Number.isNaN(t)) return NO_DATA;
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  return RAMP[Math.round(x)];
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;" }[c]));
}

async function loadCities() {
  const cities = await getJSON("/api/cities");
  const select = $("city");
  select.innerHTML = "";
  for (const c of cities) {
    const option = document.createElement("option");
    option.value = c.city;
    option.textContent = `${c.city} (${c.regions} regions)`;
    select.appendChild(option);
  }
  if (!cities.length) {
    status("The store holds no city yet: `musecl ingest BUNDLE` adds one.", true);
    return;
  }
  const wanted = new URLSearchParams(location.search).get("city");
  select.value = cities.some((c) => c.city === wanted) ? wanted : cities[0].city;
  await selectCity(select.value);
}

async function selectCity(city) {
  state.city = city;
  const layers = await getJSON(`/api/cities/${encodeURIComponent(city)}/layers`);
  const select = $("layer");
  select.innerHTML = '<option value="">(none)</option>';
  for (const name of layers.indicators) {
    select.insertAdjacentHTML("beforeend",
      `<option value="indicator:${escapeHtml(name)}">${escapeHtml(name)}</option>`);
  }
  for (const p of layers.predictions) {
    select.insertAdjacentHTML("beforeend",
      `<option value="prediction:${escapeHtml(p.regressor)}">${escapeHtml(p.indicator)}` +
      ` (predicted by ${escapeHtml(p.regressor)})</option>`);
  }
  if (layers.indicators.length) select.value = `indicator:${layers.indicators[0]}`;
  await drawRegions();
}

async function drawRegions() {
  const [kind, name] = ($("layer").value || ":").split(/:(.*)/s);
  const params = new URLSearchParams();
  if (kind && name) params.set(kind, name);
  status("Loading regions…");
  const fc = await getJSON(`/api/cities/${encodeURIComponent(state.city)}/regions?${params}`);
  const values = fc.features.map((f) => f.properties.value).filter((v) => v !== null);
  let lo = Infinity, hi = -Infinity;  // no spread: cities have 100k+ regions
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const span = hi > lo ? hi - lo : 1;
  if (state.regions) state.regions.remove();
  state.paths = {};
  state.regions = L.geoJSON(fc, {
    style: (f) => ({
      fillColor: colour(f.properties.value === null ? null : (f.properties.value - lo) / span),
      fillOpacity: 0.85, color: "#ffffff", weight: 1,
      className: `region region-${f.properties.region_id}`,
    }),
    onEachFeature: (f, layer) => {
      state.paths[f.properties.region_id] = layer;
      layer.bindTooltip(() => {
        const v = f.properties.value;
        return `${escapeHtml(f.properties.region_id)}` +
          (v === null ? "" : `<br>${escapeHtml(name || "")}: ${Number(v).toPrecision(4)}`);
      });
      layer.on("click", (e) => {
        L.DomEvent.stopPropagation(e);
        if ($("mode").value === "point") searchPoint(e.latlng);
        else searchRegion(f.properties.region_id, f.properties.centroid);
      });
    },
  }).addTo(map);
  map.fitBounds(state.regions.getBounds(), { padding: [10, 10] });
  $("legend").innerHTML = values.length
    ? `<div>${escapeHtml(name)}</div><div class="ramp"></div>` +
      `<div class="ends"><span>${lo.toPrecision(4)}</span><span>${hi.toPrecision(4)}</span></div>`
    : "";
  status(`${fc.features.length} regions. Click one to find the most similar.`);
}

function filters(centre) {
  const params = new URLSearchParams();
  params.set("k", String(Math.max(1, Math.min(100, Number($("k").value) || 10))));
  params.set("attention", "true");
  const km = Number($("radius").value);
  if (km > 0) params.set("near", `${centre[0]},${centre[1]},${km}`);
  if ($("adjacent").checked) params.set("exclude_adjacent", "true");
  if ($("other").checked) params.set("other_cities", "true");
  return params;
}

function searchRegion(regionId, centroid) {
  const params = filters(centroid);
  params.set("region", regionId);
  if (state.marker) { state.marker.remove(); state.marker = null; }
  return runSearch(params, regionId);
}

function searchPoint(latlng) {
  const params = filters([latlng.lng, latlng.lat]);
  params.set("lon", latlng.lng.toFixed(6));
  params.set("lat", latlng.lat.toFixed(6));
  if (state.marker) state.marker.remove();
  state.marker = L.circleMarker(latlng, { radius: 6, color: "#000", fillOpacity: 1 }).addTo(map);
  return runSearch(params, null);
}

async function runSearch(params, regionId) {
  status("Searching…");
  let answer;
  try {
    answer = await getJSON(`/api/cities/${encodeURIComponent(state.city)}/similar?${params}`);
  } catch (err) {
    status(err.message, true);
    return;
  }
  for (const layer of Object.values(state.paths)) {
    const el = layer.getElement && layer.getElement();
    if (el) el.classList.remove("query", "hit");
  }
  const queryLayer = regionId ? state.paths[regionId] : null;
  if (queryLayer && queryLayer.getElement()) {
    queryLayer.getElement().classList.add("query");
    queryLayer.bringToFront();
  }
  const list = $("results");
  list.innerHTML = "";
  for (const hit of answer.hits) {
    const here = hit.city === state.city && state.paths[hit.region_id];
    if (here && here.getElement()) {
      here.getElement().classList.add("hit");
      here.bringToFront();
    }
    const li = document.createElement("li");
    li.dataset.region = hit.region_id;
    li.dataset.city = hit.city;
    const bars = Object.entries(hit.attention || {})
      .map(([b, w]) => `<span title="${escapeHtml(b)} ${(w * 100).toFixed(0)}%" ` +
        `style="width:${(w * 100).toFixed(1)}%;background:${BRANCH_COLOURS[b] || "#999"}"></span>`)
      .join("");
    li.innerHTML = `<span class="id">${escapeHtml(hit.region_id)}</span>` +
      (hit.city !== state.city ? ` <span class="other">${escapeHtml(hit.city)}</span>` : "") +
      ` — score ${hit.score.toFixed(3)}, pct ${hit.percentile === null ? "–" :
        hit.percentile.toFixed(1)}<div class="bars">${bars}</div>`;
    li.addEventListener("click", () => {
      if (here) map.panTo(here.getBounds().getCenter());
      else showElsewhere(hit).catch(fail);  // a region of another city in the same space
    });
    list.appendChild(li);
  }
  $("keys").innerHTML = answer.hits.length
    ? Object.keys(answer.hits[0].attention || {})
      .map((b) => `<i style="background:${BRANCH_COLOURS[b] || "#999"}"></i>${escapeHtml(b)}`)
      .join("")
    : "";
  $("results-title").hidden = false;
  const from = regionId ? `region ${regionId}` : `the point ${params.get("lon")}, ${params.get("lat")}`;
  status(answer.hits.length
    ? `${answer.hits.length} regions most similar to ${from}.`
    : `No region passes the filters for ${from}.`);
}

async function showElsewhere(hit) {
  $("city").value = hit.city;
  await selectCity(hit.city);
  const layer = state.paths[hit.region_id];
  if (layer && layer.getElement()) {
    layer.getElement().classList.add("hit");
    layer.bringToFront();
    map.fitBounds(layer.getBounds(), { maxZoom: 13 });
  }
  status(`Region ${hit.region_id} of ${hit.city} (score ${hit.score.toFixed(3)}).`);
}

async function start() {
  const config = await getJSON("/config.json");
  if (config.tiles) {
    L.tileLayer(config.tiles, { maxZoom: 19, attribution: "tiles: your server" }).addTo(map);
  }
  map.on("click", (e) => { if ($("mode").value === "point") searchPoint(e.latlng); });
  $("city").addEventListener("change", (e) => selectCity(e.target.value).catch(fail));
  $("layer").addEventListener("change", () => drawRegions().catch(fail));
  await loadCities();
}

function fail(err) { status(err.message || String(err), true); }

start().catch(fail);
