// Serve the demo SMART app on loopback: node tests/smart/serve.mjs [port]
// fhirclient's browser build comes from $EHRCHAIN_NODE_MODULES (scripts/test installs it).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.EHRCHAIN_NODE_MODULES
  || path.join(process.env.HOME, '.cache/ehrchain/npm/node_modules');
const files = {
  '/': ['index.html', 'text/html; charset=utf-8', here],
  '/app.js': ['app.js', 'text/javascript', here],
  '/fhir-client.js': ['fhirclient/build/fhir-client.js', 'text/javascript', modules],
};

export function serve(port = 8765) {
  const server = http.createServer((request, response) => {
    const file = files[new URL(request.url, 'http://x').pathname];
    if (!file || request.method !== 'GET') {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' });
    response.end(fs.readFileSync(path.join(file[2], file[0])));
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.argv[2] || 8765);
  await serve(port);
  console.log(`ehrchain demo app at http://127.0.0.1:${port}/`);
}
