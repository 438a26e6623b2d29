// dfscan review console: keyboard shortcuts only. Served by dfscan; the pages work without it.
// Item page: f / r / n / e submit the decision, j / k go to the older / newer item.
// Queue page: j / k move the selection, Enter opens it.
(function () {
  "use strict";
  function typing(event) {
    var t = event.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }
  function follow(rel) {
    var link = document.querySelector('a[rel="' + rel + '"]');
    if (link) { window.location.assign(link.href); }
  }
  var rows = [];
  var selected = -1;
  function select(index) {
    if (!rows.length) { return; }
    if (selected >= 0) { rows[selected].classList.remove("selected"); }
    selected = Math.max(0, Math.min(rows.length - 1, index));
    rows[selected].classList.add("selected");
    rows[selected].scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("DOMContentLoaded", function () {
    rows = Array.prototype.slice.call(document.querySelectorAll("table.queue tr.row"));
    if (rows.length) { select(0); }
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event)) { return; }
    var form = document.getElementById("decide");
    if (form) {
      var button = form.querySelector('button[data-key="' + event.key + '"]');
      if (button) { event.preventDefault(); form.requestSubmit(button); return; }
      if (event.key === "j") { follow("next"); return; }
      if (event.key === "k") { follow("prev"); return; }
      return;
    }
    if (rows.length) {
      if (event.key === "j") { select(selected + 1); }
      else if (event.key === "k") { select(selected - 1); }
      else if (event.key === "Enter" && selected >= 0) {
        var open = rows[selected].querySelector("a.open");
        if (open) { window.location.assign(open.href); }
      }
    }
  });
})();
