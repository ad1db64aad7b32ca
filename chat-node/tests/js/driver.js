// A remote-controlled set of official socket.io-client instances for the Rust tests.
// Reads JSON commands on stdin, writes JSON events on stdout, one per line.
//   {"op":"connect","id":"a","url":"http://127.0.0.1:P","opts":{...}}
//   {"op":"emit","id":"a","event":"new message","args":[...],"tag":"t1"}   (tag → ack requested)
//   {"op":"close","id":"a"}
// Events out: connect (sid, transport, recovered), upgrade, disconnect (reason), connect_error,
// event (name, args; Buffers as {"$bin": base64}), ack (tag, args).
const { io } = require("socket.io-client");
const readline = require("node:readline");

const sockets = new Map();
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const enc = (v) => {
  if (Buffer.isBuffer(v) || v instanceof ArrayBuffer) return { $bin: Buffer.from(v).toString("base64") };
  if (Array.isArray(v)) return v.map(enc);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, enc(x)]));
  return v;
};
const dec = (v) => {
  if (v && typeof v === "object" && !Array.isArray(v) && typeof v.$bin === "string") return Buffer.from(v.$bin, "base64");
  if (Array.isArray(v)) return v.map(dec);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, dec(x)]));
  return v;
};

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let cmd;
  try { cmd = JSON.parse(line); } catch (e) { return out({ ev: "error", message: "bad command " + line }); }
  const s = sockets.get(cmd.id);
  if (cmd.op === "connect") {
    const sock = io(cmd.url, Object.assign({ reconnectionDelay: 100, reconnectionDelayMax: 500 }, cmd.opts || {}));
    sockets.set(cmd.id, sock);
    sock.io.on("open", () => {
      const engine = sock.io.engine;
      out({ ev: "open", id: cmd.id, transport: engine.transport.name });
      engine.once("upgrade", (t) => out({ ev: "upgrade", id: cmd.id, transport: t.name }));
    });
    sock.on("connect", () => out({ ev: "connect", id: cmd.id, sid: sock.id, transport: sock.io.engine.transport.name, recovered: sock.recovered }));
    sock.on("disconnect", (reason) => out({ ev: "disconnect", id: cmd.id, reason }));
    sock.on("connect_error", (e) => out({ ev: "connect_error", id: cmd.id, message: e.message }));
    sock.onAny((name, ...args) => out({ ev: "event", id: cmd.id, name, args: enc(args) }));
  } else if (cmd.op === "emit" && s) {
    const args = dec(cmd.args || []);
    if (cmd.tag) s.emit(cmd.event, ...args, (...ack) => out({ ev: "ack", id: cmd.id, tag: cmd.tag, args: enc(ack) }));
    else s.emit(cmd.event, ...args);
  } else if (cmd.op === "close" && s) {
    s.close();
    sockets.delete(cmd.id);
  } else {
    out({ ev: "error", message: "unknown command or socket: " + line });
  }
});
process.stdin.on("end", () => process.exit(0));
out({ ev: "ready" });
