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
  if (player && player.dataset.cast && window.AsciinemaPlayer) {
    window.pamPlayer = window.AsciinemaPlayer.create(player.dataset.cast, player, {
      fit: "width",
      idleTimeLimit: 2,
      preload: true,
      controls: true,
    });
  }
});
