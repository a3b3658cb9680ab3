// sagakit dashboard: local times, copy buttons, select-all, and live updates over
// Server-Sent Events. Plain JS, no dependencies; every page works without it (times then
// read in UTC, and a reload shows what changed).
(function () {
  "use strict";
  var pad = function (n) { return String(n).padStart(2, "0"); };

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.local) return;
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      el.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) +
        " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      el.dataset.local = "1";
    });
  }

  function openDetails(root) {
    var open = [];
    root.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
    return open;
  }

  // Replace `target`'s content with a fragment of `url`, keeping open panels open and
  // the scroll position where it was (the page keeps its height while it swaps).
  var busy = {};
  function refresh(target, url, done) {
    if (busy[url]) { busy[url] = "again"; return; }
    busy[url] = true;
    fetch(url, { headers: { "X-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        var keep = openDetails(target);
        target.style.minHeight = target.offsetHeight + "px";
        target.innerHTML = html;
        keep.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
        enhance(target);
        requestAnimationFrame(function () { target.style.minHeight = ""; });
        if (done) done();
      })
      .catch(function () {})
      .finally(function () {
        var again = busy[url] === "again";
        busy[url] = false;
        if (again) refresh(target, url, done);
      });
  }

  function showLive(root, on) {
    root.querySelectorAll("[data-live-indicator]").forEach(function (el) { el.hidden = !on; });
  }

  function followList() {
    var results = document.querySelector("[data-live-list]");
    if (!results || !window.EventSource) return;
    var source = new EventSource("/live");
    var timer = null;
    source.addEventListener("open", function () { showLive(document, true); });
    source.addEventListener("error", function () { showLive(document, false); });
    source.addEventListener("changed", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { refresh(results, location.pathname + location.search); }, 150);
    });
  }

  function followSaga() {
    var body = document.querySelector("[data-follow]");
    if (!body || !window.EventSource) return;
    var source = new EventSource(body.dataset.follow);
    var url = location.pathname;
    var timer = null;
    var again = function () { refresh(body, url, function () { showLive(body, source.readyState !== 2); }); };
    source.addEventListener("open", function () { showLive(body, true); });
    source.addEventListener("transition", function () { clearTimeout(timer); timer = setTimeout(again, 120); });
    source.addEventListener("end", function () {
      source.close();
      clearTimeout(timer);
      body.removeAttribute("data-follow");
      refresh(body, url, function () { showLive(body, false); });
    });
  }

  function enhance(root) {
    localTimes(root);
    root.querySelectorAll("[data-copy]").forEach(function (button) {
      if (button.dataset.bound) return;
      button.dataset.bound = "1";
      button.addEventListener("click", function () {
        var text = button.parentElement.querySelector("pre").textContent;
        var ok = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(ok, function () {});
        } else {
          var range = document.createRange();
          range.selectNodeContents(button.parentElement.querySelector("pre"));
          var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
          try { document.execCommand("copy"); ok(); } catch (e) {}
        }
      });
    });
    root.querySelectorAll("[data-select-all]").forEach(function (box) {
      if (box.dataset.bound) return;
      box.dataset.bound = "1";
      box.addEventListener("change", function () {
        document.querySelectorAll('input[name="saga_id"][form="' + box.dataset.selectAll + '"]')
          .forEach(function (c) { if (!c.disabled) c.checked = box.checked; });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    followList();
    followSaga();
  });
})();
