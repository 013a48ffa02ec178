// The walkthrough's dev server: `pnpm dev --host 0.0.0.0 --port 4321` runs this with those
// options, as an Astro project's dev server takes them. It answers every request with a
// small page naming where it runs, so a test can tell that the reply came from the guest.
import http from "node:http";
import os from "node:os";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: { host: { type: "string", default: "localhost" }, port: { type: "string", default: "4321" } },
  strict: false,
});
const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server.mjs: --port ${values.port} is not a port number`);
  process.exit(2);
}

const server = http.createServer((req, res) => {
  const body = `<!doctype html><title>astro-demo</title><h1>astro-demo</h1>` +
    `<p>node ${process.version} on ${os.hostname()} serving ${req.url}</p>\n`;
  res.writeHead(200, { "content-type": "text/html; charset=utf-8", "content-length": Buffer.byteLength(body) });
  res.end(body);
});
server.listen(port, values.host, () => {
  const { address, port: bound } = server.address();
  console.log(`astro-demo dev server listening on http://${address}:${bound}/`);
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)));
