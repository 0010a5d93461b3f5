// Opens N dashboard-like clients on a tokengate control port: each subscribes as the
// dashboard does (every 250 ms, with lanes and model) and parses every event.
// node --experimental-websocket tests/bench/dashboard_clients.mjs ADDR TOKEN_FILE N
// Prints "ready" on stderr once node has started, then tries to connect every 50 ms
// until the port answers (start it before the engine: node's own start-up, ~0.1 s of
// CPU, then falls outside the run, as a browser already open would). With N = 0 it
// only waits for SIGTERM (the harness's other arm, so both start the same process).
import { existsSync, readFileSync } from "node:fs";

const [addr, tokenFile, count] = process.argv.slice(2);
let events = 0;
let open = 0;
console.error("ready");
if (Number(count) === 0) setInterval(() => {}, 1 << 30);
for (let i = 0; i < Number(count); i++) connect();
function connect() {
  if (!existsSync(tokenFile)) return setTimeout(connect, 50);
  const token = readFileSync(tokenFile, "utf8").trim();
  const socket = new WebSocket(`ws://${addr}/?token=${token}`);
  let opened = false;
  socket.onopen = () => {
    opened = true;
    open += 1;
    socket.send(JSON.stringify({ id: 1, cmd: "subscribe", interval_ms: 250, engine: true }));
  };
  socket.onmessage = (message) => {
    if (JSON.parse(message.data).event === "stats") events += 1;
  };
  // Before it opened: the engine is not up yet, try again; after: the run ended.
  socket.onclose = () => (opened ? done() : setTimeout(connect, 50));
}
function done() {
  console.error(`${events} stats events on ${open} connections`);
  process.exit(0);
}
process.on("SIGTERM", done);
