// Ranking page: drag and drop (pointer events: mouse, pen and touch), keyboard ordering, ties.
// Model text is never re-rendered here: the server rendered it as text; this script only moves
// the existing elements and writes labels with textContent.
(function () {
  "use strict";
  var task = document.getElementById("task");
  if (!task) return;
  var mode = task.getAttribute("data-mode");
  var list = document.getElementById("ranking");
  var form = document.getElementById("submit-form");
  var orderField = document.getElementById("order-field");
  var status = document.getElementById("status");
  var allBad = document.getElementById("all-bad");
  var submitted = false;

  function cards() { return Array.prototype.slice.call(list.querySelectorAll(":scope > li.card")); }
  function byN(n) { return list.querySelector(':scope > li.card[data-n="' + n + '"]'); }
  function typing(e) { var t = e.target; return t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "checkbox")); }

  // ------------------------------------------------------------ K-way ranking
  var picks = [];  // [{n, tied}] in keyboard pick order
  var tieNext = false;

  function groups() {
    var out = [];
    cards().forEach(function (c, i) {
      var box = c.querySelector(".tie-box");
      if (i > 0 && box && box.checked) out[out.length - 1].push(c.getAttribute("data-id"));
      else out.push([c.getAttribute("data-id")]);
    });
    return out;
  }

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
      status.textContent = msg;
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

  function move(card, delta) {
    var all = cards(), i = all.indexOf(card), j = i + delta;
    if (j < 0 || j >= all.length) return;
    if (delta < 0) list.insertBefore(card, all[j]); else list.insertBefore(card, all[j].nextSibling);
    picks = []; tieNext = false;
    refresh();
  }

  if (mode === "ranking") {
    list.addEventListener("change", function (e) { if (e.target.classList.contains("tie-box")) refresh(); });
    list.addEventListener("click", function (e) {
      var card = e.target.closest("li.card");
      if (!card) return;
      if (e.target.classList.contains("up")) move(card, -1);
      if (e.target.classList.contains("down")) move(card, 1);
    });

    // Drag by the handle with pointer events (one code path for mouse and touch).
    var dragging = null;
    list.addEventListener("pointerdown", function (e) {
      var handle = e.target.closest(".handle");
      if (!handle || e.button > 0) return;
      dragging = handle.closest("li.card");
      dragging.classList.add("dragging");
      try { handle.setPointerCapture(e.pointerId); } catch (err) { /* not capturable */ }
      e.preventDefault();
    });
    list.addEventListener("pointermove", function (e) {
      if (!dragging) return;
      var others = cards().filter(function (c) { return c !== dragging; });
      var before = null;
      for (var i = 0; i < others.length; i++) {
        var r = others[i].getBoundingClientRect();
        if (e.clientY < r.top + r.height / 2) { before = others[i]; break; }
      }
      if (before) list.insertBefore(dragging, before); else list.appendChild(dragging);
      refresh();
    });
    function drop() {
      if (!dragging) return;
      dragging.classList.remove("dragging");
      dragging = null;
      picks = []; tieNext = false;
      cards().forEach(function (c) { c.classList.remove("picked"); });
      refresh();
    }
    list.addEventListener("pointerup", drop);
    list.addEventListener("pointercancel", drop);
  }

  // ------------------------------------------------------------ pairwise
  var choice = null;
  function choose(what) {
    choice = what;
    var all = cards();
    Array.prototype.forEach.call(document.querySelectorAll("#choices button"), function (b) {
      b.classList.toggle("selected", b.getAttribute("data-choice") === what);
    });
    all.forEach(function (c) { c.classList.toggle("chosen", c.getAttribute("data-n") === what); });
    if (allBad) allBad.checked = what === "bad";
    status.textContent = what === "1" ? "A is better" : what === "2" ? "B is better" : what === "tie" ? "Tie" : "Both bad";
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
      if (!b) return;
      choose(b.getAttribute("data-choice"));
      submit();
    });
  }

  // ------------------------------------------------------------ keyboard and submit
  function submit() {
    if (submitted) return;
    if (mode === "pairwise" && choice === null) { status.textContent = "Choose A, B, tie or both bad first."; return; }
    orderField.value = JSON.stringify(mode === "pairwise" ? pairOrder() : groups());
    submitted = true;
    document.getElementById("submit-btn").disabled = true;
    status.textContent = "Submitting…";
    form.submit();
  }
  form.addEventListener("submit", function (e) { e.preventDefault(); submit(); });

  document.addEventListener("keydown", function (e) {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    var k = e.key;
    if (k === "Enter") { e.preventDefault(); submit(); return; }
    if (mode === "pairwise") {
      if (k === "1" || k === "ArrowLeft") choose("1");
      else if (k === "2" || k === "ArrowRight") choose("2");
      else if (k === "t" || k === "T" || k === "=") choose("tie");
      else if (k === "0" || k === "b" || k === "B") choose("bad");
      return;
    }
    if (/^[1-9]$/.test(k)) {
      var n = parseInt(k, 10);
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
      picks = []; tieNext = false;
      cards().forEach(function (c) { var b = c.querySelector(".tie-box"); if (b) b.checked = false; });
      applyPicks();
    }
  });

  refresh();
})();
