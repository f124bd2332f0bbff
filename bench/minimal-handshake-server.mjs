#!/usr/bin/env node
// The floor for a Node.js NBD server's handshake rate: a hand-written server that does only what
// `nbdinfo --size` needs (greeting, STRUCTURED_REPLY, INFO/GO with NBD_INFO_EXPORT, NBD_CMD_DISC),
// no machines, no validation, no limits. Not a server to use: bench/handshake-floor.mjs runs it
// beside nbd-engine and nbdkit to show how much of the per-connection time is Node's own.
//
//   node bench/minimal-handshake-server.mjs SOCKET_PATH
import net from 'node:net';
import fs from 'node:fs';
const path = process.argv[2];
try { fs.unlinkSync(path); } catch {}
const SIZE = 16n * 1024n ** 3n;
net.createServer((s) => {
  const g = Buffer.alloc(18);
  g.write('NBDMAGIC', 0); g.writeBigUInt64BE(0x49484156454F5054n, 8); g.writeUInt16BE(3, 16);
  s.write(g);
  let buf = Buffer.alloc(0); let stage = 0;
  const reply = (opt, type, data) => {
    const h = Buffer.alloc(20 + data.length);
    h.writeBigUInt64BE(0x3e889045565a9n, 0); h.writeUInt32BE(opt, 8); h.writeUInt32BE(type >>> 0, 12); h.writeUInt32BE(data.length, 16);
    data.copy(h, 20); return h;
  };
  s.on('data', (d) => {
    buf = buf.length ? Buffer.concat([buf, d]) : d;
    for (;;) {
      if (stage === 0) { if (buf.length < 4) return; buf = buf.subarray(4); stage = 1; continue; }
      if (stage === 1) {
        if (buf.length < 16) return;
        const opt = buf.readUInt32BE(8), len = buf.readUInt32BE(12);
        if (buf.length < 16 + len) return;
        buf = buf.subarray(16 + len);
        if (opt === 8) s.write(reply(opt, 1, Buffer.alloc(0)));
        else if (opt === 6 || opt === 7) {
          const info = Buffer.alloc(12); info.writeUInt16BE(0, 0); info.writeBigUInt64BE(SIZE, 2); info.writeUInt16BE(1 | 4 | 8 | 32 | 256, 10);
          s.write(Buffer.concat([reply(opt, 3, info), reply(opt, 1, Buffer.alloc(0))]));
          if (opt === 7) stage = 2;
        } else if (opt === 2) { s.write(reply(opt, 1, Buffer.alloc(0))); s.end(); return; }
        else s.write(reply(opt, 0x80000001, Buffer.alloc(0)));
        continue;
      }
      if (buf.length < 28) return;
      const type = buf.readUInt16BE(6);
      buf = buf.subarray(28);
      if (type === 2) { s.end(); return; }
    }
  });
  s.on('error', () => {});
}).listen(path, () => process.stdout.write('ready\n'));
