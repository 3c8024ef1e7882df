// The dashboard: polls /api/summary every 2 s and redraws. Plain JS, no build step, no CDN.
// When the API wants a bearer token (401), the page asks for one once and keeps it in
// sessionStorage: it lasts as long as the browser tab, and is sent only as the
// Authorization header of the page's own requests.
// Every string from the server goes into the page through textContent (never innerHTML):
// task ids, messages and pool names come from requests and must not become markup.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const LABELLED_NODES = 150; // up to this many nodes, each cell shows its name and bars
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "virtflow-scheduler.token";
  let timer = null;
  let entered = null; // the token typed on this page, for when sessionStorage is unavailable

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch (err) {
      return null; // storage disabled: ask every time
    }
  }

  function askForToken(message) {
    document.body.dataset.loaded = "false";
    const form = $("token-form");
    $("token-message").textContent = message;
    form.hidden = false;
    $("token-input").value = "";
    $("token-input").focus();
    const status = $("status");
    status.className = "status bad";
    status.textContent = "needs a read token";
  }

  function tokenEntered(event) {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    try {
      sessionStorage.setItem(TOKEN_KEY, value);
    } catch (err) {
      /* kept for this page only */
    }
    entered = value;
    $("token-form").hidden = true;
    refresh();
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "style") node.style.cssText = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const pct = (x) => `${Math.round((x || 0) * 100)}%`;

  function level(x) {
    if (x <= 0) return 0;
    if (x < 0.5) return 1;
    if (x < 0.75) return 2;
    if (x < 0.9) return 3;
    return 4;
  }

  function mib(value) {
    if (value >= 1048576) return `${(value / 1048576).toFixed(1)} TiB`;
    if (value >= 1024) return `${(value / 1024).toFixed(value >= 10240 ? 0 : 1)} GiB`;
    return `${value} MiB`;
  }

  function gib(value) {
    return value >= 10240 ? `${(value / 1024).toFixed(1)} TiB` : `${value} GiB`;
  }

  const num = (value) => Number(value || 0).toLocaleString("en-US");

  function ago(iso) {
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return `${Math.round(seconds)}s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
    return `${Math.round(seconds / 86400)}d ago`;
  }

  function bar(label, ratio, detail) {
    return el("div", { class: "bar" },
      el("span", { class: "bar-label", text: label }),
      el("span", { class: "bar-track" },
        el("span", { class: `bar-fill u${level(ratio)}`, style: `width:${Math.min(100, ratio * 100).toFixed(1)}%` })),
      el("span", { class: "bar-value", text: pct(ratio) }),
      detail ? el("span", { class: "bar-detail", text: detail }) : null);
  }

  function renderLeader(s) {
    const leader = s.leader;
    const who = leader.identity || "nobody yet";
    const box = $("leader");
    box.replaceChildren(
      el("span", { class: "k", text: "Leader " }), el("strong", { id: "leader-identity", text: who }),
      el("span", { class: "sep", text: " · " }), el("span", { class: "k", text: "epoch " }),
      el("strong", { id: "leader-epoch", text: String(leader.epoch) }),
      el("span", { class: "sep", text: " · " }), el("span", { class: "k", text: "strategy " }),
      el("strong", { id: "leader-strategy", text: leader.strategy }),
    );
    const r = s.replica;
    const broker = r.broker_connected === null ? "" : r.broker_connected ? " · broker ok" : " · broker DOWN";
    const status = $("status");
    status.className = `status ${r.broker_connected === false ? "bad" : "ok"}`;
    status.textContent = `served by ${r.identity} (${r.role})${broker} · updated ${new Date(s.generated_at).toLocaleTimeString()}`;
    const age = (Date.now() - Date.parse(s.generated_at)) / 1000;
    if (age > 30) { // the replica keeps its last summary when the database cannot be read
      status.className = "status bad";
      status.textContent += ` · data ${Math.round(age)}s old`;
    }
  }

  function renderStats(s) {
    const t = s.tasks;
    const items = [
      ["queued", t.queued], ["waiting", t.waiting], ["scheduled", t.scheduled], ["failed", t.failed],
      ["released", t.released], ["webhooks pending", s.webhooks.pending + s.webhooks.outbox_pending],
      ["webhooks dead", s.webhooks.dead],
    ];
    $("stats").replaceChildren(...items.map(([name, value]) =>
      el("div", { class: `stat stat-${name.replace(/ /g, "-")}` },
        el("div", { class: "stat-value", text: num(value) }),
        el("div", { class: "stat-name", text: name }))));
  }

  function renderPools(s) {
    if (!s.pools.length) {
      $("pools").replaceChildren(el("p", { class: "empty", text: "No pools: import nodes with `scheduler nodes import`." }));
      return;
    }
    $("pools").replaceChildren(...s.pools.map((p) => el("div", { class: "pool card", "data-pool": p.pool },
      el("div", { class: "pool-head" },
        el("strong", { text: p.pool }),
        el("span", { class: "muted", text: ` ${num(p.nodes)} nodes${p.cordoned ? `, ${num(p.cordoned)} cordoned` : ""} · ${num(p.allocated.vms)} VMs` })),
      bar("CPU", p.utilization.cpu, `${num(p.allocated.cpu)} / ${num(p.capacity.cpu)} vCPU`),
      bar("Memory", p.utilization.memory, `${mib(p.allocated.memory)} / ${mib(p.capacity.memory)}`),
      bar("Disk", p.utilization.disk, `${gib(p.allocated.disk)} / ${gib(p.capacity.disk)}`),
    )));
  }

  function renderNodes(s) {
    const n = s.nodes;
    const count = n.name.length;
    if (!count) {
      $("nodes").replaceChildren(el("p", { class: "empty", text: "No nodes in the inventory yet." }));
      return;
    }
    const labelled = count <= LABELLED_NODES;
    const byPool = new Map();
    for (let i = 0; i < count; i++) {
      if (!byPool.has(n.pool[i])) byPool.set(n.pool[i], []);
      byPool.get(n.pool[i]).push(i);
    }
    const groups = [];
    for (const [pool, indexes] of byPool) {
      const cells = indexes.map((i) => {
        const load = Math.max(n.cpu[i], n.memory[i]);
        const devices = (n.devices && n.devices[i]) || "";
        const over = Boolean(n.overcommitted && n.overcommitted[i]);
        const zone = n.zone && n.zone[i] ? ` · zone ${n.zone[i]}` : "";
        const title = `${n.name[i]} (${n.ip[i]})${zone} · CPU ${pct(n.cpu[i])} · memory ${pct(n.memory[i])} · disk ${pct(n.disk[i])} · ${n.vms[i]}/${n.max_vms[i]} VMs${devices ? " · " + devices : ""}${n.cordoned[i] ? " · cordoned" : ""}${over ? " · overcommitted (takes nothing until it fits)" : ""}`;
        const cls = `node u${level(load)}${n.cordoned[i] ? " cordoned" : ""}${over ? " overcommitted" : ""}${labelled ? " labelled" : ""}`;
        if (!labelled) return el("span", { class: cls, title, "data-node": n.name[i] });
        return el("div", { class: cls, title, "data-node": n.name[i] },
          el("div", { class: "node-name", text: n.name[i] }),
          el("div", { class: "node-bars" },
            el("span", { class: "mini", title: `CPU ${pct(n.cpu[i])}` },
              el("span", { style: `width:${(n.cpu[i] * 100).toFixed(1)}%` })),
            el("span", { class: "mini", title: `memory ${pct(n.memory[i])}` },
              el("span", { style: `width:${(n.memory[i] * 100).toFixed(1)}%` }))),
          el("div", { class: "node-figures", text: `CPU ${pct(n.cpu[i])} · mem ${pct(n.memory[i])}` }),
          el("div", { class: "node-figures", text: `${n.vms[i]} / ${n.max_vms[i]} VMs${n.cordoned[i] ? " · cordoned" : ""}${over ? " · overcommitted" : ""}` }),
          devices ? el("div", { class: "node-figures node-devices", text: devices }) : null);
      });
      groups.push(el("div", { class: "node-pool" },
        el("div", { class: "node-pool-name", text: `${pool} (${num(indexes.length)})` }),
        el("div", { class: labelled ? "grid labelled" : count > 3000 ? "grid dense tiny" : "grid dense" }, ...cells)));
    }
    $("nodes").replaceChildren(...groups);
  }

  function renderPlacements(s) {
    const rows = s.recent_placements.map((t) => el("tr", { "data-task": t.task_id },
      el("td", { class: "mono", text: t.task_id }),
      el("td", {}, el("strong", { text: t.node || "" }), el("span", { class: "muted", text: t.node_ip ? ` ${t.node_ip}` : "" })),
      el("td", { class: "muted", text: t.requested_cpu !== null ? `${t.requested_cpu} vCPU · ${mib(t.requested_memory || 0)}` : "" }),
      el("td", { text: t.strategy || "" }),
      el("td", { class: "muted when", text: ago(t.updated_at) })));
    fillTable("placements", ["task", "node", "size", "strategy", "when"], rows, "No placements yet.");
  }

  function whyNotLink(taskId) {
    const link = el("a", { href: "#why-not", class: "why-not", "data-why-not": taskId, text: "why not" });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      showWhyNot(taskId);
    });
    return link;
  }

  // "Why not": the task's request planned now (GET /tasks/{id}/plan), each filter with its count
  // and example nodes. Computed on demand from the committed state; nothing is reserved.
  async function showWhyNot(taskId) {
    const panel = $("why-not-panel");
    const body = $("why-not");
    panel.hidden = false;
    $("why-not-task").textContent = taskId;
    body.replaceChildren(el("p", { class: "muted", text: "planning…" }));
    try {
      const current = token() || entered;
      const headers = current ? { Authorization: `Bearer ${current}` } : {};
      const response = await fetch(`/tasks/${encodeURIComponent(taskId)}/plan`, { cache: "no-store", headers });
      const answer = await response.json();
      if (!response.ok) {
        body.replaceChildren(el("p", { class: "message", text: answer.detail || `HTTP ${response.status}` }));
        return;
      }
      const parts = [
        el("p", { class: "plan-verdict", text: answer.node
          ? `Now it would go to ${answer.node} (strategy ${answer.strategy}).`
          : `Now it would still not be placed: ${answer.reason}.` }),
        el("p", { class: "message", text: answer.message }),
      ];
      const filters = Object.entries(answer.rejections).sort((a, b) => b[1] - a[1]);
      if (filters.length) {
        parts.push(el("ul", { class: "plan-filters" }, ...filters.map(([label, count]) =>
          el("li", { "data-filter": label }, el("strong", { text: `${count} ${label}` }),
            el("ul", {}, ...(answer.examples[label] || []).map((text) => el("li", { class: "mono", text })))))));
      }
      parts.push(el("p", { class: "muted", text: `revision ${answer.revision}` }));
      body.replaceChildren(...parts);
    } catch (err) {
      body.replaceChildren(el("p", { class: "message", text: `cannot plan: ${err.message}` }));
    }
  }

  function renderFailures(s) {
    const rows = s.recent_failures.map((t) => el("tr", { "data-task": t.task_id },
      el("td", { class: "mono", text: t.task_id }),
      el("td", {}, el("span", { class: "reason", text: t.reason || "failed" })),
      el("td", { class: "message", text: t.message || "" }),
      el("td", {}, whyNotLink(t.task_id)),
      el("td", { class: "muted when", text: ago(t.updated_at) })));
    fillTable("failures", ["task", "reason", "why", "", "when"], rows, "No failures.");
    const waiting = s.waiting.map((t) => el("tr", { "data-task": t.task_id },
      el("td", { class: "mono", text: t.task_id }),
      el("td", { class: "message", text: t.message || "" }),
      el("td", { class: "muted when", text: ago(t.updated_at) })));
    $("waiting-panel").hidden = waiting.length === 0;
    fillTable("waiting", ["task", "why", "when"], waiting, "");
  }

  function fillTable(id, headings, rows, emptyText) {
    const head = el("thead", {}, el("tr", {}, ...headings.map((h) => el("th", { text: h }))));
    const body = rows.length ? el("tbody", {}, ...rows)
      : el("tbody", {}, el("tr", {}, el("td", { class: "empty", colspan: headings.length, text: emptyText })));
    $(id).replaceChildren(head, body);
  }

  async function refresh() {
    clearTimeout(timer);
    let again = true;
    try {
      const current = token() || entered;
      const headers = current ? { Authorization: `Bearer ${current}` } : {};
      const response = await fetch("/api/summary", { cache: "no-store", headers });
      if (response.status === 401 || response.status === 403) {
        // Refused: forget the token and ask (once; nothing polls until a token is entered).
        try { sessionStorage.removeItem(TOKEN_KEY); } catch (err) { /* nothing kept */ }
        entered = null;
        again = false;
        askForToken(current
          ? (response.status === 403 ? "That token may not read the dashboard." : "That token was refused.")
          : "This scheduler needs a token with the read role.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const s = await response.json();
      renderLeader(s);
      renderStats(s);
      renderPools(s);
      renderNodes(s);
      renderPlacements(s);
      renderFailures(s);
      document.body.dataset.loaded = "true";
    } catch (err) {
      const status = $("status");
      status.className = "status bad";
      status.textContent = `cannot reach the scheduler (${err.message}); retrying…`;
    } finally {
      if (again) timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  $("token-form").addEventListener("submit", tokenEntered);
  refresh();
})();
