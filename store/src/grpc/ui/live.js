// Live rows: a table body with data-stream gets server-sent events, each a row to put in place
// (or to remove, when its html is empty). The browser reconnects by itself and says where it was
// (Last-Event-ID), so no change is missed.
for (const body of document.querySelectorAll("tbody[data-stream]")) {
  if (!window.EventSource) break;
  const events = new EventSource(body.dataset.stream);
  events.addEventListener("row", (e) => {
    const { id, html } = JSON.parse(e.data);
    const holder = document.createElement("tbody");
    holder.innerHTML = html;
    const row = holder.firstElementChild;
    const old = document.getElementById(id);
    if (old && row) old.replaceWith(row);
    else if (old) old.remove();
    else if (row) body.appendChild(row);
  });
}
