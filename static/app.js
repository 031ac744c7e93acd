// litejobs dashboard: the little script it needs.
//
// An element with an id and data-refresh="N" is fetched again every N seconds
// and swapped in place, until the server sends it back without data-refresh
// (the job finished, the order completed). Forms and inputs elsewhere on the
// page are left alone, so typing is never lost.
(function () {
  "use strict";

  function schedule(element) {
    var seconds = parseFloat(element.getAttribute("data-refresh")) || 5;
    window.setTimeout(function () { refresh(element.id, seconds); }, seconds * 1000);
  }

  function refresh(id, seconds) {
    var current = document.getElementById(id);
    if (!current || !current.hasAttribute("data-refresh")) return;
    if (document.hidden) {  // a background tab waits until it is looked at again
      window.setTimeout(function () { refresh(id, seconds); }, seconds * 1000);
      return;
    }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (reply) {
        if (reply.redirected || !reply.ok) throw new Error("stop");  // logged out or gone
        return reply.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
        if (!fresh) return;
        current.replaceWith(fresh);
        if (fresh.hasAttribute("data-refresh")) schedule(fresh);
      })
      .catch(function (error) {
        if (error.message !== "stop") schedule(current);  // a network hiccup: try again
      });
  }

  document.querySelectorAll("[data-refresh][id]").forEach(schedule);

  // Buttons that need a second thought carry data-confirm="question".
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
