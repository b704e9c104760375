// facedex dashboard: refresh a page's live part by polling the same URL for its fragment (X-Fragment: 1).
// No framework, no CDN: the server renders every table; this only swaps the HTML in.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) return;
  var period = parseInt(live.getAttribute("data-poll") || "2000", 10);
  var busy = false;
  function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Fragment": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (resp) {
        if (resp.status === 401) { window.location.reload(); return null; }
        return resp.ok ? resp.text() : null;
      })
      .then(function (text) {
        // keep an open <details> open across refreshes
        if (text !== null && !live.querySelector("details[open]")) live.innerHTML = text;
        live.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { live.setAttribute("data-stale", "1"); })
      .finally(function () { busy = false; });
  }
  setInterval(refresh, period);
})();
