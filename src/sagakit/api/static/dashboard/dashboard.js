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
    // An attempt a worker has taken shows as running from the workers' heartbeats, not from
    // a transition: while one still shows as scheduled, look again each second.
    var poke = function () {
      if (!body.hasAttribute("data-follow")) return;
      if (!body.querySelector('rect.bar[data-status="scheduled"]')) return;
      clearTimeout(timer);
      timer = setTimeout(again, 1000);
    };
    var again = function () {
      refresh(body, url, function () { showLive(body, source.readyState !== 2); poke(); });
    };
    poke();
    source.addEventListener("open", function () { showLive(body, true); });
    source.addEventListener("transition", function () { clearTimeout(timer); timer = setTimeout(again, 120); });
    source.addEventListener("end", function () {
      source.close();
      clearTimeout(timer);
      body.removeAttribute("data-follow");
      refresh(body, url, function () { showLive(body, false); });
    });
  }

  // While a saga runs, its timeline keeps time: every second the bars, backoffs, ticks and
  // the "now" line are laid out again on the scale the server used (start to now), with the
  // server's clock carried forward (a browser's clock may be off).
  var STEPS = [0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  var NS = "http://www.w3.org/2000/svg";
  function keepTime(svg) {
    if (!svg.querySelector(".now") || svg.dataset.ticking) return;
    svg.dataset.ticking = "1";
    var t0 = Date.parse(svg.dataset.start), served = Date.parse(svg.dataset.now);
    var loaded = performance.now(), label = +svg.dataset.label, plot = +svg.dataset.plot;
    var label_of = function (s) {
      if (s >= 60) { var m = Math.floor(s / 60), r = Math.round(s % 60); return m + "m" + (r ? pad(r) + "s" : ""); }
      return (+s.toFixed(3)) + "s";
    };
    var timer = setInterval(function () {
      if (!svg.isConnected) { clearInterval(timer); return; }
      var now = served + (performance.now() - loaded);
      var span = Math.max((now - t0) / 1000, 0.001), scale = plot / span;
      var x = function (t) { return label + ((t - t0) / 1000) * scale; };
      svg.querySelectorAll("rect.bar").forEach(function (bar) {
        var s = Date.parse(bar.dataset.start);
        var e = bar.dataset.status === "running" ? now : Date.parse(bar.dataset.end);
        var least = bar.dataset.direction === "compensation" ? 7 : 3;
        bar.setAttribute("x", x(s).toFixed(2));
        bar.setAttribute("width", Math.max(x(e) - x(s), least).toFixed(2));
      });
      svg.querySelectorAll("line.gap").forEach(function (gap) {
        gap.setAttribute("x1", x(Date.parse(gap.dataset.from)).toFixed(2));
        gap.setAttribute("x2", x(Date.parse(gap.dataset.to)).toFixed(2));
      });
      var mark = svg.querySelector(".now");
      mark.querySelector("line").setAttribute("x1", x(now).toFixed(2));
      mark.querySelector("line").setAttribute("x2", x(now).toFixed(2));
      mark.querySelector("text").setAttribute("x", x(now).toFixed(2));
      var step = STEPS.find(function (s) { return span / s <= 8; }) || STEPS[STEPS.length - 1];
      var ticks = svg.querySelectorAll("g.tick"), height = svg.viewBox.baseVal.height;
      var count = Math.floor(span / step) + 1;
      ticks.forEach(function (t) { t.remove(); });
      var before = svg.querySelector("g.lane");
      for (var i = 0; i < count; i++) {
        var g = document.createElementNS(NS, "g"), line = document.createElementNS(NS, "line");
        var text = document.createElementNS(NS, "text"), at = label + i * step * scale;
        g.setAttribute("class", "tick");
        line.setAttribute("x1", at); line.setAttribute("x2", at);
        line.setAttribute("y1", 18); line.setAttribute("y2", height - 4);
        text.setAttribute("x", at); text.setAttribute("y", 13);
        text.textContent = "+" + label_of(i * step);
        g.appendChild(line); g.appendChild(text);
        svg.insertBefore(g, before);
      }
    }, 1000);
  }

  function enhance(root) {
    localTimes(root);
    root.querySelectorAll("svg.timeline").forEach(keepTime);
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
