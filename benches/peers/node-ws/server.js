// Booking protocol on Node's `ws`, written the way a Node team would: one process, a Map of
// rooms to Sets of sockets, JSON.stringify once per publish, ws.send per member.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const jwt = require('jsonwebtoken');

const PORT = Number(process.env.PORT || 8080);
const SECRET = process.env.BEACON_JWT_SECRET;
const API_KEY = process.env.BEACON_API_KEY || '';
const rooms = new Map();

function publish(room, message) {
  const members = rooms.get(room);
  if (!members) return 0;
  const data = JSON.stringify(message);
  for (const ws of members) ws.send(data);
  return members.size;
}

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/api/publish') {
    res.writeHead(404, { 'Content-Type': 'application/json' });
    return res.end('{"error":"not found","status":404}');
  }
  if (req.headers.authorization !== `Bearer ${API_KEY}` || !API_KEY) {
    res.writeHead(401, { 'Content-Type': 'application/json' });
    return res.end('{"error":"unauthorized","status":401}');
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body;
    try { body = JSON.parse(Buffer.concat(chunks)); } catch {
      res.writeHead(400, { 'Content-Type': 'application/json' });
      return res.end('{"error":"invalid json","status":400}');
    }
    const items = Array.isArray(body) ? body : [body];
    const results = items.map((it) => ({ room: it.room, delivered: publish(it.room, it.message) }));
    const out = Array.isArray(body)
      ? { delivered: results.reduce((a, r) => a + r.delivered, 0), results }
      : results[0];
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(out));
  });
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
const PATH = /^\/ws\/bookings\/([^/]{1,64})\/$/;

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  const m = PATH.exec(url.pathname);
  if (!m) { socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n'); return; }
  let claims = null;
  try {
    claims = jwt.verify(url.searchParams.get('token') || '', SECRET, { algorithms: ['HS256'] });
    if (claims.token_type !== 'access' || claims.user_id === undefined) claims = null;
  } catch { claims = null; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (!claims) { ws.close(4001, 'Unauthenticated'); return; }
    const bookingId = m[1];
    const room = `booking:${bookingId}`;
    let members = rooms.get(room);
    if (!members) rooms.set(room, (members = new Set()));
    members.add(ws);
    ws.send(JSON.stringify({ type: 'connection_established', booking_id: bookingId, message: 'Connected to booking updates' }));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      let msg;
      try { msg = JSON.parse(data); } catch { return ws.send('{"type":"error","code":"invalid_json","message":"message is not valid JSON"}'); }
      if (msg && msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong', t: msg.t }));
      else if (msg && msg.type === 'location_update' && typeof msg.lat === 'number' && typeof msg.lng === 'number') {
        // To the rest of the room, serialised once.
        const out = JSON.stringify({ type: 'location_update', booking_id: msg.booking_id, lat: msg.lat, lng: msg.lng, timestamp: msg.timestamp });
        for (const m of members) if (m !== ws) m.send(out);
      }
    });
    ws.on('close', () => { members.delete(ws); if (members.size === 0) rooms.delete(room); });
    ws.on('error', () => {});
  });
});

server.listen(PORT, '127.0.0.1');
