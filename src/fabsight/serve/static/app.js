// fabsight dashboard: upload, ask and review call the REST API; everything else is server-rendered.
// Requests carry the HttpOnly session cookie set by /login (same origin); an expired session
// sends the person back to the login form.
"use strict";

function loginAgain(res) {
  if (res.status !== 401) return;
  window.location = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
  throw new Error("the session has expired: log in again");
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  loginAgain(res);
  const data = await res.json().catch(() => ({detail: res.statusText}));
  if (!res.ok) {
    const d = data.detail;
    throw new Error(typeof d === "string" ? d : JSON.stringify(d));
  }
  return data;
}

function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("upload-result");
    out.textContent = "uploading…";
    out.className = "muted";
    try {
      const res = await fetch(form.dataset.api || "/api/uploads", {method: "POST", body: new FormData(form)});
      loginAgain(res);
      const data = await res.json();
      if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
      // the ADC form (data-next) goes to the ADC page of the upload, the wafer form to its wafers
      window.location = form.dataset.next ? form.dataset.next + data.upload : "/wafers?upload=" + data.id;
    } catch (e) {
      out.textContent = "error: " + e.message;
      out.className = "error";
    }
  });
}

function setupHistory() {
  const form = document.getElementById("history-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("history-result");
    out.textContent = "uploading…";
    out.className = "muted";
    const query = new URLSearchParams();
    for (const name of ["lot_col", "wafer_col"]) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    const body = new FormData();
    body.append("file", form.elements.file.files[0]);
    try {
      const res = await fetch(`/api/lots/${encodeURIComponent(form.dataset.lot)}/history?${query}`,
                              {method: "PUT", body});
      loginAgain(res);
      const data = await res.json();
      if (!res.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
      window.location.reload();
    } catch (e) {
      out.textContent = "error: " + e.message;
      out.className = "error";
    }
  });
}

function setupAsk() {
  const form = document.getElementById("ask-form");
  if (!form) return;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("ask-answer");
    const body = {question: form.question.value};
    if (form.dataset.wafer) body.wafer = Number(form.dataset.wafer);
    if (form.scope && form.scope.value === "lot") { delete body.wafer; body.lot = form.dataset.lot; }
    out.textContent = "thinking…";
    try {
      const a = await api("/api/ask", body);
      out.textContent = a.answer;
      out.dataset.answered = a.answered;
    } catch (e) {
      out.textContent = "error: " + e.message;
    }
  });
}

// Review queue: j/k move, a accepts, 1-9 picks class N as the label.
function setupReview() {
  const queue = document.getElementById("queue");
  if (!queue) return;
  const classes = JSON.parse(queue.dataset.classes);
  const base = queue.dataset.api || "/api/reviews";  // the wafer queue, or the ADC defects (same verbs)
  const cards = Array.from(queue.querySelectorAll(".card"));
  const status = document.getElementById("review-status");
  let i = 0;
  const open = () => cards.filter((c) => !c.classList.contains("done"));
  function show(k) {
    if (!cards.length) return;
    i = Math.max(0, Math.min(cards.length - 1, k));
    cards.forEach((c, j) => c.classList.toggle("current", j === i));
    cards[i].scrollIntoView({block: "nearest"});
  }
  async function decide(label) {
    const card = cards[i];
    if (!card || card.classList.contains("done")) return;
    const id = card.dataset.review;
    try {
      const r = label === null ? await api(`${base}/${id}/accept`, {})
                               : await api(`${base}/${id}/correct`, {label});
      card.classList.add("done");
      card.querySelector(".decision").textContent = `${r.state}: ${r.label}`;
      status.textContent = `${open().length} left`;
      const next = cards.findIndex((c, j) => j > i && !c.classList.contains("done"));
      show(next >= 0 ? next : i);
    } catch (e) {
      status.textContent = "error: " + e.message;
    }
  }
  cards.forEach((c, j) => c.addEventListener("click", () => show(j)));
  queue.querySelectorAll("button[data-label]").forEach((b) => b.addEventListener("click", (ev) => {
    ev.stopPropagation();
    show(cards.indexOf(b.closest(".card")));
    decide(b.dataset.label === "" ? null : b.dataset.label);
  }));
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA" || ev.metaKey || ev.ctrlKey) return;
    if (ev.key === "j") show(i + 1);
    else if (ev.key === "k") show(i - 1);
    else if (ev.key === "a") decide(null);
    else if (/^[1-9]$/.test(ev.key) && Number(ev.key) <= classes.length) decide(classes[Number(ev.key) - 1]);
    else return;
    ev.preventDefault();
  });
  show(0);
}

document.addEventListener("DOMContentLoaded", () => { setupUpload(); setupHistory(); setupAsk(); setupReview(); });
