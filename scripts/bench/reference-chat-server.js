// The reference the issue compares against: the classic Socket.IO chat server (socket.io 4.8 +
// @socket.io/redis-adapter + redis@5), with the same events chat-node speaks. Installed into a
// temp dir by chat_vs_node.py; not part of connscale.
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
const io = new Server(port, { cors: { origin: "*" } });
let numUsers = 0;

(async () => {
  if (process.env.REDIS_URL) {
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on("connection", (socket) => {
    let added = false;
    socket.on("add user", (username, ack) => {
      if (added) return;
      socket.username = username; added = true; numUsers++;
      socket.emit("login", { numUsers });
      socket.broadcast.emit("user joined", { username, numUsers });
      if (typeof ack === "function") ack({ numUsers });
    });
    socket.on("new message", (data) => {
      if (data && typeof data === "object" && data.channel) {
        socket.to(data.channel).emit("new message", { username: socket.username, message: data.message, channel: data.channel });
      } else {
        socket.broadcast.emit("new message", { username: socket.username, message: data });
      }
    });
    socket.on("join-channel", (c) => { socket.join(c); socket.to(c).emit("channel notice", { channel: c, username: socket.username, action: "joined" }); });
    socket.on("disconnect", () => { if (added) { numUsers--; socket.broadcast.emit("user left", { username: socket.username, numUsers }); } });
  });
  console.log("ready");
})();
