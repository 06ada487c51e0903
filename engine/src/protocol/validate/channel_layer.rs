//! Checks `[channel_layer]`: group and room patterns that share their parameters, and event
//! types that name declared server messages.

use std::collections::{BTreeSet, HashMap};

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::{Names, Validator};
use crate::channel_layer::{valid_group_piece, EventBody, GroupMap, Pattern};

impl Validator {
    pub(super) fn channel_layer(
        &mut self,
        raw: &RawChannelLayer,
        names: &Names,
    ) -> ChannelLayerSpec {
        self.about("`[channel_layer]`", &raw.about);
        let groups = raw
            .groups
            .iter()
            .filter_map(|g| self.group_map(g))
            .collect();
        let mut events = HashMap::new();
        for (ty, e) in &raw.events {
            if ty.get_ref().is_empty() {
                self.err(
                    Diagnostic::new(Code::BadChannelLayer, "an empty event type")
                        .label(ty.span(), "empty")
                        .help("name the event's `type` as the backend's `group_send` writes it, e.g. \"booking.status\""),
                );
                continue;
            }
            let send = self.message_ref(&e.send, names, Direction::Server);
            let body = match &e.from {
                None => EventBody::Fields,
                Some(f) if !f.get_ref().is_empty() => EventBody::Field(f.get_ref().clone()),
                Some(f) => {
                    self.err(
                        Diagnostic::new(Code::BadChannelLayer, "`from` names no field")
                            .label(f.span(), "empty")
                            .help("name the event field that holds the whole message, or remove `from` to use the event's own fields"),
                    );
                    continue;
                }
            };
            if let Some(send) = send {
                events.insert(ty.get_ref().clone(), EventMap { send, body });
            }
        }
        if raw.groups.is_empty() || raw.events.is_empty() {
            self.err(
                Diagnostic::new(Code::BadChannelLayer, "`[channel_layer]` maps nothing")
                    .label(raw.about.span(), "in this section")
                    .help("declare at least one `[[channel_layer.groups]]` and one `[channel_layer.events.\"<type>\"]`"),
            );
        }
        ChannelLayerSpec { groups, events }
    }

    fn group_map(&mut self, g: &RawGroupMap) -> Option<GroupMap> {
        let group = self.pattern(&g.group)?;
        let room = self.pattern(&g.room)?;
        if let Some(bad) = group.literals().find(|t| !valid_group_piece(t)) {
            self.err(
                Diagnostic::new(
                    Code::BadChannelLayer,
                    format!("`{bad}` cannot be part of a Django group name"),
                )
                .label(g.group.span(), "invalid group name")
                .help("group names use ASCII letters, digits, `-`, `_` and `.` only"),
            );
            return None;
        }
        let in_group: BTreeSet<&str> = group.params().collect();
        let in_room: BTreeSet<&str> = room.params().collect();
        if in_group != in_room {
            self.err(
                Diagnostic::new(
                    Code::BadChannelLayer,
                    "the group and the room must have the same parameters",
                )
                .label(g.group.span(), format!("{in_group:?}"))
                .label(g.room.span(), format!("{in_room:?}"))
                .help("each parameter carries a value from one name to the other, e.g. group \"booking_{id}\" and room \"booking:{id}\""),
            );
            return None;
        }
        Some(GroupMap { group, room })
    }

    fn pattern(&mut self, s: &S<String>) -> Option<Pattern> {
        match Pattern::parse(s.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(
                    Diagnostic::new(Code::BadChannelLayer, format!("bad pattern: {e}"))
                        .label(s.span(), "here")
                        .help(
                            "literal text and `{name}` parameters, e.g. \"booking_{booking_id}\"",
                        ),
                );
                None
            }
        }
    }
}
