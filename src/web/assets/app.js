// pam audit view: progressive enhancement only; every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Absolute times are rendered in UTC; add the reader's local time.
  for (const t of document.querySelectorAll("time[datetime]")) {
    const when = new Date(t.getAttribute("datetime"));
    if (Number.isNaN(when.getTime())) continue;
    const local = document.createElement("small");
    local.className = "local";
    local.textContent = when.toLocaleString();
    t.title = "local: " + when.toString();
    t.after(document.createElement("br"), local);
  }

  // Destructive forms ask once more.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  // The session recording, replayed in the page with a seekable timeline.
  const player = document.getElementById("player");
  // A search hit links here with ?t=SECONDS: the player opens at that moment.
  if (player && player.dataset.cast && window.AsciinemaPlayer) {
    const options = { fit: "width", idleTimeLimit: 2, preload: true, controls: true };
    const startAt = Number(player.dataset.startAt);
    if (player.dataset.startAt && Number.isFinite(startAt) && startAt > 0) {
      // Offsets are times in the recording: idle time is not compressed.
      delete options.idleTimeLimit;
      options.startAt = startAt;
    }
    window.pamPlayer = window.AsciinemaPlayer.create(player.dataset.cast, player, options);
    // Paused, the player shows its first frame: show the hit's moment.
    if (options.startAt) window.pamPlayer.seek(options.startAt);
  }
});
