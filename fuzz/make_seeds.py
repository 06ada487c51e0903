#!/usr/bin/env python3
"""Writes the committed seed corpus under fuzz/corpus/<target>/ from real inputs: the
protocol files and fixtures, upgrade requests as the seed apps' clients send them, masked and
fragmented frames, messages and publish bodies from the tests, and tokens signed with the
fuzz fixtures' keys. Rerun after changing it; the output is deterministic."""
import base64, hashlib, hmac, json, os, pathlib, struct, subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
NOW = 1_700_000_000
HS256_SECRET = b"beacon-fuzz-hs256-secret-0123456789abcdef"
RSA_PRIVATE = ROOT / "engine/src/auth/testdata/rsa_private.pem"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(header, payload, alg="HS256"):
    msg = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if alg == "HS256":
        sig = hmac.new(HS256_SECRET, msg.encode(), hashlib.sha256).digest()
    else:
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(RSA_PRIVATE)],
                             input=msg.encode(), capture_output=True, check=True).stdout
    return f"{msg}.{b64(sig)}"


ACCESS = jwt({"alg": "HS256", "typ": "JWT"},
             {"user_id": 42, "exp": NOW + 300, "token_type": "access", "role": "member"})

# protocol_loader: every protocol file the repository ships or tests.
for p in [ROOT / "protocol.toml", *sorted((ROOT / "tests/fixtures").glob("*.toml")),
          *sorted((ROOT / "tests/fixtures/invalid").glob("*.toml"))]:
    put("protocol_loader", p.name, p.read_bytes())

# upgrade_request: browser and mobile upgrades, token in query/subprotocol/header, API calls.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
def upgrade(path, extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: api.example.com\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extra}\r\n")
put("upgrade_request", "booking_query_token", upgrade(f"/ws/bookings/abc-123/?token={ACCESS}"))
put("upgrade_request", "notifications_subprotocol",
    upgrade("/ws/notifications/", f"Sec-WebSocket-Protocol: jwt, {ACCESS}\r\nOrigin: https://app.example.com\r\n"))
put("upgrade_request", "bearer_keepalive",
    upgrade("/ws/rooms/lobby/", f"Authorization: Bearer {ACCESS}\r\nConnection: keep-alive, Upgrade\r\n"))
put("upgrade_request", "percent_encoded_query", upgrade("/ws/bookings/a%2Fb/?x=1&token=a%2Bb+c&token=2"))
put("upgrade_request", "pipelined_frame", upgrade("/ws/echo/").encode() + b"\x81\x82\x00\x00\x00\x00hi")
put("upgrade_request", "publish_post",
    "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer key\r\n"
    "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
put("upgrade_request", "metrics_http10", "GET /metrics HTTP/1.0\r\n\r\n")
put("upgrade_request", "chunked", "POST /api/publish HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
put("upgrade_request", "h2c_upgrade", "GET /healthz HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n")

# frame_stream: a control byte (chunk size, hand-off bit), then client frames.
def frame(op, payload, fin=True, mask=b"\x37\xfa\x21\x3d"):
    head = bytes([(0x80 if fin else 0) | op])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
ping = json.dumps({"type": "ping"}).encode()
put("frame_stream", "ping_whole", b"\x00" + frame(1, ping))
put("frame_stream", "ping_bytewise", b"\x01" + frame(1, ping) + frame(9, b"hb") + frame(10, b""))
put("frame_stream", "fragmented_text_with_ping",
    b"\x07" + frame(1, b'{"type":"say",', fin=False) + frame(9, b"p") + frame(0, b'"text":"h\xc3\xa9"}'))
put("frame_stream", "handoff_between_messages", b"\x85" + frame(1, ping) + frame(1, ping) + frame(2, b"\x00\x01"))
put("frame_stream", "medium_16bit_length", b"\x40" + frame(1, b"x" * 300))
put("frame_stream", "close_then_more", b"\x00" + frame(8, struct.pack(">H", 1000) + b"bye") + frame(1, ping))
put("frame_stream", "unmasked_text", b"\x00\x81\x02hi")
put("frame_stream", "split_utf8", b"\x03" + frame(1, "😀é".encode(), fin=False) + frame(0, "ü".encode()))

# message: what clients send, per the seed docs and tests.
for name, m in {
    "ping": {"type": "ping"},
    "say": {"type": "say", "text": "hi all", "mood": "happy", "junk": "dropped"},
    "shout": {"type": "shout", "text": "psst", "to": 42},
    "say_bad_enum": {"type": "say", "text": "x", "mood": "angry"},
    "say_missing": {"type": "say"},
    "unknown": {"type": "nope"},
    "authenticate": {"type": "authenticate", "token": ACCESS},
}.items():
    put("message", name, json.dumps(m))
put("message", "not_object", "[1, 2.5e308, null]")
put("message", "deep_nesting", '{"type":"say","text":' + "[" * 64 + "]" * 64 + "}")

# token: HS256 as the default protocol's access token, RS256, and signed header\npayload pairs.
put("token", "hs256_access", ACCESS)
put("token", "hs256_expired", jwt({"alg": "HS256"}, {"user_id": 1, "exp": NOW - 1, "token_type": "access"}))
put("token", "rs256_sub", jwt({"alg": "RS256", "typ": "JWT"},
    {"sub": "user-9", "exp": NOW + 60, "iss": "https://issuer.example", "aud": ["beacon", "x"]}, alg="RS256"))
put("token", "alg_none", b64(b'{"alg":"none"}') + "." + b64(b'{"user_id":1}') + ".")
put("token", "signed_pair_access",
    '{"alg":"HS256","typ":"JWT"}\n{"user_id":"abc","exp":1700000300.5,"nbf":1699999999,"token_type":"access"}')
put("token", "signed_pair_crit", '{"alg":"HS256","crit":["b64"]}\n{"user_id":1,"exp":1700000300}')

# publish_body: bodies from tests/engine_core.rs and the default protocol's server messages.
for name, b in {
    "single_said": {"room": "room:a", "message": {"type": "said", "text": "n1"}},
    "batch": [{"room": "room:a", "message": {"type": "said", "text": "x"}},
              {"room": "user:7", "message": {"type": "notification", "title": "T", "message": "m",
                                               "data": {"booking_id": "b1"}}}],
    "booking_status": {"room": "booking:abc-123", "message": {"type": "booking_status",
                       "booking_id": "abc-123", "status": "on_the_way", "event_type": "booking_on_the_way"}},
    "location_update": {"room": "booking:abc-123", "message": {"type": "location_update",
                        "booking_id": "abc-123", "lat": 12.97, "lng": 77.59, "eta_minutes": 7}},
    "client_type": {"room": "room:a", "message": {"type": "ping"}},
    "no_room": {"message": {"type": "said", "text": "x"}},
}.items():
    put("publish_body", name, json.dumps(b))


def packb(v):
    """msgpack as Python's msgpack.packb writes JSON-like values (enough for the seeds)."""
    if v is None:
        return b"\xc0"
    if v is True or v is False:
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, int):
        return bytes([v]) if 0 <= v < 128 else b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        raw = v.encode()
        return (bytes([0xa0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])) + raw
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(packb(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(packb(k) + packb(x) for k, x in v.items())
    raise TypeError(v)


# channel_layer_event: group_send copies as channels_redis writes them (first byte: 0 = core
# layer with 12 random bytes, 1 = pubsub layer), for the channels of shard 0 of node "fuzz".
CH = "specific.beacon.fuzz.0!"
for name, (pick, event) in {
    "core_status": (0, {"type": "booking.status", "booking_id": "42", "status": "arrived",
                        "__asgi_channel__": [CH + "booking_42", CH + "user_7"]}),
    "core_not_ours": (0, {"type": "booking.status", "__asgi_channel__": ["specific.x!booking_1"]}),
    "core_float": (0, {"type": "notify", "payload": {"title": "t", "message": "m", "n": 1.5},
                       "__asgi_channel__": [CH + "user_7"]}),
    "pubsub_status": (1, {"type": "booking.status", "booking_id": "42", "status": "confirmed"}),
    "pubsub_unknown": (1, {"type": "chat.message", "text": "hi"}),
}.items():
    prefix = b"\x5a" * 12 if pick == 0 else b""
    put("channel_layer_event", name, bytes([pick]) + prefix + packb(event))
# broker_stream: what Redis sends a subscribed node and a publishing one (control byte first:
# the chunk size the target cuts the stream into).
def bulk(b):
    return b"$%d\r\n%s\r\n" % (len(b), b)


ENVELOPE = b"\x01\x01\x02n1\x00\x01" + (7).to_bytes(8, "big") + b'\x81\x0f{"type":"said"}'
MESSAGE = b"*3\r\n" + bulk(b"message") + bulk(b"beacon.room.room:x") + bulk(ENVELOPE)
SUBSCRIBED = b"*3\r\n" + bulk(b"subscribe") + bulk(b"beacon.room.room:x") + b":1\r\n"
put("broker_stream", "subscribe_then_message", b"\x00" + SUBSCRIBED + MESSAGE)
put("broker_stream", "message_in_7_byte_reads", b"\x07" + MESSAGE * 3)
put("broker_stream", "publish_replies", b"\x03:2\r\n:0\r\n-ERR wrong number of arguments\r\n+PONG\r\n")
put("broker_stream", "resp3_push_and_map",
    b"\x05>3\r\n" + bulk(b"smessage") + bulk(b"beacon.room.a") + bulk(b"\x01\x00\x01nx")
    + b"%1\r\n+a\r\n#t\r\n|1\r\n+k\r\n+v\r\n,1.5\r\n_\r\n")

# nats_stream: what a NATS server sends (control byte first: the chunk size).
NATS_MSG = b"MSG beacon.room.room:x 3 %d\r\n%s\r\n" % (len(ENVELOPE), ENVELOPE)
put("nats_stream", "info_pong_msg",
    b"\x00INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\nPONG\r\n" + NATS_MSG)
put("nats_stream", "msg_in_5_byte_reads", b"\x05" + NATS_MSG * 2 + b"PING\r\n")
put("nats_stream", "escaped_subject_and_reply",
    b"\x03MSG beacon.room.a%2Eb%20c 1 _INBOX.r 2\r\nhi\r\n+OK\r\n-ERR 'Stale Connection'\r\n")
# A subject with an empty room token (found by the fuzzer: it once named the room "").
put("nats_stream", "empty_room_token", b"\x03MSG beacon.room. 1 2\r\nhi\r\n")
