// The Manticore page: pick versions, press the button, watch the line move, get the addresses.
// Everything comes from the intake API: GET /api/v1/options, POST /api/v1/requests, the
// server-sent events of /api/v1/requests/<id>/events, POST .../activity and DELETE.
"use strict";

const $ = (id) => document.getElementById(id);
const api = "/api/v1";
let options = null;
let user = null;
let stream = null;
let status = null;
let countdownTimer = null;
let lastActivity = 0;
const ACTIVITY_EVERY_MS = 30000;

function token() {
  return $("token").value.trim();
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (options && options.jwt && token()) h["Authorization"] = "Bearer " + token();
  return h;
}

function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}

async function problem(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail) && body.detail.length) {
      const first = body.detail[0];
      return (first.loc || []).slice(1).join(".") + ": " + first.msg;
    }
  } catch (e) { /* not JSON */ }
  return "the server answered " + response.status;
}

function fill(select, values, chosen) {
  select.replaceChildren(...values.map((v) => {
    const o = document.createElement("option");
    o.value = v; o.textContent = v; o.selected = v === chosen;
    return o;
  }));
}

function randomId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return "user-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function loadOptions() {
  const response = await fetch(api + "/options");
  if (!response.ok) throw new Error(await problem(response));
  options = await response.json();
  fill($("core-version"), options.core.versions, options.core.default_version);
  fill($("core-build"), options.core.builds, options.core.default_build);
  fill($("hmi-type"), options.hmi.types, options.hmi.default_type);
  fill($("hmi-version"), options.hmi.versions, options.hmi.default_version);
  $("token-row").hidden = !options.jwt;
  $("user-row").hidden = options.jwt;
  $("user-id").required = !options.jwt;
  $("user-id").value = localStorage.getItem("manticore-user") || randomId();
  $("token").value = localStorage.getItem("manticore-token") || "";
  $("start").disabled = false;
}

async function start(event) {
  event.preventDefault();
  showError("");
  $("start").disabled = true;
  const body = {
    core: { version: $("core-version").value, build: $("core-build").value },
    hmi: { type: $("hmi-type").value, version: $("hmi-version").value },
  };
  if (!options.jwt) body.id = $("user-id").value.trim();
  try {
    const response = await fetch(api + "/requests", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error(await problem(response));
    const accepted = await response.json();
    user = accepted.id;
    localStorage.setItem("manticore-user", user);
    if (options.jwt) localStorage.setItem("manticore-token", token());
    follow();
  } catch (e) {
    showError("Could not ask for a core: " + e.message);
    $("start").disabled = false;
  }
}

function follow() {
  $("ask").hidden = true;
  $("ended").hidden = true;
  $("progress").hidden = false;
  let url = api + "/requests/" + encodeURIComponent(user) + "/events";
  if (options.jwt) url += "?access_token=" + encodeURIComponent(token());
  if (stream) stream.close();
  stream = new EventSource(url);
  stream.addEventListener("status", (e) => render(JSON.parse(e.data)));
  stream.addEventListener("ended", () => finished("Your session has ended and everything of yours is gone."));
  stream.onerror = () => {
    // EventSource reconnects by itself (to any instance); tell the user only if it gave up.
    if (stream && stream.readyState === EventSource.CLOSED) showError("Lost the connection to Manticore.");
  };
}

function describe(s) {
  if (s.state === "waiting") {
    if (s.position === null || s.position === undefined) return "You are in line.";
    if (s.position === 0) return "You are next in line.";
    return "You are number " + (s.position + 1) + " in line (" + s.waiting + " waiting).";
  }
  if (s.state === "starting") return "Your core and HMI are starting…";
  if (s.state === "ready") return "Your core and HMI are ready.";
  if (s.state === "expiring") return "Your time is nearly up.";
  return s.state;
}

function render(s) {
  status = s;
  showError("");
  const state = $("state");
  state.textContent = describe(s);
  state.dataset.state = s.state;
  const a = s.addresses;
  $("addresses").hidden = !a;
  if (a) {
    $("hmi-link").href = a.hmi_url;
    $("hmi-link").textContent = a.hmi_url;
    $("broker-url").textContent = a.broker_url || "";
    $("core-tcp").textContent = a.core_tcp;
  }
  $("warning").hidden = s.state !== "expiring";
  $("still-here").hidden = !s.reset_allowed;
  tick();
}

function tick() {
  clearInterval(countdownTimer);
  if (!status || !status.expires_at) { $("time-left").hidden = true; return; }
  const update = () => {
    const left = Math.max(0, Math.round((Date.parse(status.expires_at) - Date.now()) / 1000));
    const text = left >= 60 ? Math.floor(left / 60) + " min " + (left % 60) + " s" : left + " s";
    $("countdown").textContent = text;
    $("time-left").textContent = "Time left: " + text;
    $("time-left").hidden = false;
  };
  update();
  countdownTimer = setInterval(update, 1000);
}

function finished(text) {
  if (stream) { stream.close(); stream = null; }
  clearInterval(countdownTimer);
  status = null;
  $("progress").hidden = true;
  $("ended").hidden = false;
  $("ended-text").textContent = text;
}

async function leave() {
  if (!user) return;
  const response = await fetch(api + "/requests/" + encodeURIComponent(user), {
    method: "DELETE", headers: headers(),
  });
  if (!response.ok && response.status !== 204) { showError(await problem(response)); return; }
  finished("You left: everything of yours is gone.");
}

async function activity(force) {
  if (!user || !status || !status.claimed || !status.reset_allowed) return;
  const now = Date.now();
  if (!force && now - lastActivity < ACTIVITY_EVERY_MS) return;
  lastActivity = now;
  await fetch(api + "/requests/" + encodeURIComponent(user) + "/activity", {
    method: "POST", headers: headers(),
  });
}

async function resume() {
  const saved = localStorage.getItem("manticore-user");
  if (!saved) return;
  const response = await fetch(api + "/requests/" + encodeURIComponent(saved), { headers: headers() });
  if (response.ok) { user = saved; follow(); }
}

$("request-form").addEventListener("submit", start);
$("leave").addEventListener("click", leave);
$("still-here").addEventListener("click", () => activity(true));
$("again").addEventListener("click", () => {
  $("ended").hidden = true; $("ask").hidden = false; $("start").disabled = false;
});
for (const name of ["click", "keydown", "pointermove"]) {
  document.addEventListener(name, () => activity(false), { passive: true });
}
loadOptions().then(resume).catch((e) => showError("Manticore is not available: " + e.message));
