// The console: plain DOM, no framework, no external request. Every value is written with
// textContent (never innerHTML), and the gateway only ever sends ids, states and numbers.
"use strict";

const $ = (selector) => document.querySelector(selector);
const CHANGE = { "X-Console": "1", "Content-Type": "application/json" };
let events = null;
let openSession = null;

async function api(path, options = {}) {
  const answer = await fetch(`/console/api${path}`, { credentials: "same-origin", ...options });
  if (answer.status === 401) {
    signedOut();
    throw new Error("signed out");
  }
  const body = answer.status === 204 ? null : await answer.json();
  if (!answer.ok) throw new Error(`${body.code}: ${body.detail}`);
  return body;
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (className) td.className = className;
  return td;
}

function when(iso) {
  if (!iso) return "-";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return seconds < 120 ? `${seconds} s ago` : new Date(iso).toLocaleString();
}

function button(label, describedBy, action) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = label;
  element.setAttribute("aria-label", `${label} ${describedBy}`);
  element.addEventListener("click", action);
  return element;
}

function say(text) {
  $("#live").textContent = text;
}

// --- rooms (live) ---------------------------------------------------------------------------

function renderRooms(rooms) {
  const body = $("#rooms tbody");
  body.replaceChildren();
  for (const room of rooms) {
    const row = body.insertRow();
    row.dataset.room = room.room;
    cell(row, room.room, "id");
    const online = room.online === null ? "never seen" : room.online ? "online" : "offline";
    const state = room.online === null ? "unknown" : room.online ? "online" : "offline";
    cell(row, online, state).dataset.field = "online";
    cell(row, room.recorder).dataset.field = "recorder";
    cell(row, room.active_session_id, "id");
    cell(row, room.backlog_chunks);
    cell(row, room.backlog_bytes);
    cell(row, room.microphone);
    cell(row, room.reason, room.reason ? "error" : "");
    cell(row, when(room.last_heartbeat_at || room.last_seen_at));
  }
}

// --- sessions -------------------------------------------------------------------------------

async function loadSessions() {
  const found = await api("/sessions");
  const body = $("#sessions tbody");
  body.replaceChildren();
  for (const session of found) {
    const row = body.insertRow();
    const id = row.insertCell();
    id.append(button(session.session_id, "timeline", () => showSession(session.session_id)));
    cell(row, session.room, "id");
    cell(row, session.state, session.state === "failed" ? "failed" : "");
    cell(row, new Date(session.created_at).toLocaleString());
    cell(row, session.error, session.error ? "error" : "");
  }
  if (openSession) await showSession(openSession, false);
}

async function showSession(sessionId, focus = true) {
  openSession = sessionId;
  const session = await api(`/sessions/${encodeURIComponent(sessionId)}`);
  const detail = $("#session-detail");
  $("#session-detail-title").textContent =
    `${session.session_id}: ${session.state}` + (session.error ? ` (${session.error})` : "");
  const timeline = $("#timeline");
  timeline.replaceChildren();
  for (const entry of session.timeline) {
    const item = document.createElement("li");
    item.textContent = `${new Date(entry.at).toLocaleTimeString()} ${entry.step}` +
      (entry.detail ? `: ${entry.detail}` : "");
    timeline.append(item);
  }
  const pending = $("#pending");
  pending.replaceChildren();
  for (const job of session.pending) {
    const item = document.createElement("li");
    item.textContent = `job ${job.job_id} ${job.kind}: ${job.state}, attempt ` +
      `${job.attempts}/${job.max_attempts}` + (job.last_error ? `: ${job.last_error}` : "");
    pending.append(item);
  }
  detail.hidden = false;
  if (focus) detail.focus();
}

// --- failed jobs ----------------------------------------------------------------------------

async function loadJobs() {
  const found = await api("/jobs");
  const body = $("#jobs tbody");
  body.replaceChildren();
  $("#jobs-empty").hidden = found.length > 0;
  $("#jobs").hidden = found.length === 0;
  for (const job of found) {
    const row = body.insertRow();
    row.dataset.job = job.job_id;
    cell(row, job.job_id);
    cell(row, job.kind);
    cell(row, job.session_id, "id");
    cell(row, job.attempts);
    cell(row, job.last_error, "error");
    row.insertCell().append(button("Retry", `job ${job.job_id}`, () => retry(job.job_id)));
  }
}

async function retry(jobId) {
  try {
    const job = await api(`/jobs/${jobId}/retry`, { method: "POST", headers: CHANGE });
    say(`job ${job.job_id} ${job.kind} queued again`);
  } catch (error) {
    say(`retry failed: ${error.message}`);
  }
  await Promise.all([loadJobs(), loadSessions()]);
}

// --- devices --------------------------------------------------------------------------------

async function loadDevices() {
  const found = await api("/devices");
  const body = $("#devices tbody");
  body.replaceChildren();
  for (const device of found) {
    const row = body.insertRow();
    row.dataset.device = device.room;
    cell(row, device.room, "id");
    cell(row, device.status, device.status === "revoked" ? "failed" : "");
    cell(row, device.credentials);
    cell(row, device.issued_at ? new Date(device.issued_at).toLocaleString() : "-");
    const actions = row.insertCell();
    actions.append(button("Rotate", `device ${device.room}`, () => deviceAction(device.room, "rotate")));
    if (device.status === "active") {
      actions.append(" ");
      actions.append(button("Revoke", `device ${device.room}`, () => deviceAction(device.room, "revoke")));
    }
  }
}

function issued(device) {
  const code = device.enrollment_code
    ? ` Enrollment code: ${device.enrollment_code} (once, until ${device.enrollment_expires_at}):` +
      ` on the device, run sudo ${device.enroll_command}.`
    : "";
  return `device ${device.room}: credentials issued; agent.toml and credential files in ` +
    `${device.files} on the gateway host.${code}`;
}

async function deviceAction(room, action) {
  if (action === "revoke" && !window.confirm(`Revoke device ${room}? It is refused at once.`)) {
    return;
  }
  try {
    const device = await api(`/devices/${encodeURIComponent(room)}/${action}`, {
      method: "POST", headers: CHANGE,
    });
    $("#device-result").textContent =
      action === "revoke" ? `device ${room} revoked` : issued(device);
  } catch (error) {
    $("#device-result").textContent = `${action} failed: ${error.message}`;
  }
  await loadDevices();
}

async function addDevice(event) {
  event.preventDefault();
  const room = $("#device-room").value.trim();
  try {
    const device = await api("/devices", {
      method: "POST", headers: CHANGE, body: JSON.stringify({ room }),
    });
    $("#device-result").textContent = issued(device);
    $("#device-room").value = "";
  } catch (error) {
    $("#device-result").textContent = `add failed: ${error.message}`;
  }
  await loadDevices();
}

// --- sign-in and live updates ---------------------------------------------------------------

function signedOut() {
  if (events) events.close();
  events = null;
  $("#console").hidden = true;
  $("#signin").hidden = false;
  $("#logout").hidden = true;
  say("Not signed in");
}

async function signedIn() {
  $("#signin").hidden = true;
  $("#console").hidden = false;
  $("#logout").hidden = false;
  await Promise.all([loadSessions(), loadJobs(), loadDevices()]);
  renderRooms(await api("/rooms"));
  events = new EventSource("/console/api/events");
  events.addEventListener("rooms", (event) => renderRooms(JSON.parse(event.data)));
  events.addEventListener("changed", () => {
    loadSessions(); loadJobs(); loadDevices();
  });
  events.addEventListener("open", () => say("Live"));
  events.addEventListener("error", () => say("Reconnecting..."));
}

async function login(event) {
  event.preventDefault();
  $("#login-error").textContent = "";
  const answer = await fetch("/console/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify({ token: $("#token").value }),
  });
  $("#token").value = "";
  if (!answer.ok) {
    $("#login-error").textContent = "That admin token is not valid.";
    return;
  }
  await signedIn();
}

async function logout() {
  await fetch("/console/logout", { method: "POST", credentials: "same-origin" });
  signedOut();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#device-form").addEventListener("submit", addDevice);
  $("#logout").addEventListener("click", logout);
  try {
    await api("/whoami");
    await signedIn();
  } catch {
    signedOut();
  }
});
