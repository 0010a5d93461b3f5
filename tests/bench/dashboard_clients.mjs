// Opens N dashboard-like clients on a tokengate control port: each subscribes as the
// dashboard does (every 250 ms, with lanes and model) and parses every event.
// node --experimental-websocket tests/bench/dashboard_clients.mjs ADDR TOKEN_FILE N
import { readFileSync } from "node:fs";

const [addr, tokenFile, count] = process.argv.slice(2);
const token = readFileSync(tokenFile, "utf8").trim();
let events = 0;
for (let i = 0; i < Number(count); i++) {
  const socket = new WebSocket(`ws://${addr}/?token=${token}`);
  socket.onopen = () =>
    socket.send(JSON.stringify({ id: 1, cmd: "subscribe", interval_ms: 250, engine: true }));
  socket.onmessage = (message) => {
    if (JSON.parse(message.data).event === "stats") events += 1;
  };
  socket.onerror = done; // the run ended
  socket.onclose = done;
}
function done() {
  console.error(`${events} stats events`);
  process.exit(0);
}
process.on("SIGTERM", done);
