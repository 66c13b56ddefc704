// Ranking page: drag and drop (pointer events: mouse, pen and touch), keyboard ordering, ties;
// skip (S), guidelines remembered open or closed, time in view, and the same page in edit mode
// (a correction of a submitted ranking, sent to /api/rankings/<id>/edit).
// Model text is never re-rendered here: the server rendered it as text; this script only moves
// the existing elements and writes labels and messages with textContent.
//
// Two rules keep labels honest:
// - Nothing is submitted that the labeler did not rank: the shuffled display order is sent only
//   after a warning and a second, deliberate Enter/Submit (or once every card has been placed).
// - A failed submission loses nothing: it is sent with fetch, so on any error the ordering, the
//   boxes and the rationale stay as they are, and the message says what to change.
(function () {
  "use strict";
  var task = document.getElementById("task");
  if (!task) return;
  var mode = task.getAttribute("data-mode");
  var taskId = task.getAttribute("data-task");
  var list = document.getElementById("ranking");
  var form = document.getElementById("submit-form");
  var orderField = document.getElementById("order-field");
  var status = document.getElementById("status");
  var errorBox = document.getElementById("submit-error");
  var submitBtn = document.getElementById("submit-btn");
  var allBad = document.getElementById("all-bad");
  var rationale = form.querySelector("textarea[name=rationale]");
  var counter = document.getElementById("rationale-count");
  var editId = task.getAttribute("data-edit");  // set: this page corrects ranking <editId>
  var sending = false;
  // Card n's key is KEYS[n - 1]: 1-9, 0 for the 10th, then A-F for the 11th to 16th (K <= 16).
  var KEYS = "1234567890abcdef";
  function cardOfKey(k) { var i = KEYS.indexOf(String(k).toLowerCase()); return i < 0 ? null : i + 1; }

  function cards() { return Array.prototype.slice.call(list.querySelectorAll(":scope > li.card")); }
  function byN(n) { return list.querySelector(':scope > li.card[data-n="' + n + '"]'); }
  function typing(e) { var t = e.target; return t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "checkbox")); }
  // Enter on these has its own meaning (press the button, follow the link, open the details).
  function ownsEnter(e) { return !!(e.target && e.target.closest && e.target.closest("button, a[href], summary, select")); }
  function number(n) { return n.toLocaleString("en-US"); }

  function say(msg, kind) {
    status.textContent = msg;
    status.classList.toggle("warn", kind === "warn");
  }
  function showError(msg) {
    errorBox.textContent = msg;
    errorBox.hidden = !msg;
  }

  // ------------------------------------------------------------ K-way ranking
  var picks = [];  // [{n, tied}] in keyboard pick order
  var tieNext = false;
  var arranged = false;  // the labeler moved a card or set a tie: the order on screen is theirs
  var acceptedAsShown = null;  // the order the labeler was warned about (a second submit sends it)

  function groups() {
    var out = [];
    cards().forEach(function (c, i) {
      var box = c.querySelector(".tie-box");
      if (i > 0 && box && box.checked) out[out.length - 1].push(c.getAttribute("data-id"));
      else out.push([c.getAttribute("data-id")]);
    });
    return out;
  }

  // Every card placed by the labeler: by hand, or by keyboard picks (the last one follows).
  function ranked() { return arranged || picks.length >= cards().length - 1; }

  function refresh() {
    var place = 0;
    cards().forEach(function (c, i) {
      var box = c.querySelector(".tie-box");
      if (i === 0 && box) box.checked = false;
      var tied = i > 0 && box && box.checked;
      if (!tied) place = i + 1;
      c.classList.toggle("tied", !!tied);
      var label = c.querySelector(".place");
      if (label) label.textContent = (tied ? "= " : "") + "#" + place;
    });
    if (mode === "ranking") {
      var msg = picks.length ? "Picked: " + picks.map(function (p) { return (p.tied ? "= " : "") + p.n; }).join(" ") : "";
      if (tieNext) msg += " = …";
      say(msg);
      var warned = !ranked() && acceptedAsShown === JSON.stringify(groups());
      submitBtn.textContent = warned ? "Submit the order as shown (Enter)" : "Submit (Enter)";
    }
  }

  function applyPicks() {
    var chosen = picks.map(function (p) { return byN(p.n); });
    var rest = cards().filter(function (c) { return chosen.indexOf(c) < 0; });
    chosen.concat(rest).forEach(function (c) { list.appendChild(c); });
    cards().forEach(function (c) {
      var i = chosen.indexOf(c);
      c.classList.toggle("picked", i >= 0);
      var box = c.querySelector(".tie-box");
      if (box && i >= 0) box.checked = !!picks[i].tied;
    });
    refresh();
  }

  function move(card, delta, button) {
    var all = cards(), i = all.indexOf(card), j = i + delta;
    if (j < 0 || j >= all.length) return;
    if (delta < 0) list.insertBefore(card, all[j]); else list.insertBefore(card, all[j].nextSibling);
    if (button) button.focus();  // moving the card took focus away: keep ↑/↓ pressable again
    picks = []; tieNext = false; arranged = true;
    cards().forEach(function (c) { c.classList.remove("picked"); });
    refresh();
  }

  if (mode === "ranking") {
    list.addEventListener("change", function (e) {
      if (e.target.classList.contains("tie-box")) { arranged = true; refresh(); }
    });
    list.addEventListener("click", function (e) {
      var card = e.target.closest("li.card");
      if (!card) return;
      var b = e.target.closest("button");
      if (b && b.classList.contains("up")) move(card, -1, b);
      if (b && b.classList.contains("down")) move(card, 1, b);
    });

    // Drag by the handle with pointer events (one code path for mouse and touch).
    var dragging = null, before = null;
    list.addEventListener("pointerdown", function (e) {
      var handle = e.target.closest(".handle");
      if (!handle || e.button > 0) return;
      dragging = handle.closest("li.card");
      before = JSON.stringify(groups());
      dragging.classList.add("dragging");
      try { handle.setPointerCapture(e.pointerId); } catch (err) { /* not capturable */ }
      e.preventDefault();
    });
    list.addEventListener("pointermove", function (e) {
      if (!dragging) return;
      var others = cards().filter(function (c) { return c !== dragging; });
      var next = null;
      for (var i = 0; i < others.length; i++) {
        var r = others[i].getBoundingClientRect();
        if (e.clientY < r.top + r.height / 2) { next = others[i]; break; }
      }
      if (next) list.insertBefore(dragging, next); else list.appendChild(dragging);
      refresh();
    });
    function drop() {
      if (!dragging) return;
      dragging.classList.remove("dragging");
      dragging = null;
      if (JSON.stringify(groups()) !== before) {
        arranged = true;
        picks = []; tieNext = false;
        cards().forEach(function (c) { c.classList.remove("picked"); });
      }
      refresh();
    }
    list.addEventListener("pointerup", drop);
    list.addEventListener("pointercancel", drop);
  }

  // ------------------------------------------------------------ pairwise
  // A, B or Tie is the preference; "Both are bad" is a separate box beside it (a strict preference
  // and both-bad together is a label of its own). Choosing never submits.
  var choice = null;
  function pairStatus() {
    var what = choice === "1" ? "A is better" : choice === "2" ? "B is better" : choice === "tie" ? "Tie" : "";
    if (allBad && allBad.checked) what = what ? what + " · both are bad" : "Both are bad: now choose the less bad one (or Tie)";
    say(what ? what + (choice ? ". Enter or Submit sends it." : "") : "");
  }
  function choose(what) {
    choice = what;
    Array.prototype.forEach.call(document.querySelectorAll("#choices button"), function (b) {
      var on = b.getAttribute("data-choice") === what;
      b.classList.toggle("selected", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    });
    cards().forEach(function (c) { c.classList.toggle("chosen", c.getAttribute("data-n") === what); });
    pairStatus();
  }
  function pairOrder() {
    var a = byN(1).getAttribute("data-id"), b = byN(2).getAttribute("data-id");
    if (choice === "1") return [[a], [b]];
    if (choice === "2") return [[b], [a]];
    return [[a, b]];
  }
  if (mode === "pairwise") {
    document.getElementById("choices").addEventListener("click", function (e) {
      var b = e.target.closest("button");
      if (b) choose(b.getAttribute("data-choice"));
    });
    if (allBad) allBad.addEventListener("change", pairStatus);
  }

  // ------------------------------------------------------------ rationale: the server's limit, visibly
  function rationaleLimit() { return rationale && rationale.maxLength > 0 ? rationale.maxLength : null; }
  // What the server counts: the text without its surrounding whitespace.
  function sentLength() { return rationale ? rationale.value.trim().length : 0; }
  function tooLongBy() { var max = rationaleLimit(); return max === null ? 0 : Math.max(0, sentLength() - max); }
  function updateCounter() {
    var max = rationaleLimit();
    if (!counter) return;
    if (max === null) { counter.textContent = ""; return; }
    var n = rationale.value.length, over = n - max;
    counter.classList.toggle("over", over > 0);
    if (over > 0) counter.textContent = number(n) + " characters: " + number(over) + " over the " + number(max) + "-character limit; shorten it by " + number(over) + ".";
    else if (over === 0) counter.textContent = number(max) + " characters: the limit.";
    else if (n > max * 0.9) counter.textContent = number(max - n) + " characters left.";
    else counter.textContent = "";
  }
  if (rationale) {
    rationale.addEventListener("input", updateCounter);
    // The browser cuts a paste at maxlength, silently dropping the end of the labeler's text: keep
    // it whole instead, and say how much to shorten (the submit waits until it fits).
    rationale.addEventListener("paste", function (e) {
      var max = rationaleLimit(), data = e.clipboardData && e.clipboardData.getData("text/plain");
      if (max === null || !data) return;
      var start = rationale.selectionStart, end = rationale.selectionEnd;
      if (rationale.value.length - (end - start) + data.length <= max) return;
      e.preventDefault();
      rationale.setRangeText(data, start, end, "end");
      updateCounter();
    });
  }

  // ------------------------------------------------------------ submit
  var FIELDS = { rationale: "Rationale", order: "Ranking", all_bad: "Both/all bad", unsafe: "Unsafe content",
                 strength: "How much better", score: "Quality", comment: "Comment", labels: "Labels" };

  // The server's reply in the labeler's words: never the raw validation dump, never the input.
  function explain(status, body) {
    var d = body && body.detail;
    if (status === 401 || (status === 403 && /CSRF/.test(String(d)))) {
      return "You are logged out (the session ended or changed). Log in again in another tab, then press Submit " +
        "here again: your ranking is kept.";
    }
    if (status === 413) return "The submission is too large for the server. Shorten the rationale and submit again.";
    if (Array.isArray(d)) {
      return d.map(function (e) {
        var field = e && e.loc ? e.loc[e.loc.length - 1] : "";
        var name = FIELDS[field] || String(field || "The form");
        var max = e && e.ctx && e.ctx.max_length;
        if (max && field === "rationale") {
          var n = sentLength();
          return name + ": at most " + number(max) + " characters, this one has " + number(n) +
            "; shorten it by " + number(n - max) + ".";
        }
        return name + ": " + ((e && e.msg) || "not accepted") + ".";
      }).join(" ");
    }
    if (typeof d === "string" && d) {
      if (status === 404 || status === 409) return d + ". Nothing was saved from this page; go to the next task from Label.";
      return d;
    }
    return "The server answered " + status + "; nothing was saved. Your ranking is kept here: submit again.";
  }

  function nextTaskUrl() {
    var pid = form.querySelector("input[name=project_id]").value;
    return "/label" + (pid ? "?project_id=" + encodeURIComponent(pid) : "");
  }

  // What is missing before this can be sent (null when nothing is).
  function problem() {
    if (mode === "pairwise" && choice === null) {
      return allBad && allBad.checked ? "Both are bad is ticked: still choose which is less bad (A or B), or Tie."
                                      : "Choose A, B or Tie first.";
    }
    var over = tooLongBy();
    if (over > 0) {
      return "Rationale: at most " + number(rationaleLimit()) + " characters, this one has " + number(sentLength()) +
        "; shorten it by " + number(over) + ".";
    }
    return null;
  }

  function submit() {
    if (sending) return;
    var missing = problem();
    if (missing) { showError(missing); if (tooLongBy() > 0) rationale.focus(); else say(""); return; }
    var order = mode === "pairwise" ? pairOrder() : groups();
    // Richer feedback (static/feedback.js): what it still needs, e.g. a strength for a strict choice.
    var fbMissing = window.rankloopFeedback ? window.rankloopFeedback.problem(order) : null;
    if (fbMissing) { showError(fbMissing); say(""); return; }
    if (mode === "ranking" && !ranked()) {
      var shown = JSON.stringify(order);
      if (acceptedAsShown !== shown) {
        acceptedAsShown = shown;
        refresh();
        var left = cards().length - picks.length;
        say((picks.length ? "You have ranked " + picks.length + " of " + cards().length + ": press the numbers of the other " + left +
             ", or press Enter again (or Submit) to keep them in the order shown."
                         : "These are not ranked yet: drag the cards, use ↑/↓, or press the response numbers best to worst. " +
             "If the order shown is already your ranking, press Enter again (or Submit) to send it as it is."), "warn");
        return;
      }
    }
    send(order);
  }

  // After a new login (in another tab) the session's CSRF secret is new too: read it from this
  // task's page afresh, so the work on this page can still be sent.
  var staleSession = false;
  function freshCsrf() {
    var field = form.querySelector("input[name=csrf_token]");
    if (!staleSession) return Promise.resolve(field.value);
    return fetch(window.location.pathname + window.location.search, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) return field.value;
      return r.text().then(function (html) {
        var got = new DOMParser().parseFromString(html, "text/html").querySelector("#submit-form input[name=csrf_token]");
        if (got && got.value) { field.value = got.value; staleSession = false; }
        return field.value;
      });
    });
  }

  function send(order) {
    sending = true;
    showError("");
    orderField.value = JSON.stringify(order);
    submitBtn.disabled = true;
    say("Submitting…");
    freshCsrf().then(function (csrf) { post(order, csrf); }, function () { post(order, form.querySelector("input[name=csrf_token]").value); });
  }

  function post(order, csrf) {
    var text = rationale ? rationale.value.trim() : "";
    var body = {
      order: order,
      idempotency_key: form.querySelector("input[name=idempotency_key]").value,  // a retry stores it once
      all_bad: !!(allBad && allBad.checked),
      unsafe: !!document.getElementById("unsafe").checked,
      rationale: text || null
    };
    body.active_seconds = activeSeconds();
    if (window.rankloopFeedback) {  // strength, unsafe_ids, ratings (static/feedback.js)
      var extra = window.rankloopFeedback.collect(order);
      Object.keys(extra).forEach(function (k) { body[k] = extra[k]; });
    }
    var url = editId ? "/api/rankings/" + encodeURIComponent(editId) + "/edit" : "/api/tasks/" + encodeURIComponent(taskId) + "/submit";
    fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body)
    }).then(function (r) {
      if (r.ok) { window.location.assign(editId ? "/label/recent?notice=edited" : nextTaskUrl()); return; }
      if (r.status === 401 || r.status === 403) staleSession = true;
      return r.json().catch(function () { return null; }).then(function (b) { fail(explain(r.status, b)); });
    }, function () {
      fail("Could not reach the server; nothing was saved. Your ranking is kept here: submit again.");
    });
  }

  function fail(msg) {
    sending = false;
    submitBtn.disabled = false;
    say("");
    showError(msg);
    if (tooLongBy() > 0 || /^Rationale/.test(msg)) rationale.focus();
  }

  form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });

  // ------------------------------------------------------------ keyboard
  document.addEventListener("keydown", function (e) {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    var k = e.key;
    if ((k === "s" || k === "S") && openSkip()) { e.preventDefault(); return; }
    if (k === "Enter") {
      if (ownsEnter(e)) return;  // a focused ↑/↓, choice or link does what it says
      e.preventDefault();
      if (!e.repeat) submit();  // a held key is not a second, deliberate press
      return;
    }
    if (mode === "pairwise") {
      if (k === "1" || k === "ArrowLeft") choose("1");
      else if (k === "2" || k === "ArrowRight") choose("2");
      else if (k === "t" || k === "T" || k === "=") choose("tie");
      else if ((k === "0" || k === "b" || k === "B") && allBad) { allBad.checked = !allBad.checked; pairStatus(); }
      return;
    }
    var n = k.length === 1 ? cardOfKey(k) : null;
    if (n !== null) {
      if (!byN(n) || picks.some(function (p) { return p.n === n; })) return;
      picks.push({ n: n, tied: tieNext && picks.length > 0 });
      tieNext = false;
      applyPicks();
      e.preventDefault();
    } else if (k === "=") {
      if (picks.length) { tieNext = true; refresh(); }
    } else if (k === "Backspace") {
      if (tieNext) tieNext = false; else picks.pop();
      applyPicks();
      e.preventDefault();
    } else if (k === "Escape") {
      picks = []; tieNext = false; arranged = false;
      cards().forEach(function (c) { var b = c.querySelector(".tie-box"); if (b) b.checked = false; });
      applyPicks();
    }
  });

  // ------------------------------------------------------------ skip: a plain form (see rank.html); S opens it
  var skipBox = document.getElementById("skip-box");
  function openSkip() {
    if (!skipBox || sending) return false;
    skipBox.open = true;
    document.getElementById("skip-reason").focus();
    return true;
  }

  // ------------------------------------------------------------ guidelines: open or closed, per project
  function rememberGuidelines() {
    var box = document.getElementById("guidelines");
    if (!box) return;
    var key = "rankloop.guidelines." + task.getAttribute("data-project");
    function save() {
      try { window.localStorage.setItem(key, box.open ? "open" : "closed"); } catch (err) { /* storage off */ }
    }
    try {
      if (window.localStorage.getItem(key) === "closed") box.open = false;
    } catch (err) { /* storage off (private mode, policy): the box simply starts open */ }
    box.addEventListener("toggle", save);
    // "toggle" fires in a later task: a click followed at once by a reload or a link can leave before it runs
    window.addEventListener("pagehide", save);
  }

  // ------------------------------------------------------------ time in view (sent as active_seconds)
  var activeMs = 0, shownSince = document.visibilityState === "visible" ? Date.now() : null;
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") shownSince = Date.now();
    else if (shownSince !== null) { activeMs += Date.now() - shownSince; shownSince = null; }
  });
  function activeSeconds() {
    var ms = activeMs + (shownSince !== null ? Date.now() - shownSince : 0);
    return Math.round(ms) / 1000;
  }

  // ------------------------------------------------------------ edit mode: start from the submitted ranking
  function loadSubmitted() {
    var order;
    try { order = JSON.parse(task.getAttribute("data-order") || "null"); } catch (err) { order = null; }
    if (!Array.isArray(order)) return;
    function card(id) { return cards().filter(function (c) { return c.getAttribute("data-id") === id; })[0]; }
    if (mode === "pairwise") {
      var a = byN(1).getAttribute("data-id");
      choose(order.length === 1 ? "tie" : order[0][0] === a ? "1" : "2");
      return;
    }
    order.forEach(function (group) {
      group.forEach(function (id, j) {
        var c = card(id);
        if (!c) return;
        list.appendChild(c);
        var box = c.querySelector(".tie-box");
        if (box) box.checked = j > 0;
      });
    });
    arranged = true;  // the labeler's own ranking: no "not ranked yet" warning
  }

  rememberGuidelines();
  if (editId) loadSubmitted();
  updateCounter();
  refresh();
})();
