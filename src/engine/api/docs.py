"""A self-contained API reference page rendered from /openapi.json.

FastAPI's bundled Swagger UI and ReDoc pages load their JavaScript from a CDN; this page needs
nothing beyond the API itself, so it works on air-gapped deployments.
"""

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Streaming decision engine - API</title>
<style>
 body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
 h1{font-size:1.5rem}
 .op{border:1px solid #ddd;border-radius:6px;margin:.8rem 0;padding:.6rem .9rem}
 .m{display:inline-block;min-width:4rem;font-weight:600;color:#fff;border-radius:4px;
    padding:0 .4rem;text-align:center;margin-right:.5rem}
 .get{background:#2f7d32}.post{background:#1565c0}.put{background:#ef6c00}.delete{background:#c62828}
 code{background:#f4f4f4;padding:0 .25rem} table{border-collapse:collapse;margin-top:.4rem}
 td,th{border-bottom:1px solid #eee;padding:.15rem .6rem;text-align:left;font-size:.9rem}
</style></head>
<body><h1 id="title">API</h1><p id="desc"></p>
<p>Machine-readable document: <a href="/openapi.json"><code>/openapi.json</code></a></p>
<div id="ops">Loading...</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  document.getElementById('title').textContent = doc.info.title + ' ' + doc.info.version;
  document.getElementById('desc').textContent = doc.info.description || '';
  const ops = document.getElementById('ops'); ops.textContent = '';
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const div = document.createElement('div'); div.className = 'op';
      const head = document.createElement('div');
      const m = document.createElement('span'); m.className = 'm ' + method;
      m.textContent = method.toUpperCase();
      const p = document.createElement('code'); p.textContent = path;
      head.append(m, p, ' ' + (op.summary || '')); div.append(head);
      if (op.parameters && op.parameters.length) {
        const t = document.createElement('table');
        t.innerHTML = '<tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>';
        for (const prm of op.parameters) {
          const row = t.insertRow();
          for (const v of [prm.name, prm.in, prm.required ? 'yes' : 'no',
                           JSON.stringify(prm.schema || {})]) {
            row.insertCell().textContent = v;
          }
        }
        div.append(t);
      }
      const codes = Object.keys(op.responses || {}).join(', ');
      const r = document.createElement('div'); r.textContent = 'responses: ' + codes;
      div.append(r); ops.append(div);
    }
  }
}).catch(e => {
  document.getElementById('ops').textContent = 'Could not load /openapi.json: ' + e;
});
</script></body></html>
"""
