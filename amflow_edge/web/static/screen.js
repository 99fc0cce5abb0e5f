// The operator's screen: the part on the tray, its verdict, the decision, the batch and the station's health.
// Everything it shows comes from the station's API and follows the live stream (/api/events/); nothing polls.

import { api, ApiError, currentLogin, follow, forgetLogin, idleFor, logIn, logOut, onUnauthorized, touched } from "./api.js";
import { Zoom } from "./zoom.js";

const UNDECIDED = new Set(["ambiguous", "material_ambiguous"]);
const WORDS = {
  idle: "No part",
  inspecting: "Inspecting…",
  pass: "Pass",
  fail: "Fail",
  review: "Review",
  uninspected: "Not inspected",
  not_in_batch: "Not in batch",
};
const ASSIGNMENT_EVENTS = new Set(["scan.assign", "scan.reassign", "scan.unassign", "scan.reject"]);
const IDLE_MINUTES = 10; // a login ends after this long without a touch or a key: the next operator logs in anew
const IDLE_MS = IDLE_MINUTES * 60 * 1000;
const KEY_CONFIRM_MS = 5000; // the key A or R asks for Enter within this long…
const KEY_TOO_FAST_MS = 250; // …but not sooner: a barcode scanner typing "A…⏎" is faster than any hand
const PRESS_VALID_MS = 15000; // a decision button's press binds the scan shown at that moment for this long
const TILE_MIN_PX = 160; // a tile's thumbnail: its CSS width × devicePixelRatio, within the station's range
const TILE_MAX_PX = 960;
const CHANGED = "The part on the screen changed before your decision was sent: look at it and decide again.";

const model = {
  state: null,
  scans: new Map(), // uuid → Scan, the newest version seen
  details: new Map(), // uuid → {scan, station} from /detail/
  loading: new Set(), // "scan:<uuid>" / "detail:<uuid>" requests under way
  failed: new Set(), // the same keys, failed: not asked again before the next resync
  recent: [], // uuids, newest first
  catalogue: { categories: [], reasons: [] },
  titles: new Map(), // reason id → title
  parts: null, // /api/parts/
  partsKey: null,
  partsAsOf: null, // the change (a scan's modified) the parts were fetched after, when newer than the state
  rejected: new Set(), // uuids the operator (or a plant system) said are not of this batch, seen here
  pinned: null, // a scan the operator went back to; null follows the tray
  newestCapture: null, // {uuid, created} of the last scan.capture seen, before the state names it
  view: 0, // the chosen photo
  selected: new Set(), // reasons picked for a reject
  selectedFor: null, // the scan shown when the first of them was picked
  pressed: null, // {uuid, at}: the scan shown when a decision button was pressed (pointerdown)
  keyConfirm: null, // {passed, uuid, at, timer}: the key A or R waiting for Enter
  busy: false,
  viewOnly: false, // the read-only address: decisions are refused there (403), so none are offered
  signIn: null, // why the station refused to show scans (401 on a read or the stream), or null
};

const $ = (id) => document.getElementById(id);
const zoom = new Zoom($("zoom"));
let afterLogin = null;
let stream = null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** Replace a list's items and give focus back to the item that had it (by its data-key). */
function replaceList(list, items) {
  const focused = list.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  list.replaceChildren(...items);
  if (focused) list.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

function newer(a, b) {
  const ta = Date.parse(a);
  const tb = Date.parse(b);
  return ta !== tb ? ta > tb : a > b;
}

/** A decision's answer ({status, command, scan, data}) carries the scan as it now is. */
function rememberAnswer(answer) {
  if (answer?.data?.uuid) remember(answer.data);
}

function remember(scan) {
  const known = model.scans.get(scan.uuid);
  if (!known || !newer(known.modified, scan.modified)) model.scans.set(scan.uuid, scan);
}

function clock(stamp) {
  return stamp ? stamp.slice(11, 19) : "";
}

function gigabytes(bytes) {
  return `${(bytes / 1e9).toFixed(bytes < 1e10 ? 1 : 0)} GB`;
}

// ---- which scan, which verdict ----

function liveUuid() {
  const latest = model.state?.operator?.latest_scan ?? null;
  const captured = model.newestCapture;
  if (!captured || latest === captured.uuid) return latest ?? captured?.uuid ?? null;
  if (!latest) return captured.uuid;
  const known = model.scans.get(latest);
  return known && newer(known.created, captured.created) ? latest : captured.uuid;
}

function shownUuid() {
  return model.pinned ?? liveUuid();
}

/** Said to be no part of this batch (scan.reject): the payload does not tell, so only rejects seen here count. */
function notInBatch(scan) {
  return Boolean(scan) && model.rejected.has(scan.uuid) && !scan.assignment;
}

function verdictOf(scan) {
  const operator = model.state?.operator;
  if (!scan) return operator?.latest_scan ? operator.signal : "idle";
  if (notInBatch(scan)) return "not_in_batch";
  if (scan.qc_operator !== null) return scan.qc_operator ? "pass" : "fail";
  if (scan.qc_needs_review) return "review";
  if (scan.qc_machine !== null) return scan.qc_machine ? "pass" : "fail";
  if (operator?.latest_scan === scan.uuid) return operator.signal === "review" ? "review" : "inspecting";
  return "uninspected";
}

function whoDecided(scan, verdict) {
  if (!scan) return "";
  if (verdict === "not_in_batch") return "Set aside: it goes to no output of the batch";
  if (scan.qc_operator !== null) return scan.qc_operator ? "Approved by the operator" : "Rejected by the operator";
  if (verdict === "review") return "The inspection asks for a person to decide";
  if (scan.qc_machine !== null) return scan.qc_machine ? "Passed the inspection" : "Failed the inspection";
  return verdict === "inspecting" ? "Measuring the part against its design" : "";
}

function partTitle(scan) {
  if (!scan) return "Put a part on the tray";
  if (notInBatch(scan)) return "Not a part of this batch";
  if (scan.assignment) {
    const { part_title: title, part_id: id } = scan.assignment;
    return title.includes(id) ? title : `${title} · ${id}`;
  }
  const parts = (model.parts?.parts ?? []).filter((p) => p.design_material === scan.design_material);
  if (scan.design_material && parts.length === 1) return `${parts[0].part_title} (not assigned)`;
  if (scan.design_material) return `Design ${scan.design_material.slice(0, 8)}… ${scan.design_material.split("_").slice(1).join(" ")}`;
  return "Part not identified yet";
}

// ---- loading ----

async function once(key, load) {
  if (model.loading.has(key) || model.failed.has(key)) return;
  model.loading.add(key);
  try {
    await load();
  } catch (error) {
    model.failed.add(key);
    console.warn(key, error.message);
  } finally {
    model.loading.delete(key);
  }
  render();
}

function ensureScan(uuid) {
  if (uuid && !model.scans.has(uuid)) once(`scan:${uuid}`, async () => remember(await api(`/api/scan/${uuid}/`)));
}

function ensureDetail(uuid, again = false) {
  if (!uuid || (model.details.has(uuid) && !again)) return;
  once(`detail:${uuid}`, async () => {
    const detail = await api(`/api/scan/${uuid}/detail/`);
    model.details.set(uuid, detail);
    if (detail?.scan) remember(detail.scan);
  });
}

function ensureParts() {
  const state = model.state;
  const key = state ? `${state.scan_session}/${state.batch?.id ?? ""}` : null;
  if (!key || key === model.partsKey) return;
  model.partsKey = key;
  once("parts", async () => {
    model.parts = await api("/api/parts/");
  });
}

/** A scan changed parts: the station publishes a new state only when the part on the tray changed, so the counts
 * are asked for again (and used until a newer state comes). */
function refreshCounts(modified) {
  if (!model.parts) return;
  once(`parts:${modified}`, async () => {
    const parts = await api("/api/parts/");
    if (model.partsAsOf && newer(model.partsAsOf, modified)) return; // a later change's answer came first
    model.parts = parts;
    model.partsAsOf = modified;
  });
}

async function loadCatalogue() {
  const data = await api("/api/reasons/");
  const reasons = Array.isArray(data) ? data : (data.reasons ?? data.reason ?? []);
  const categories = data.categories ?? data.category ?? [];
  model.catalogue = { categories, reasons };
  model.titles = new Map(reasons.map((r) => [r.id, r.title]));
  renderReasonPicker();
  render();
}

function takeState(state) {
  if (model.state && newer(model.state.at, state.at)) return;
  model.state = state;
  if (state.read_only === true) model.viewOnly = true; // should the station say so; else a 403 on login tells
  ensureParts();
}

async function resync() {
  if (!model.catalogue.reasons.length) loadCatalogue().catch((error) => say("decide-message", `Reasons not loaded: ${error.message}`));
  const [state, scans] = await Promise.all([api("/api/state/"), api("/api/scans/?limit=20")]);
  model.failed.clear();
  takeState(state);
  for (const scan of scans.items) remember(scan);
  model.recent = scans.items.map((s) => s.uuid);
  render();
}

// ---- rendering ----

function render() {
  const uuid = shownUuid();
  ensureScan(uuid);
  renderHealth();
  renderScan(uuid);
  renderRecent(uuid);
  renderIdentify(uuid);
  renderBatch();
  renderDecide(uuid);
}

function chip(text, level) {
  return el("li", { class: `chip ${level}` }, text);
}

function renderHealth() {
  const state = model.state;
  if (!state) return;
  $("station-name").textContent = state.station;
  const chips = [];
  if (state.mode !== "running") chips.push(chip(`Station ${state.mode}`, "warn"));
  const down = state.cameras.filter((c) => !c.connected);
  if (down.length === 0) chips.push(chip(`Cameras ${state.cameras.length}/${state.cameras.length}`, "ok"));
  for (const camera of down) chips.push(chip(`${camera.camera} offline${camera.detail ? `: ${camera.detail}` : ""}`, "bad"));
  chips.push(state.broker_connected ? chip("Broker", "ok") : chip("Broker offline", "bad"));
  // A backlog of a few just-queued events is normal; one that stays (the broker away, events refused) is not.
  const { backlog, oldest_unsent_age_s: age } = state.outbox;
  const stuck = backlog > 0 && (age ?? 0) > 30;
  chips.push(chip(stuck ? `Outbox ${backlog} waiting, oldest ${Math.round(age)} s` : `Outbox ${backlog}`, stuck ? (age > 600 ? "bad" : "warn") : "ok"));
  const disk = state.disk_free_bytes;
  chips.push(chip(`Disk ${gigabytes(disk)} free`, disk < 1e9 ? "bad" : disk < 5e9 ? "warn" : "ok"));
  const drift = state.calibration_drift;
  if (drift) {
    const moved = drift.cameras.filter((c) => c.moved);
    const unconfirmed = drift.cameras.filter((c) => !c.moved && c.problem);
    for (const c of moved) chips.push(chip(`${c.camera} moved ${c.drift ? `${c.drift.shift_px.toFixed(1)} px` : ""}: recalibrate`, "bad"));
    for (const c of unconfirmed) chips.push(chip(`${c.camera} view not confirmed`, "warn"));
    if (!moved.length && !unconfirmed.length) chips.push(chip("Calibration OK", "ok"));
  }
  const designs = state.design_processing;
  if (designs.state === "processing") chips.push(chip(`Preparing designs ${designs.done}/${designs.total}`, "warn"));
  if (designs.failed?.length) chips.push(chip(`${designs.failed.length} designs unusable`, "warn"));
  $("health").replaceChildren(...chips);
  const paused = $("paused");
  paused.hidden = !state.paused_reason;
  paused.textContent = state.paused_reason ? `Paused: ${state.paused_reason}` : "";
}

/** The image a tile shows: a JPEG thumbnail as wide as the tile (a few dozen KB, where the full PNG the zoom
 * loads is 5 MB to decode); `camera` is the camera's number, 1 for cam01. */
function tileUrl(uuid, camera) {
  return `/api/scan/${uuid}/thumbnail/${camera}/?w=${tileWidth()}`;
}

/** A tile's width in device pixels, within what the station makes (160 … 960 px). */
function tileWidth() {
  const css = $("views").querySelector("button.view img")?.clientWidth || 480;
  return Math.min(Math.max(Math.round(css * (window.devicePixelRatio || 1)), TILE_MIN_PX), TILE_MAX_PX);
}

function views(scan) {
  if (!scan) return [];
  const photos = scan.scan_urls.map((url, i) => {
    const camera = url.match(/scan_(cam\d+)\.png/)?.[1] ?? `cam${String(i + 1).padStart(2, "0")}`;
    const src = scan.scan_urls_full[i] ?? url;
    return { key: `${scan.uuid}/${i}`, label: camera, thumb: tileUrl(scan.uuid, Number(camera.slice(3))), src };
  });
  if (scan.inspectionreport) {
    const src = `/api/scan/${scan.uuid}/overlays.png?report=${scan.inspectionreport}`;
    photos.push({ key: `${scan.uuid}/overlays/${scan.inspectionreport}`, label: "Inspection overlays", thumb: src, src });
  }
  return photos;
}

function renderScan(uuid) {
  const scan = uuid ? model.scans.get(uuid) : null;
  const verdict = verdictOf(scan);
  const box = $("verdict");
  box.dataset.verdict = verdict;
  box.dataset.scan = uuid ?? "";
  box.dataset.modified = scan?.modified ?? "";
  $("verdict-word").textContent = WORDS[verdict] ?? verdict;
  $("part-title").textContent = uuid && !scan ? "Loading the scan…" : partTitle(scan);
  const facts = scan ? [whoDecided(scan, verdict), `scanned ${clock(scan.created)}`] : [];
  if (scan?.output) facts.push(`output ${scan.output.id}`);
  $("scan-facts").textContent = facts.filter(Boolean).join(" · ");

  const reasons = scan?.qc_reasons ?? (uuid && !scan ? model.state?.operator?.qc_reasons : []) ?? [];
  const items = reasons.map((id) => el("li", {}, model.titles.get(id) ?? id.replaceAll("_", " ")));
  if (scan?.qc_comment) items.push(el("li", { class: "comment-line" }, `“${scan.qc_comment}”`));
  $("verdict-reasons").replaceChildren(...items);

  $("history-bar").hidden = !model.pinned;
  if (model.pinned) $("history-note").textContent = `Showing the scan of ${clock(scan?.created)}, not the part on the tray`;

  const list = views(scan);
  const key = list.map((v) => v.key).join(" ");
  const tiles = $("views");
  model.view = Math.min(model.view, Math.max(list.length - 1, 0));
  if (tiles.dataset.key !== key) {
    tiles.dataset.key = key;
    replaceList(
      tiles,
      list.map((view, i) =>
        el(
          "li",
          {},
          el(
            "button",
            { type: "button", class: "view", dataset: { key: view.label, index: String(i) }, onclick: () => openZoom(i) },
            el("img", { src: view.thumb, alt: view.label, decoding: "async" }),
            el("span", { class: "view-label" }, view.label),
          ),
        ),
      ),
    );
    if (scan && !scan.inspectionreport && verdict === "inspecting") {
      tiles.append(el("li", { class: "view-pending" }, el("span", {}, "Overlays follow the inspection")));
    }
  }
  tiles.querySelectorAll("button.view").forEach((button, i) => button.setAttribute("aria-pressed", String(i === model.view)));
}

function renderRecent(uuid) {
  const live = liveUuid();
  const items = model.recent
    .map((id) => model.scans.get(id))
    .filter(Boolean)
    .map((scan) => {
      const verdict = verdictOf(scan);
      return el(
        "li",
        {},
        el(
          "button",
          {
            type: "button",
            class: "recent-item",
            "aria-current": scan.uuid === uuid ? "true" : null,
            dataset: { key: scan.uuid, verdict },
            onclick: () => pin(scan.uuid === live ? null : scan.uuid),
          },
          el("span", { class: "recent-time" }, clock(scan.created)),
          el("span", { class: "recent-verdict" }, WORDS[verdict]),
          el("span", { class: "recent-part" }, recentPart(scan)),
        ),
      );
    });
  replaceList($("recent"), items);
}

function recentPart(scan) {
  if (scan.assignment) return scan.assignment.part_title;
  if (notInBatch(scan)) return "not in batch";
  return scan.design_material ? scan.design_material.slice(0, 8) : "unidentified";
}

/** The candidates of a scan that awaits the operator; as the station's own list, none once it has a design. */
function candidatesOf(uuid, scan) {
  if (!scan || scan.assignment || scan.design_material || notInBatch(scan)) return null;
  const waiting = model.state?.awaiting_identification?.find((a) => a.scan === uuid);
  if (waiting) return waiting;
  const found = model.details.get(uuid)?.station?.identification;
  if (found && UNDECIDED.has(found.outcome) && found.candidates?.length) return found;
  return null;
}

function renderIdentify(uuid) {
  const scan = uuid ? model.scans.get(uuid) : null;
  if (scan && !scan.assignment && !scan.design_material) ensureDetail(uuid);
  const found = candidatesOf(uuid, scan);
  $("identify").hidden = !found;
  if (!found) return;
  $("identify-reason").textContent = found.reason ?? "The station could not tell these designs apart.";
  const parts = model.parts?.parts ?? [];
  const items = [];
  for (const candidate of found.candidates) {
    const matching = candidate.part_id
      ? [{ part_id: candidate.part_id, part_title: candidate.part_title ?? candidate.part_id }]
      : parts.filter((p) => p.design_material === candidate.design_material);
    const score = `${Math.round(candidate.score * 100)} % match`;
    if (!matching.length) {
      items.push(el("li", { class: "candidate muted" }, `${candidate.design_material.slice(0, 8)}… · ${score} · no part of this batch`));
    }
    for (const part of matching) {
      const full = parts.find((p) => p.part_id === part.part_id);
      const count = full ? ` · ${assignedOf(full)} of ${full.copies} found` : "";
      items.push(
        el(
          "li",
          {},
          el(
            "button",
            { type: "button", class: "button candidate", dataset: { key: part.part_id }, onclick: () => assign(uuid, part.part_id) },
            el("strong", {}, part.part_title),
            el("span", {}, ` ${part.part_id} · ${score}${count}`),
          ),
        ),
      );
    }
  }
  if (parts.length) {
    items.push(el("li", {}, el("button", { type: "button", class: "button candidate other", dataset: { key: "other" }, onclick: () => pickPart(uuid) }, "Another part…")));
  }
  items.push(
    el("li", {}, el("button", { type: "button", class: "button candidate other", dataset: { key: "reject" }, onclick: () => notOfBatch(uuid) }, "Not a part of this batch")),
  );
  replaceList($("candidates"), items);
}

function assignedOf(part) {
  const state = model.state;
  const fetchedLater = model.partsAsOf && (!state || newer(model.partsAsOf, state.at));
  return (fetchedLater ? part.assigned : state?.copies_assigned?.[part.part_id]) ?? part.assigned ?? 0;
}

function renderBatch() {
  const body = $("batch-body");
  const parts = model.parts?.parts ?? [];
  const batch = model.parts?.batch ?? model.state?.batch;
  $("batch-title").textContent = batch ? `Batch: ${batch.title || batch.id}` : "Batch";
  if (!parts.length) {
    body.replaceChildren(el("p", { class: "muted" }, batch ? "No parts listed for this batch" : "No batch"));
    return;
  }
  const found = parts.reduce((sum, p) => sum + Math.min(assignedOf(p), p.copies), 0);
  const copies = parts.reduce((sum, p) => sum + p.copies, 0);
  const groups = new Map();
  for (const part of parts) {
    const output = part.output ? `Output ${part.output.id}` : "No output";
    if (!groups.has(output)) groups.set(output, []);
    groups.get(output).push(part);
  }
  const sections = [el("p", { class: "batch-total" }, el("strong", {}, `${found} of ${copies}`), " parts found")];
  for (const [output, members] of [...groups].sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true }))) {
    sections.push(
      el(
        "section",
        { class: "output" },
        el("h3", {}, output),
        el(
          "ul",
          { class: "part-rows" },
          members.map((part) => {
            const done = assignedOf(part);
            return el(
              "li",
              { class: done >= part.copies ? "part-row complete" : "part-row" },
              el("span", { class: "part-name" }, part.part_title),
              el("progress", { max: String(part.copies), value: String(Math.min(done, part.copies)), "aria-label": `${part.part_title}: ${done} of ${part.copies}` }),
              el("span", { class: "part-count" }, `${done}/${part.copies}`),
            );
          }),
        ),
      ),
    );
  }
  body.replaceChildren(...sections);
}

function renderReasonPicker() {
  const groups = model.catalogue.categories.map((category) => {
    const reasons = model.catalogue.reasons.filter((r) => r.category === category.id);
    return el(
      "div",
      { class: "reason-group", role: "group", "aria-label": category.title },
      el("h3", {}, category.title),
      el(
        "div",
        { class: "reason-chips" },
        reasons.map((reason) =>
          el("button", { type: "button", class: "reason", dataset: { reason: reason.id }, "aria-pressed": "false", onclick: () => toggleReason(reason.id) }, reason.title),
        ),
      ),
    );
  });
  $("reason-picker").replaceChildren(...groups);
}

function renderDecide(uuid) {
  const scan = uuid ? model.scans.get(uuid) : null;
  $("approve").disabled = !scan || model.busy;
  $("reject").disabled = !scan || model.busy;
  const found = new Set(scan?.qc_reasons ?? []);
  for (const button of $("reason-picker").querySelectorAll("button.reason")) {
    button.setAttribute("aria-pressed", String(model.selected.has(button.dataset.reason)));
    button.classList.toggle("found", found.has(button.dataset.reason));
  }
  const login = currentLogin();
  $("operator-name").textContent = login ? `Operator: ${login.operator}` : model.viewOnly ? "View only" : "Not logged in";
  $("login-button").hidden = Boolean(login) || model.viewOnly;
  $("logout-button").hidden = !login;
  document.body.classList.toggle("view-only", model.viewOnly);
  $("view-only").hidden = !model.viewOnly;
  renderIdle();
  $("sign-in-needed").hidden = !model.signIn;
  $("sign-in-why").textContent = model.signIn ?? "";
}

/** How long the login lasts without use, said quietly; "" when nobody is logged in. */
function renderIdle() {
  const left = currentLogin() ? Math.max(IDLE_MS - idleFor(), 0) : null;
  $("idle-left").textContent = left === null ? "" : `logs out after ${Math.ceil(left / 60000)} min idle`;
}

// ---- actions ----

function say(id, text) {
  $(id).textContent = text;
}

function pin(uuid) {
  model.pinned = uuid;
  model.view = 0;
  model.selected.clear();
  render();
}

function openZoom(index) {
  const scan = model.scans.get(shownUuid());
  const list = views(scan);
  if (!list.length) return;
  model.view = index;
  zoom.open(list, index, (i) => {
    model.view = i;
    render();
  });
}

function moveView(step) {
  const buttons = [...$("views").querySelectorAll("button.view")];
  if (!buttons.length) return;
  model.view = (model.view + step + buttons.length) % buttons.length;
  buttons[model.view].focus();
  render();
}

function toggleReason(id) {
  if (!model.selected.size) model.selectedFor = shownUuid();
  if (model.selected.has(id)) model.selected.delete(id);
  else model.selected.add(id);
  render();
}

function askLogin(then) {
  if (model.viewOnly) {
    say("decide-message", "View only: decisions are made at the station's own address.");
    return;
  }
  if ($("login").open) {
    if (then) afterLogin = then;
    return;
  }
  afterLogin = then;
  say("login-message", "");
  $("login-operator").value = currentLogin()?.operator ?? $("login-operator").value;
  $("login-pin").value = "";
  $("login").showModal();
  ($("login-operator").value ? $("login-pin") : $("login-operator")).focus();
}

/** Run a request that needs an operator; ask for a login first (or again, when the token expired). */
async function asOperator(messageId, action) {
  if (!currentLogin()) {
    askLogin(() => asOperator(messageId, action));
    return;
  }
  model.busy = true;
  render();
  try {
    await action();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      forgetLogin();
      say(messageId, "Your login ended: log in again.");
      askLogin(() => asOperator(messageId, action));
    } else if (error instanceof ApiError && error.status === 403 && !currentLogin()) {
      goViewOnly();
    } else {
      say(messageId, error.message);
    }
  } finally {
    model.busy = false;
    render();
  }
}

/** The scan a decision button's click is for: the one shown when it was pressed, else (a keyboard click) now. */
function pressedScan() {
  const pressed = model.pressed;
  model.pressed = null;
  return pressed && Date.now() - pressed.at < PRESS_VALID_MS ? pressed.uuid : shownUuid();
}

/** Decide `uuid`, the scan shown when the operator started (pressed the button, the key): refused, and said so,
 * when another has taken the screen since (a new part's scan.capture arriving just before the tap). */
function decide(passed, uuid) {
  if (!uuid || !model.scans.has(uuid)) {
    say("decide-message", "No scan to decide.");
    return;
  }
  if (uuid !== shownUuid()) {
    say("decide-message", CHANGED);
    return;
  }
  if (model.selected.size && model.selectedFor !== uuid) {
    model.selected.clear();
    render();
    say("decide-message", "The reasons were picked for another scan: the part on the screen changed. Pick them again.");
    return;
  }
  const reasons = [...model.selected];
  const comment = $("comment").value.trim();
  asOperator("decide-message", async () => {
    if (uuid !== shownUuid()) throw new Error(CHANGED); // it changed while the operator logged in
    say("decide-message", passed ? "Approving…" : "Rejecting…");
    const answer = await api(`/api/scan/${uuid}/qc/`, {
      method: "POST",
      body: { passed, reasons: reasons.length ? reasons : null, comment: comment || null },
    });
    rememberAnswer(answer);
    model.selected.clear();
    $("comment").value = "";
    say("decide-message", `${passed ? "Approved" : "Rejected"} the scan of ${clock(model.scans.get(uuid)?.created)}.`);
  });
}

function assign(uuid, partId) {
  asOperator("identify-message", async () => {
    if (uuid !== shownUuid()) throw new Error(CHANGED);
    rememberAnswer(await api(`/api/scan/${uuid}/assign/`, { method: "POST", body: { part_id: partId } }));
    say("identify-message", `Assigned to ${partId}.`);
  });
}

function notOfBatch(uuid) {
  const comment = $("comment").value.trim() || "Not a part of this batch";
  asOperator("identify-message", async () => {
    if (uuid !== shownUuid()) throw new Error(CHANGED);
    rememberAnswer(await api(`/api/scan/${uuid}/reject/`, { method: "POST", body: { comment } }));
    model.rejected.add(uuid);
    $("comment").value = "";
    say("identify-message", "Marked as not a part of this batch.");
  });
}

/** Every part of the batch, to assign `uuid` (bound now: the scan shown when the picker opened) to one the
 * station did not offer. */
function pickPart(uuid) {
  const parts = [...(model.parts?.parts ?? [])].sort((a, b) => a.part_title.localeCompare(b.part_title, undefined, { numeric: true }));
  const choose = (partId) => {
    $("parts-dialog").close();
    assign(uuid, partId);
  };
  $("parts-list").replaceChildren(
    ...parts.map((part) =>
      el(
        "li",
        {},
        el(
          "button",
          { type: "button", class: "button candidate", dataset: { key: part.part_id }, onclick: () => choose(part.part_id) },
          el("strong", {}, part.part_title),
          el("span", {}, ` ${part.part_id} · ${assignedOf(part)} of ${part.copies} found`),
        ),
      ),
    ),
  );
  $("parts-dialog").showModal();
}

// ---- the keyboard's decisions: A or R, then Enter ----

function askKey(passed) {
  const uuid = shownUuid();
  cancelKey();
  if (!uuid || !model.scans.has(uuid)) {
    say("decide-message", "No scan to decide.");
    return;
  }
  model.keyConfirm = { passed, uuid, at: Date.now(), timer: setTimeout(() => cancelKey("Not sent: Enter did not follow."), KEY_CONFIRM_MS) };
  const box = $("key-confirm");
  box.textContent = `Press Enter to ${passed ? "approve" : "reject"} the scan of ${clock(model.scans.get(uuid).created)} (any other key cancels)`;
  box.hidden = false;
}

function cancelKey(note) {
  if (!model.keyConfirm) return;
  clearTimeout(model.keyConfirm.timer);
  model.keyConfirm = null;
  $("key-confirm").hidden = true;
  if (note) say("decide-message", note);
}

/** A key while A or R waits: Enter (after a hand's pause) sends the decision; anything else cancels it. */
function answerKey(event) {
  if (["Shift", "CapsLock", "Control", "Alt", "Meta"].includes(event.key)) return;
  event.preventDefault();
  const asked = model.keyConfirm;
  if (event.key === "Enter" && Date.now() - asked.at >= KEY_TOO_FAST_MS) {
    cancelKey();
    decide(asked.passed, asked.uuid);
  } else {
    cancelKey("Not sent: the key A or R needs Enter to follow (typed too fast, or another key came).");
  }
}

// ---- who may use the screen ----

/** Any touch or key: first end a login left idle too long (before the touch can act under it), then note it. */
function used() {
  if (currentLogin() && idleFor() >= IDLE_MS) endIdle();
  touched();
}

function endIdle() {
  logOut();
  cancelKey();
  if ($("login").open) $("login").close();
  say("decide-message", `Logged out after ${IDLE_MINUTES} minutes without use.`);
  render();
}

function tick() {
  if (currentLogin() && idleFor() >= IDLE_MS) endIdle();
  else renderIdle();
}

/** The station answered 401: a POST is asked again by asOperator; a read or the stream means no scans are shown
 * until someone signs in (a read_token station, or one restarted since: its tokens live in memory only). */
function refused(method) {
  const had = currentLogin();
  forgetLogin();
  if (method !== "GET") return render();
  if (!model.signIn) {
    model.signIn = had ? "Your sign-in expired: sign in again to see the scans." : "This station needs a sign-in to show scans.";
    if (had) $("login-operator").value = had.operator;
    askLogin(null);
    say("login-message", model.signIn);
  }
  render();
}

/** The stream was refused: it does not say why, so a read asks (a 401 comes to refused()). */
function streamDown(closed) {
  setLink(false);
  if (closed && !model.signIn) api("/api/state/").catch(() => {});
}

function goViewOnly() {
  model.viewOnly = true;
  afterLogin = null;
  if ($("login").open) $("login").close();
  say("decide-message", "");
  render();
}

/** A shift's scans come by the thousand: keep only those the screen can show. */
function forgetOld() {
  if (model.scans.size < 200) return;
  const keep = new Set([...model.recent, shownUuid(), liveUuid(), model.newestCapture?.uuid]);
  for (const uuid of model.scans.keys()) if (!keep.has(uuid)) model.scans.delete(uuid);
  for (const uuid of model.details.keys()) if (!keep.has(uuid)) model.details.delete(uuid);
  for (const uuid of model.rejected) if (!keep.has(uuid)) model.rejected.delete(uuid);
}

// ---- wiring ----

function onScanEvent({ event, scan }) {
  remember(scan);
  if (event === "scan.reject") model.rejected.add(scan.uuid);
  else if (scan.assignment) model.rejected.delete(scan.uuid); // an assign takes a reject back
  if (ASSIGNMENT_EVENTS.has(event)) refreshCounts(scan.modified);
  if (event === "scan.capture") {
    if (!model.newestCapture || newer(scan.created, model.newestCapture.created)) {
      model.newestCapture = { uuid: scan.uuid, created: scan.created };
    }
  }
  if (!model.recent.includes(scan.uuid)) model.recent = [scan.uuid, ...model.recent].slice(0, 20);
  forgetOld();
  if (event !== "scan.capture" && event !== "scan.quality_control" && model.details.has(scan.uuid)) {
    ensureDetail(scan.uuid, true);
  }
  render();
}

function wire() {
  for (const [id, passed] of [["approve", true], ["reject", false]]) {
    $(id).addEventListener("pointerdown", () => {
      model.pressed = { uuid: shownUuid(), at: Date.now() };
    });
    // a click from the keyboard (Enter or Space on the focused button, detail 0) asks for Enter like the keys A
    // and R: a barcode scanner's Enter must not decide
    $(id).addEventListener("click", (event) => (event.detail === 0 ? askKey(passed) : decide(passed, pressedScan())));
  }
  document.addEventListener("pointerdown", used, true);
  document.addEventListener("keydown", used, true);
  setInterval(tick, 15000);
  onUnauthorized(refused);
  $("sign-in").addEventListener("click", () => askLogin(null));
  $("parts-cancel").addEventListener("click", () => $("parts-dialog").close());
  $("back-to-live").addEventListener("click", () => pin(null));
  $("login-button").addEventListener("click", () => askLogin(null));
  $("logout-button").addEventListener("click", async () => {
    await logOut();
    say("decide-message", "Logged out.");
    render();
  });
  $("login-cancel").addEventListener("click", () => $("login").close());
  $("login").addEventListener("close", () => {
    $("login-pin").value = "";
  });
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const operator = $("login-operator").value.trim();
    const pin = $("login-pin").value;
    $("login-submit").disabled = true;
    try {
      await logIn(operator, pin);
      $("login").close();
      say("decide-message", "");
      if (model.signIn) {
        model.signIn = null;
        stream?.restart(); // with the login's cookie now
      }
      render();
      const then = afterLogin;
      afterLogin = null;
      then?.();
    } catch (error) {
      if (error.status === 403) {
        goViewOnly(); // the read-only address refuses every POST
        return;
      }
      say("login-message", error.status === 401 ? "Wrong operator name or PIN." : error.message);
      $("login-pin").select();
    } finally {
      $("login-submit").disabled = false;
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector("dialog[open]")) return cancelKey(); // the dialogs take their own keys; Esc closes them
    if (event.target.closest?.("input, textarea, select")) {
      cancelKey();
      if (event.key === "Escape") event.target.blur();
      return;
    }
    if (model.keyConfirm) return answerKey(event);
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -3, ArrowDown: 3 }[event.key];
    if (step) {
      event.preventDefault();
      moveView(step);
    } else if ((event.key === "a" || event.key === "A") && !model.viewOnly) {
      event.preventDefault();
      askKey(true);
    } else if ((event.key === "r" || event.key === "R") && !model.viewOnly) {
      event.preventDefault();
      askKey(false);
    } else if (event.key === "Escape" && model.pinned) {
      pin(null);
    }
  });
}

function setLink(up) {
  const link = $("link");
  link.dataset.live = String(up);
  link.textContent = up ? "Live" : model.signIn ? "Sign-in needed" : "Reconnecting…";
}

wire();
render();
stream = follow({
  onOpen: () => {
    model.signIn = null;
    setLink(true);
    resync().catch((error) => console.warn("resync", error));
  },
  onDown: streamDown,
  onState: (state) => {
    takeState(state);
    render();
  },
  onScan: onScanEvent,
});
