// Streams an export, showing rows (CSV) or bytes (XLSX) against the total the server announces,
// then hands the file to the browser. Without JavaScript the links download directly.
document.querySelectorAll("a[data-export]").forEach((link) => {
  link.addEventListener("click", async (event) => {
    event.preventDefault();
    const status = document.getElementById("export-status");
    const bar = document.getElementById("export-progress");
    bar.hidden = false;
    status.textContent = "starting export…";
    const response = await fetch(link.href, { credentials: "same-origin" });
    if (!response.ok) { status.textContent = "export failed: " + response.status; return; }
    const total = Number(response.headers.get("x-total-count") || 0);
    const csv = (response.headers.get("content-type") || "").startsWith("text/csv");
    const reader = response.body.getReader();
    const chunks = [];
    let rows = -1, bytes = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      bytes += value.length;
      if (csv) { for (const b of value) if (b === 10) rows++; }
      const shown = csv ? Math.max(rows, 0) : null;
      bar.firstElementChild.style.width = (csv && total ? Math.min(100, 100 * shown / total) : 50) + "%";
      status.textContent = csv ? `${shown} of ${total} rows` : `${(bytes / 1024).toFixed(0)} KiB of ${total} rows`;
    }
    bar.firstElementChild.style.width = "100%";
    const name = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
    const save = document.createElement("a");
    save.href = URL.createObjectURL(new Blob(chunks, { type: response.headers.get("content-type") }));
    save.download = name ? name[1] : "customers";
    document.body.appendChild(save);
    save.click();
    status.textContent = `exported ${total} rows`;
  });
});
