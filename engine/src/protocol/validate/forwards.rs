//! Checks `[forwards]`: client messages handed to the app's backend, and each message's
//! `forward_to`.

use std::collections::{BTreeMap, HashMap};

use super::super::code::Code;
use super::super::diag::Diagnostic;
use super::super::model::*;
use super::super::raw::*;
use super::templates::InboundVars;
use super::{Names, Validator};

impl Validator {
    /// `has_error_reply`: the protocol declares `[errors] reply`, which an
    /// `unavailable_error` is sent as.
    pub(super) fn forwards(
        &mut self,
        raw: &BTreeMap<S<String>, RawForward>,
        names: &Names,
        has_error_reply: bool,
    ) -> (Vec<Forward>, HashMap<String, ForwardId>) {
        let mut forwards = Vec::new();
        let mut by_name = HashMap::new();
        for (name, f) in raw {
            self.ident("forward", name);
            if let Some(spec) = self.forward(name, f, names, has_error_reply) {
                by_name.insert(name.get_ref().clone(), forwards.len());
                forwards.push(spec);
            }
        }
        (forwards, by_name)
    }

    fn forward(
        &mut self,
        name: &S<String>,
        f: &RawForward,
        names: &Names,
        has_error_reply: bool,
    ) -> Option<Forward> {
        let about = self.about(&format!("forward `{}`", name.get_ref()), &f.about);
        let path = f.path.get_ref();
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            self.err(
                Diagnostic::new(Code::BadForward, format!("forward path `{path}` is not an absolute path"))
                    .label(f.path.span(), "expected /path")
                    .help("the path is appended to the deployment's backend URL, e.g. \"/internal/beacon/chat/message/\""),
            );
        }
        let timeout_ms = self.limit(&f.timeout_ms, "timeout_ms", 10, 30_000, 2000) as u64;
        let retries = self.limit(&f.retries, "retries", 0, 5, 0) as u32;
        let broadcast = f.broadcast.as_ref().and_then(|b| {
            let send = self.message_ref(&b.send, names, Direction::Server);
            // Rendered beside the sender's connection, like a message action's room; the
            // inbound message's fields are the backend's to use, so none are offered here.
            let room = b
                .room
                .as_ref()
                .map(|r| self.template(r, &[], &InboundVars::None));
            Some(ForwardBroadcast {
                send: send?,
                room: room.flatten(),
                recipients: if b.exclude_sender.as_ref().is_some_and(|e| *e.get_ref()) {
                    Recipients::ExcludeSender
                } else {
                    Recipients::Everyone
                },
            })
        });
        let reply = f
            .reply
            .as_ref()
            .and_then(|r| self.message_ref(r, names, Direction::Server));
        let unavailable = match (&f.unavailable_error, &f.unavailable_close) {
            (Some(e), Some(c)) => {
                self.err(
                    Diagnostic::new(
                        Code::BadForward,
                        "a forward fails one way: an error reply or a close, not both",
                    )
                    .label(e.span(), "error reply")
                    .label(c.span(), "close")
                    .help("keep `unavailable_error` to let the client retry on the same socket, or `unavailable_close` to close it"),
                );
                // Reported; the forward still exists, so its messages are not reported too.
                Unavailable::Error(String::new())
            }
            (_, Some(c)) => match names.closes.get(c.get_ref()) {
                Some(&id) => Unavailable::Close(id),
                None => {
                    self.err(
                        Diagnostic::new(
                            Code::UnknownClose,
                            format!("no close entry named `{}`", c.get_ref()),
                        )
                        .label(c.span(), "unknown close")
                        .help("the close used when the backend cannot take the message; declare it under [close]"),
                    );
                    Unavailable::Error(String::new())
                }
            },
            (e, None) => {
                let span = e.as_ref().map(|e| e.span()).unwrap_or(name.span());
                if !has_error_reply {
                    self.err(
                        Diagnostic::new(
                            Code::BadForward,
                            format!("forward `{}` fails with an error reply, but the protocol declares none", name.get_ref()),
                        )
                        .label(span.clone(), "sent as the protocol's error reply")
                        .help("declare `[errors] reply = \"<server message>\"`, or set `unavailable_close` to a declared close"),
                    );
                }
                let code = e
                    .as_ref()
                    .map(|e| e.get_ref().clone())
                    .unwrap_or_else(|| "backend_unavailable".to_owned());
                if code.is_empty() || code.len() > 64 {
                    self.err(
                        Diagnostic::new(Code::BadForward, "an error code is 1 to 64 bytes")
                            .label(span, "here")
                            .help("e.g. \"backend_unavailable\""),
                    );
                }
                Unavailable::Error(code)
            }
        };
        Some(Forward {
            name: name.get_ref().clone(),
            about,
            path: path.clone(),
            timeout_ms,
            retries,
            broadcast,
            reply,
            unavailable,
        })
    }

    /// A message's `forward_to`: a declared forward, on a message clients send.
    pub(super) fn forward_ref(
        &mut self,
        msg: &S<String>,
        to: &Option<S<String>>,
        direction: Direction,
        names: &Names,
    ) -> Option<ForwardId> {
        let to = to.as_ref()?;
        if !direction.inbound() {
            self.err(
                Diagnostic::new(
                    Code::BadAction,
                    format!("server message `{}` cannot be forwarded", msg.get_ref()),
                )
                .label(to.span(), "forward on a server message")
                .help("forwards hand what a client sends to the backend; set direction to \"client\" or \"both\""),
            );
        }
        match names.forwards.get(to.get_ref()) {
            Some(&id) => Some(id),
            None => {
                self.err(
                    Diagnostic::new(
                        Code::BadForward,
                        format!("no forward named `{}`", to.get_ref()),
                    )
                    .label(to.span(), "unknown forward")
                    .help(format!("declare it under `[forwards.{}]`", to.get_ref())),
                );
                None
            }
        }
    }
}
