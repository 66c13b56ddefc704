// Richer feedback on the ranking page (issue 15 item 1): reads the widgets of templates/feedback.html
// and hands rank.js what to add to the submission, through one small interface:
//
//   window.rankloopFeedback.problem(order) -> a message naming what is missing, or null
//   window.rankloopFeedback.collect(order) -> {strength?, unsafe_ids?, ratings?}
//
// The server checks all of it again (labeling/feedback.py); this only spares a round trip. Text is
// written with textContent, never as HTML.
(function () {
  "use strict";
  // The widgets come before the submit form in the page, and this script with them: start once the
  // whole page is parsed.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();

  function init() {
  var root = document.getElementById("feedback");
  if (!root) return;
  var form = document.getElementById("submit-form");
  var scale = parseInt(root.getAttribute("data-strength-scale") || "", 10) || null;
  var unsafeBox = document.getElementById("unsafe");
  var whichUnsafe = document.getElementById("which-unsafe");

  function all(sel, within) { return Array.prototype.slice.call((within || root).querySelectorAll(sel)); }
  function strict(order) { return order.length === 2 && order[0].length === 1 && order[1].length === 1; }
  function strength() {
    var on = root.querySelector("input[name=fb-strength]:checked");
    return on ? parseInt(on.value, 10) : null;
  }

  // "Unsafe content" ticked: ask which response it is (so the trainers never prefer it); unticked:
  // the per-response boxes are cleared, so a hidden choice is never sent.
  function syncUnsafe() {
    if (!whichUnsafe || !unsafeBox) return;
    whichUnsafe.hidden = !unsafeBox.checked;
    if (!unsafeBox.checked) all("input.unsafe-id").forEach(function (b) { b.checked = false; });
  }
  if (unsafeBox) unsafeBox.addEventListener("change", syncUnsafe);

  // Enter on a radio here submits, as it does elsewhere on the page (rank.js leaves
  // keys typed into inputs alone, and these sit outside the form).
  root.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.key !== "Enter" || !t || t.tagName !== "INPUT" || t.type !== "radio" || e.repeat) return;
    e.preventDefault();
    if (form.requestSubmit) form.requestSubmit(); else form.dispatchEvent(new Event("submit", { cancelable: true }));
  });

  function problem(order) {
    if (scale && strict(order) && strength() === null) {
      var first = root.querySelector("input[name=fb-strength]");
      if (first) first.focus();
      return "How much better is the one you chose? Pick one under the choice (Tab, then the arrow keys).";
    }
    return null;
  }

  function collect(order) {
    var out = {};
    if (scale && strict(order) && strength() !== null) out.strength = strength();
    var unsafe = all("input.unsafe-id:checked").map(function (b) { return b.value; });
    if (unsafe.length) out.unsafe_ids = unsafe;
    var ratings = [];
    all("fieldset.rate").forEach(function (fs) {
      var r = { candidate_id: fs.getAttribute("data-id") };
      var score = fs.querySelector("input.score:checked");
      if (score) r.score = parseInt(score.value, 10);
      var ok = fs.querySelector("input.ok:checked");
      if (ok) r.acceptable = ok.value === "yes";
      var labels = all("input.label:checked", fs).map(function (b) { return b.value; });
      if (labels.length) r.labels = labels;
      var comment = fs.querySelector("textarea.comment");
      if (comment && comment.value.trim()) r.comment = comment.value.trim();
      if (Object.keys(r).length > 1) ratings.push(r);  // an untouched response sends nothing
    });
    if (ratings.length) out.ratings = ratings;
    return out;
  }

  syncUnsafe();
  window.rankloopFeedback = { problem: problem, collect: collect };
  }
})();
