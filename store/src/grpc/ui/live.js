// Live pages. An element with data-sections gets server-sent "section" events, each a section of
// the page rendered again (put in place by its id). A table body with data-stream gets "row"
// events: a row to put in place by its id (removed when its html is empty), or, with at "top", a
// new row on top (the events tail; with data-pausable, held while its pause button is pressed).
// The browser reconnects by itself and says where it was (Last-Event-ID), so no change is
// missed. data-live on the element says whether its stream is open.
function fromHtml(html, tag) {
  const holder = document.createElement(tag);
  holder.innerHTML = html;
  return holder.firstElementChild;
}
function follow(el, url, handlers) {
  if (!window.EventSource) return;
  const events = new EventSource(url);
  events.onopen = () => { el.dataset.live = "open"; };
  events.onerror = () => { el.dataset.live = "reconnecting"; };
  for (const [name, f] of Object.entries(handlers)) {
    events.addEventListener(name, (e) => f(JSON.parse(e.data)));
  }
  return events;
}
for (const el of document.querySelectorAll("[data-sections]")) {
  follow(el, el.dataset.sections, {
    section: ({ id, html }) => {
      const old = document.getElementById(id);
      const fresh = fromHtml(html, "div");
      if (old && fresh) old.replaceWith(fresh);
    },
  });
}
const MAX_ROWS = 500;
for (const body of document.querySelectorAll("tbody[data-stream]")) {
  const pause = body.dataset.pausable && document.getElementById(body.dataset.pausable);
  const held = [];
  const put = ({ id, html, at }) => {
    const row = fromHtml(html, "tbody");
    if (at === "top") {
      if (row) body.insertBefore(row, body.firstChild);
      while (body.rows.length > MAX_ROWS) body.lastElementChild.remove();
      return;
    }
    const old = document.getElementById(id);
    if (old && row) old.replaceWith(row);
    else if (old) old.remove();
    else if (row) body.appendChild(row);
  };
  if (pause) {
    const count = document.getElementById("paused-count");
    pause.addEventListener("click", () => {
      const paused = pause.getAttribute("aria-pressed") !== "true";
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "resume" : "pause";
      if (!paused) {
        held.splice(0).forEach(put);
        if (count) count.textContent = "";
      }
    });
  }
  follow(body, body.dataset.stream, {
    row: (data) => {
      if (pause && pause.getAttribute("aria-pressed") === "true") {
        held.push(data);
        const count = document.getElementById("paused-count");
        if (count) count.textContent = held.length + " held";
      } else {
        put(data);
      }
    },
    gone: ({ error }) => {
      const gone = document.getElementById("gone");
      if (gone) { gone.textContent = error; gone.hidden = false; }
    },
  });
}
