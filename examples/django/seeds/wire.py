"""How rows look on the wire: the shapes the seed docs give their clients. Used both for
answers to Beacon's forwards (what Beacon broadcasts) and for the REST API, so a message
fetched over REST after a reconnect reads exactly like the one that arrived live."""

from datetime import datetime, timezone


def iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def person(user) -> dict:
    return {"id": user.pk, "first_name": user.first_name, "last_name": user.last_name}


def chat_message(m) -> dict:
    """UmEmployed's ``message`` object (seed 002, "New Message")."""
    out = {
        "id": m.pk,
        "content": "" if m.deleted_at else m.content,
        "sender": person(m.sender),
        "timestamp": iso(m.created_at),
        "message_type": m.message_type,
    }
    if m.reply_to_id is not None:
        out["reply_to"] = m.reply_to_id
    if m.attachment_url:
        out["attachment"] = {"url": m.attachment_url, "name": m.attachment_name}
    if m.edited_at:
        out["edited_at"] = iso(m.edited_at)
    if m.deleted_at:
        out["deleted_at"] = iso(m.deleted_at)
    reactions = [{"user_id": r.user_id, "reaction": r.reaction} for r in m.reactions.all()]
    if reactions:
        out["reactions"] = reactions
    return out


def therapy_message(m) -> dict:
    """Therapy's ``message`` fields (seed 003): ids as text, as the seed sends them."""
    return {
        "message": m.message,
        "sender_id": str(m.sender_id),
        "message_id": str(m.pk),
        "timestamp": iso(m.created_at),
    }


def booking(b) -> dict:
    return {
        "id": str(b.pk),
        "owner_id": b.owner_id,
        "worker_id": b.worker_id,
        "status": b.status,
        "updated_at": iso(b.updated_at),
    }
