// Booking protocol on Bun's built-in server (uWebSockets inside), written the Bun way: topics
// via ws.subscribe and server.publish (ws.publish for a client's location_update, which skips
// the sender), which encodes a broadcast once in native code.
const jwt = require('jsonwebtoken');

const PORT = Number(process.env.PORT || 8080);
const SECRET = process.env.BEACON_JWT_SECRET;
const API_KEY = process.env.BEACON_API_KEY || '';
const PATH = /^\/ws\/bookings\/([^/]{1,64})\/$/;
const counts = new Map();

function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

const server = Bun.serve({
  port: PORT,
  hostname: '127.0.0.1',
  async fetch(req, server) {
    const url = new URL(req.url);
    const m = PATH.exec(url.pathname);
    if (m) {
      let claims = null;
      try {
        claims = jwt.verify(url.searchParams.get('token') || '', SECRET, { algorithms: ['HS256'] });
        if (claims.token_type !== 'access' || claims.user_id === undefined) claims = null;
      } catch { claims = null; }
      if (server.upgrade(req, { data: { bookingId: m[1], ok: !!claims } })) return;
      return json(400, { error: 'upgrade failed', status: 400 });
    }
    if (url.pathname === '/api/publish' && req.method === 'POST') {
      if (!API_KEY || req.headers.get('authorization') !== `Bearer ${API_KEY}`) {
        return json(401, { error: 'unauthorized', status: 401 });
      }
      let body;
      try { body = await req.json(); } catch { return json(400, { error: 'invalid json', status: 400 }); }
      const items = Array.isArray(body) ? body : [body];
      const results = items.map((it) => {
        server.publish(it.room, JSON.stringify(it.message));
        return { room: it.room, delivered: counts.get(it.room) || 0 };
      });
      return json(200, Array.isArray(body)
        ? { delivered: results.reduce((a, r) => a + r.delivered, 0), results }
        : results[0]);
    }
    return json(404, { error: 'not found', status: 404 });
  },
  websocket: {
    perMessageDeflate: false,
    open(ws) {
      if (!ws.data.ok) { ws.close(4001, 'Unauthenticated'); return; }
      const room = `booking:${ws.data.bookingId}`;
      ws.data.room = room;
      ws.subscribe(room);
      counts.set(room, (counts.get(room) || 0) + 1);
      ws.send(JSON.stringify({ type: 'connection_established', booking_id: ws.data.bookingId, message: 'Connected to booking updates' }));
    },
    message(ws, data) {
      if (typeof data !== 'string') return;
      let msg;
      try { msg = JSON.parse(data); } catch { ws.send('{"type":"error","code":"invalid_json","message":"message is not valid JSON"}'); return; }
      if (msg && msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong', t: msg.t }));
      else if (msg && msg.type === 'location_update' && typeof msg.lat === 'number' && typeof msg.lng === 'number') {
        // To the rest of the room: ws.publish skips the sender.
        ws.publish(ws.data.room, JSON.stringify({ type: 'location_update', booking_id: msg.booking_id, lat: msg.lat, lng: msg.lng, timestamp: msg.timestamp }));
      }
    },
    close(ws) {
      const room = ws.data.room;
      if (!room) return;
      const n = (counts.get(room) || 1) - 1;
      if (n === 0) counts.delete(room); else counts.set(room, n);
    },
  },
});
