// Demonstration page: write the response (from scratch or from a model draft), autosave it, submit.
// Model and labeler text is never rendered as HTML here: the server rendered it as text, and this
// script only reads/writes textarea values and textContent.
//
// What keeps a labeler's work safe:
// - Autosave: a debounced PUT to /api/tasks/{id}/draft after typing stops, and a keepalive one when
//   the tab is hidden or closed; the server keeps it per labeler and puts it back into the page on
//   reload. Nothing is kept in the browser's storage (a shared computer would show it to the next
//   person).
// - A failed submission loses nothing: it is sent with fetch, so on any error the text stays and the
//   message says what to do.
(function () {
  "use strict";
  var task = document.getElementById("demo-task");
  if (!task) return;
  var taskId = task.getAttribute("data-task");
  var form = document.getElementById("demo-form");
  var box = document.getElementById("response");
  var origin = document.getElementById("edited-from");
  var originNote = document.getElementById("origin");
  var counter = document.getElementById("counter");
  var saveStatus = document.getElementById("autosave-status");
  var errorBox = document.getElementById("submit-error");
  var submitBtn = document.getElementById("submit-btn");
  var AUTOSAVE_MS = 700;

  var sending = false, submitted = false;
  var lastSaved = box.value, lastOrigin = origin.value;  // what the server has
  var timer = null;

  function csrf() { return form.querySelector("input[name=csrf_token]").value; }
  function number(n) { return n.toLocaleString("en-US"); }
  function words(t) { var m = t.trim().match(/\S+/g); return m ? m.length : 0; }
  function showError(msg) { errorBox.textContent = msg; errorBox.hidden = !msg; }

  function updateCounter() {
    var n = box.value.length, max = box.maxLength > 0 ? box.maxLength : null;
    var text = number(n) + (n === 1 ? " character" : " characters") + " · " + number(words(box.value)) +
      (words(box.value) === 1 ? " word" : " words");
    if (max !== null && n >= max) text += " (the " + number(max) + "-character limit)";
    counter.textContent = text;
  }

  function updateOrigin() {
    // An emptied box is a fresh start: the text no longer comes from the draft.
    if (!box.value && origin.value) origin.value = "";
    originNote.textContent = origin.value ? "Edited from the model draft." : "";
    Array.prototype.forEach.call(document.querySelectorAll(".draft"), function (d) {
      d.classList.toggle("chosen", d.getAttribute("data-id") === origin.value);
    });
  }

  // ------------------------------------------------------------ autosave
  function dirty() { return box.value !== lastSaved || origin.value !== lastOrigin; }

  function save(keepalive) {
    if (submitted || !dirty()) return Promise.resolve();
    var text = box.value, from = origin.value;
    saveStatus.textContent = "Saving…";
    var req = fetch("/api/tasks/" + encodeURIComponent(taskId) + "/draft", {
      method: "PUT",
      credentials: "same-origin",
      keepalive: !!keepalive,
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify({ text: text, edited_from: from || null })
    }).then(function (r) {
      if (r.ok) {
        lastSaved = text; lastOrigin = from;
        if (!dirty()) saveStatus.textContent = "Saved " + new Date().toLocaleTimeString() + ".";
        return;
      }
      return r.json().catch(function () { return null; }).then(function (b) {
        var d = b && b.detail;
        saveStatus.textContent = "Not saved: " + (r.status === 401 || r.status === 403
          ? "you are logged out. Log in again in another tab; your text is still here."
          : (typeof d === "string" ? d : "the server answered " + r.status + "."));
      });
    }, function () {
      saveStatus.textContent = "Not saved: could not reach the server. Your text is still here; it is saved when the server answers again.";
    });
    return req;
  }

  function schedule() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(function () { timer = null; save(false); }, AUTOSAVE_MS);
  }

  function flush() {
    if (timer) { clearTimeout(timer); timer = null; }
    if (dirty()) save(true);
  }

  box.addEventListener("input", function () { showError(""); updateCounter(); updateOrigin(); schedule(); });
  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "hidden") flush(); });
  window.addEventListener("pagehide", flush);
  window.addEventListener("beforeunload", flush);

  // ------------------------------------------------------------ drafts
  Array.prototype.forEach.call(document.querySelectorAll("button.start-from"), function (b) {
    b.addEventListener("click", function () {
      var card = b.closest(".draft");
      var text = card.querySelector(".draft-text").textContent;
      if (box.value.trim() && box.value !== text &&
          !window.confirm("Replace what you have written with this draft?")) return;
      box.value = text;
      origin.value = b.getAttribute("data-id");
      updateCounter(); updateOrigin(); schedule();
      box.focus();
    });
  });

  // ------------------------------------------------------------ submit
  function explain(status, body) {
    var d = body && body.detail;
    if (status === 401 || (status === 403 && /CSRF/.test(String(d)))) {
      return "You are logged out (the session ended or changed). Log in again in another tab and reload this page: " +
        "your autosaved text comes back.";
    }
    if (status === 413) return "The response is too large for the server. Shorten it and submit again.";
    if (Array.isArray(d)) {
      return d.map(function (e) {
        var field = e && e.loc ? e.loc[e.loc.length - 1] : "";
        var max = e && e.ctx && e.ctx.max_length;
        if (max && field === "response") return "Response: at most " + number(max) + " characters; shorten it.";
        return (field ? field + ": " : "") + ((e && e.msg) || "not accepted") + ".";
      }).join(" ");
    }
    if (typeof d === "string" && d) {
      if (status === 404 || status === 409) return d + ". Go on to the next task from Label.";
      return d;
    }
    return "The server answered " + status + "; nothing was submitted. Your text is kept here: submit again.";
  }

  function nextTaskUrl() {
    var pid = form.querySelector("input[name=project_id]").value;
    return "/label" + (pid ? "?project_id=" + encodeURIComponent(pid) : "");
  }

  function submit() {
    if (sending) return;
    if (!box.value.trim()) {
      showError(box.value ? "The response is only whitespace: write the answer you want the model to give."
                          : "The response is empty: write the answer you want the model to give.");
      box.focus();
      return;
    }
    sending = true;
    showError("");
    submitBtn.disabled = true;
    if (timer) { clearTimeout(timer); timer = null; }
    var body = {
      response: box.value,
      edited_from: origin.value || null,
      idempotency_key: form.querySelector("input[name=idempotency_key]").value  // a retry stores it once
    };
    fetch("/api/tasks/" + encodeURIComponent(taskId) + "/demonstration", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
      body: JSON.stringify(body)
    }).then(function (r) {
      if (r.ok) { submitted = true; window.location.assign(nextTaskUrl()); return; }
      return r.json().catch(function () { return null; }).then(function (b) { fail(explain(r.status, b)); });
    }, function () {
      fail("Could not reach the server; nothing was submitted. Your text is kept here: submit again.");
    });
  }

  function fail(msg) {
    sending = false;
    submitBtn.disabled = false;
    showError(msg);
  }

  form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.repeat) { e.preventDefault(); submit(); }
  });

  updateCounter();
  updateOrigin();
})();
