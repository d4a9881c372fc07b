// npcforge console: live job changes over Server-Sent Events. Plain JS, no build step.
"use strict";
(function () {
  var main = document.getElementById("main");
  var mode = main && main.getAttribute("data-live");
  if (!mode || !window.EventSource) return;
  var npc = main.getAttribute("data-npc");
  var query = "since=" + encodeURIComponent(main.getAttribute("data-since") || "");
  if (npc) query += "&npc=" + encodeURIComponent(npc);
  var url = "/console/events?" + query;
  var source = new EventSource(url);
  var live = document.getElementById("live");
  source.addEventListener("open", function () { if (live) live.hidden = false; });
  source.addEventListener("error", function () { if (live) live.hidden = true; });
  source.addEventListener("reload", function () { source.close(); window.location.reload(); });
  source.addEventListener("job", function (message) {
    var job = JSON.parse(message.data);
    if (mode === "jobs") updateRow(job);
    else if (mode === "npc") updateNpc(job);
    else if (mode === "overview") addChange(job);
  });

  function setBadge(badge, status) {
    badge.textContent = status;
    badge.className = "badge status-" + status;
  }

  function updateRow(job) {
    var table = document.getElementById("jobs");
    if (!table) return;
    var row = table.querySelector('tr[data-npc="' + job.npcId + '"]');
    if (!row) {
      if (main.getAttribute("data-first-page") !== "yes") return;
      row = newRow(job);
      var body = table.tBodies[0];
      var empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      body.insertBefore(row, body.firstChild);
    }
    setBadge(row.querySelector('[data-field="status"]'), job.status);
    row.querySelector('[data-field="attempts"]').textContent = job.attempts;
    row.querySelector('[data-field="error"]').textContent = job.status === "failed" ? (job.errorCode || "") : "";
    row.classList.add("changed");
  }

  function newRow(job) {
    var row = document.createElement("tr");
    row.setAttribute("data-npc", job.npcId);
    var name = document.createElement("td");
    var link = document.createElement("a");
    link.href = "/console/npcs/" + job.npcId;
    link.textContent = job.name;
    name.appendChild(link);
    var status = document.createElement("td");
    var badge = document.createElement("span");
    badge.setAttribute("data-field", "status");
    var error = document.createElement("code");
    error.setAttribute("data-field", "error");
    status.appendChild(badge);
    status.appendChild(document.createTextNode(" "));
    status.appendChild(error);
    var attempts = document.createElement("td");
    attempts.setAttribute("data-field", "attempts");
    row.appendChild(name);
    row.appendChild(status);
    row.appendChild(attempts);
    for (var i = 0; i < 4; i++) row.appendChild(document.createElement("td"));
    return row;
  }

  var shown = null;
  function updateNpc(job) {
    var badge = document.getElementById("job-status");
    if (badge) setBadge(badge, job.status);
    var attempts = main.querySelector('[data-field="attempts"]');
    if (attempts) attempts.textContent = job.attempts;
    var key = job.jobId + ":" + job.status;
    if (key === shown) return;
    shown = key;
    // A job ended or a new one began: fetch the page again and swap its content in place.
    fetch(window.location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("main");
        if (fresh) main.innerHTML = fresh.innerHTML;
      });
  }

  function addChange(job) {
    var list = document.getElementById("changes");
    if (!list) return;
    var placeholder = list.querySelector(".muted");
    if (placeholder) placeholder.remove();
    var item = document.createElement("li");
    var link = document.createElement("a");
    link.href = "/console/npcs/" + job.npcId;
    link.textContent = job.name;
    var badge = document.createElement("span");
    setBadge(badge, job.status);
    item.appendChild(link);
    item.appendChild(document.createTextNode(" "));
    item.appendChild(badge);
    if (job.status === "failed" && job.errorCode) {
      var code = document.createElement("code");
      code.textContent = " " + job.errorCode;
      item.appendChild(code);
    }
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 20) list.removeChild(list.lastChild);
  }
})();
