//! A WebSocket connection's life after the handshake: server pings, the idle timeout, token
//! expiry and the close handshake, as a state machine with time passed in. Owned by the
//! connection's shard.
//!
//! Sans-IO in the manner of quinn-proto's `Connection`: the caller reports what happened
//! ([`Lifecycle::on_bytes`], [`Lifecycle::on_peer_close`], [`Lifecycle::begin_close`],
//! [`Lifecycle::after_flush`]), keeps one timer armed at [`Lifecycle::poll_timeout`] and calls
//! [`Lifecycle::handle_timeout`] when it fires; the returned [`Action`] says what to send or
//! that the connection is over. Frames and the outbound queue stay with the caller, which
//! shares the queue with fan-out. Nothing here reads a clock or touches a socket, so every
//! deadline is tested with made-up instants.

use std::time::{Duration, Instant};

use crate::protocol::{Limits, Rejection};

/// How long a closing connection waits for the peer's close frame.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The durations a connection lives by, in milliseconds: every connection carries a copy, and
/// three `Duration`s would be 36 bytes more per idle socket. Startup data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A ping goes out this often: a peer that vanished without a FIN stops answering and
    /// meets the idle timeout, while a quiet one answers and stays.
    pub ping_every_ms: u32,
    /// No inbound bytes for this long closes with [`Rejection::Idle`].
    pub idle_after_ms: u32,
    /// How long a closing connection waits for the peer's close frame.
    pub close_grace_ms: u32,
}

impl Timing {
    pub fn from_limits(limits: &Limits) -> Self {
        // Validation caps both at an hour, far below `u32::MAX` milliseconds.
        let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Timing {
            ping_every_ms: ms(limits.ping_interval_ms),
            idle_after_ms: ms(limits.idle_timeout_ms),
            close_grace_ms: ms(CLOSE_GRACE.as_millis() as u64),
        }
    }

    fn ping_every(&self) -> Duration {
        Duration::from_millis(self.ping_every_ms.into())
    }

    fn idle_after(&self) -> Duration {
        Duration::from_millis(self.idle_after_ms.into())
    }

    fn close_grace(&self) -> Duration {
        Duration::from_millis(self.close_grace_ms.into())
    }
}

/// What a fired timer asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a ping frame.
    Ping,
    /// Close with the protocol's code for this rejection: queue the close frame and call
    /// [`Lifecycle::begin_close`].
    Close(Rejection),
    /// The peer never answered our close within the grace period: the connection is over,
    /// with this code.
    Finish(u16),
}

/// What the caller does once its outbound queue is written out, while closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Half-close: the peer sees our close frame then EOF, and its close frame can still
    /// reach us.
    ShutdownWrite,
    /// Both close frames have crossed: the connection is over, with this code.
    Finish(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued, ours or our answer to the peer's; `code` is the one the
    /// connection ends with.
    Closing {
        code: u16,
        deadline: Instant,
        write_shut: bool,
    },
    Finished,
}

/// One connection's timers and close state. Owned by the connection's shard.
#[derive(Debug)]
pub struct Lifecycle {
    timing: Timing,
    last_rx: Instant,
    next_ping: Instant,
    /// When the token stops verifying, on the monotonic clock; `None`: never.
    expires: Option<Instant>,
    state: State,
    peer_closed: bool,
}

impl Lifecycle {
    /// A connection opened at `now`, with no token deadline yet ([`Lifecycle::set_expiry`]).
    pub fn new(timing: Timing, now: Instant) -> Self {
        Lifecycle {
            timing,
            last_rx: now,
            next_ping: now + timing.ping_every(),
            expires: None,
            state: State::Open,
            peer_closed: false,
        }
    }

    /// Sets the token deadline at admission and after an in-band refresh. `valid_until`: the
    /// unix second from which the token no longer verifies (`exp` plus its kind's leeway);
    /// `now` and `now_unix_ms` are one moment on both clocks. The deadline is kept on the
    /// monotonic clock, so the timer needs no wall-clock reading; a wall-clock step after this
    /// call is not followed.
    pub fn set_expiry(&mut self, valid_until: Option<u64>, now: Instant, now_unix_ms: u64) {
        self.expires = valid_until.and_then(|s| {
            let left = s.saturating_mul(1000).saturating_sub(now_unix_ms);
            // Beyond what an `Instant` can hold is as good as never.
            now.checked_add(Duration::from_millis(left))
        });
    }

    /// Bytes arrived at `now`. This only ever moves the idle deadline later, so a timer armed
    /// before stays correct: at worst it fires early, [`Lifecycle::handle_timeout`] finds
    /// nothing due, and the caller re-arms at [`Lifecycle::poll_timeout`]. That keeps timer
    /// work off the per-message path.
    pub fn on_bytes(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// Data messages are handled only while open: after a close frame nothing more is queued.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The peer's close frame has arrived: nothing after it is read.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The code of the close under way, if any.
    pub fn close_code(&self) -> Option<u16> {
        match self.state {
            State::Closing { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Starts closing with `code`. True when the caller must queue the close frame; false
    /// when a close is already under way, whose code stands.
    pub fn begin_close(&mut self, code: u16, now: Instant) -> bool {
        if self.state != State::Open {
            return false;
        }
        self.state = State::Closing {
            code,
            deadline: now + self.timing.close_grace(),
            write_shut: false,
        };
        true
    }

    /// The peer's close frame, with its code if it carried one. True when the caller must
    /// answer: echo the code (RFC 6455 5.5.1), or an empty close frame for none. The
    /// connection then ends with the peer's code, 1000 for none.
    pub fn on_peer_close(&mut self, code: Option<u16>, now: Instant) -> bool {
        self.peer_closed = true;
        self.begin_close(code.unwrap_or(1000), now)
    }

    /// The next instant [`Lifecycle::handle_timeout`] has something to do; `None` once the
    /// connection is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Open => {
                let idle = self.last_rx + self.timing.idle_after();
                let due = self.next_ping.min(idle);
                Some(self.expires.map_or(due, |e| due.min(e)))
            }
            State::Closing { deadline, .. } => Some(deadline),
            State::Finished => None,
        }
    }

    /// The timer fired at `now`: at most one thing to do, the most final first. A caller that
    /// then re-arms at [`Lifecycle::poll_timeout`] meets anything else due at once.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Action> {
        match self.state {
            State::Open => {
                if now >= self.last_rx + self.timing.idle_after() {
                    return Some(Action::Close(Rejection::Idle));
                }
                if self.expires.is_some_and(|e| now >= e) {
                    return Some(Action::Close(Rejection::TokenExpired));
                }
                if now >= self.next_ping {
                    // From now, not from the missed slot: a stalled shard sends one ping, not
                    // a burst.
                    self.next_ping = now + self.timing.ping_every();
                    return Some(Action::Ping);
                }
                None
            }
            State::Closing { code, deadline, .. } if now >= deadline => {
                self.state = State::Finished;
                Some(Action::Finish(code))
            }
            State::Closing { .. } | State::Finished => None,
        }
    }

    /// The caller wrote what it could; `flushed`: nothing is left queued or half-written.
    pub fn after_flush(&mut self, flushed: bool) -> Option<Flushed> {
        let State::Closing {
            code, write_shut, ..
        } = &mut self.state
        else {
            return None;
        };
        if !flushed {
            return None;
        }
        if self.peer_closed {
            let code = *code;
            self.state = State::Finished;
            return Some(Flushed::Finish(code));
        }
        if *write_shut {
            return None;
        }
        *write_shut = true;
        Some(Flushed::ShutdownWrite)
    }

    /// The socket ended (EOF or an error) before the handshake finished. Returns the code the
    /// connection ends with: the close under way, or 1006 (gone without a close frame).
    pub fn on_socket_end(&mut self) -> u16 {
        let code = self.close_code().unwrap_or(1006);
        self.state = State::Finished;
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(30);
    // Not a multiple of the ping interval, so an idle deadline and a ping are never one instant.
    const IDLE: Duration = Duration::from_secs(75);
    const MS: Duration = Duration::from_millis(1);

    fn timing() -> Timing {
        Timing {
            ping_every_ms: PING.as_millis() as u32,
            idle_after_ms: IDLE.as_millis() as u32,
            close_grace_ms: CLOSE_GRACE.as_millis() as u32,
        }
    }

    /// A connection opened at `t0`; [`UNIX_MS`] is the wall clock at `t0`.
    fn open() -> (Lifecycle, Instant) {
        let t0 = Instant::now();
        (Lifecycle::new(timing(), t0), t0)
    }

    const UNIX_MS: u64 = 1_700_000_000_250;

    #[test]
    fn pings_every_interval_while_the_peer_talks() {
        let (mut l, t0) = open();
        assert_eq!(l.poll_timeout(), Some(t0 + PING));
        assert_eq!(l.handle_timeout(t0 + PING - MS), None);
        for i in 1..=5u32 {
            let at = t0 + PING * i;
            l.on_bytes(at - Duration::from_secs(1));
            assert_eq!(l.poll_timeout(), Some(at));
            assert_eq!(l.handle_timeout(at), Some(Action::Ping));
            assert_eq!(l.handle_timeout(at), None, "one ping per slot");
        }
    }

    #[test]
    fn a_late_timer_sends_one_ping_and_counts_the_next_from_then() {
        let (mut l, t0) = open();
        let late = t0 + PING + Duration::from_secs(20);
        l.on_bytes(late);
        assert_eq!(l.handle_timeout(late), Some(Action::Ping));
        assert_eq!(l.handle_timeout(late), None);
        assert_eq!(l.poll_timeout(), Some(late + PING));
    }

    #[test]
    fn silence_closes_exactly_at_the_idle_deadline() {
        let (mut l, t0) = open();
        // The pings before it do not count as activity.
        assert_eq!(l.handle_timeout(t0 + PING), Some(Action::Ping));
        assert_eq!(l.handle_timeout(t0 + PING * 2), Some(Action::Ping));
        assert_eq!(l.poll_timeout(), Some(t0 + IDLE));
        assert_eq!(l.handle_timeout(t0 + IDLE - MS), None);
        assert_eq!(
            l.handle_timeout(t0 + IDLE),
            Some(Action::Close(Rejection::Idle))
        );
    }

    #[test]
    fn bytes_postpone_the_idle_deadline() {
        let (mut l, t0) = open();
        assert_eq!(l.handle_timeout(t0 + PING), Some(Action::Ping));
        let t1 = t0 + Duration::from_secs(45);
        l.on_bytes(t1);
        assert_eq!(l.handle_timeout(t0 + PING * 2), Some(Action::Ping));
        // A timer armed for the old idle deadline fires early and finds nothing due.
        assert_eq!(l.handle_timeout(t0 + IDLE), None);
        assert_eq!(l.poll_timeout(), Some(t0 + PING * 3));
        assert_eq!(l.handle_timeout(t0 + PING * 3), Some(Action::Ping));
        assert_eq!(l.poll_timeout(), Some(t1 + IDLE));
        assert_eq!(l.handle_timeout(t1 + IDLE - MS), None);
        assert_eq!(
            l.handle_timeout(t1 + IDLE),
            Some(Action::Close(Rejection::Idle))
        );
    }

    #[test]
    fn expiry_closes_at_the_deadline_between_pings() {
        let (mut l, t0) = open();
        // Valid until 3 s after the connection opened (wall clock 250 ms into a second).
        let valid_until = UNIX_MS / 1000 + 3;
        l.set_expiry(Some(valid_until), t0, UNIX_MS);
        let exp = t0 + Duration::from_millis(valid_until * 1000 - UNIX_MS);
        assert_eq!(exp, t0 + Duration::from_millis(2750));
        assert_eq!(l.poll_timeout(), Some(exp));
        assert_eq!(l.handle_timeout(exp - MS), None);
        assert_eq!(
            l.handle_timeout(exp),
            Some(Action::Close(Rejection::TokenExpired))
        );
    }

    #[test]
    fn expiry_takes_the_leeway_the_caller_adds() {
        // `valid_until` is exp plus leeway, the first second the verifier refuses the token.
        let (mut l, t0) = open();
        let (exp, leeway) = (UNIX_MS / 1000 + 3, 30);
        l.set_expiry(Some(exp + leeway), t0, UNIX_MS);
        let deadline = t0 + Duration::from_millis((exp + leeway) * 1000 - UNIX_MS);
        assert_eq!(
            l.handle_timeout(deadline - Duration::from_secs(leeway)),
            None
        );
        assert_eq!(
            l.handle_timeout(deadline),
            Some(Action::Close(Rejection::TokenExpired))
        );
    }

    #[test]
    fn a_token_already_past_its_deadline_closes_at_once() {
        let (mut l, t0) = open();
        l.set_expiry(Some(UNIX_MS / 1000 - 10), t0, UNIX_MS);
        assert_eq!(l.poll_timeout(), Some(t0));
        assert_eq!(
            l.handle_timeout(t0),
            Some(Action::Close(Rejection::TokenExpired))
        );
    }

    #[test]
    fn refresh_moves_the_deadline_both_ways_and_a_far_one_is_never() {
        let (mut l, t0) = open();
        l.set_expiry(Some(UNIX_MS / 1000 + 3), t0, UNIX_MS);
        // Refreshed 2 s in, to a token valid for an hour.
        let t1 = t0 + Duration::from_secs(2);
        l.set_expiry(Some(UNIX_MS / 1000 + 3600), t1, UNIX_MS + 2000);
        assert_eq!(l.handle_timeout(t0 + Duration::from_secs(10)), None);
        assert_eq!(l.poll_timeout(), Some(t0 + PING));
        // To a shorter one: the earlier deadline is what the timer must be armed at.
        l.set_expiry(Some(UNIX_MS / 1000 + 5), t1, UNIX_MS + 2000);
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_millis(4750)));
        l.set_expiry(Some(u64::MAX), t1, UNIX_MS + 2000);
        assert_eq!(l.poll_timeout(), Some(t0 + PING));
        l.set_expiry(None, t1, UNIX_MS + 2000);
        assert_eq!(l.poll_timeout(), Some(t0 + PING));
    }

    #[test]
    fn idle_wins_over_expiry_and_both_over_a_ping() {
        let (mut l, t0) = open();
        l.set_expiry(Some(UNIX_MS / 1000 + 60), t0, UNIX_MS);
        let late = t0 + IDLE + PING;
        assert_eq!(l.handle_timeout(late), Some(Action::Close(Rejection::Idle)));
        l.on_bytes(late);
        assert_eq!(
            l.handle_timeout(late),
            Some(Action::Close(Rejection::TokenExpired))
        );
    }

    #[test]
    fn close_grace_ends_a_connection_whose_peer_never_answers() {
        let (mut l, t0) = open();
        let t1 = t0 + Duration::from_secs(5);
        assert!(l.begin_close(4002, t1));
        assert!(!l.is_open());
        assert_eq!(l.close_code(), Some(4002));
        // Our close frame went out: half-close once, then wait for the peer.
        assert_eq!(l.after_flush(false), None);
        assert_eq!(l.after_flush(true), Some(Flushed::ShutdownWrite));
        assert_eq!(l.after_flush(true), None);
        // Pings, idle and expiry are over; only the grace deadline is left.
        assert_eq!(l.poll_timeout(), Some(t1 + CLOSE_GRACE));
        assert_eq!(l.handle_timeout(t1 + CLOSE_GRACE - MS), None);
        assert_eq!(
            l.handle_timeout(t1 + CLOSE_GRACE),
            Some(Action::Finish(4002))
        );
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(l.handle_timeout(t1 + CLOSE_GRACE * 2), None);
    }

    #[test]
    fn our_close_answered_by_the_peer_finishes_with_our_code() {
        let (mut l, t0) = open();
        assert!(l.begin_close(1002, t0));
        assert_eq!(l.after_flush(true), Some(Flushed::ShutdownWrite));
        assert!(
            !l.on_peer_close(Some(1002), t0 + MS),
            "no second close frame"
        );
        assert!(l.peer_closed());
        assert_eq!(l.after_flush(true), Some(Flushed::Finish(1002)));
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn peer_close_is_answered_and_finished_once_flushed() {
        let (mut l, t0) = open();
        assert!(l.on_peer_close(Some(4100), t0));
        assert!(l.peer_closed());
        assert_eq!(l.close_code(), Some(4100));
        // Until our answer is written, the connection waits for it, up to the grace period.
        assert_eq!(l.after_flush(false), None);
        assert_eq!(l.poll_timeout(), Some(t0 + CLOSE_GRACE));
        assert_eq!(l.after_flush(true), Some(Flushed::Finish(4100)));
    }

    #[test]
    fn a_peer_close_without_a_code_ends_with_1000() {
        let (mut l, t0) = open();
        assert!(l.on_peer_close(None, t0));
        assert_eq!(l.after_flush(true), Some(Flushed::Finish(1000)));
    }

    #[test]
    fn a_close_requested_while_closing_keeps_the_first_code() {
        let (mut l, t0) = open();
        assert!(l.begin_close(4008, t0));
        assert!(!l.begin_close(1001, t0 + Duration::from_secs(1)));
        assert_eq!(l.close_code(), Some(4008));
        // Nor does it extend the grace period.
        assert_eq!(l.poll_timeout(), Some(t0 + CLOSE_GRACE));
        assert!(!l.on_peer_close(Some(1000), t0 + MS));
        assert_eq!(l.after_flush(true), Some(Flushed::Finish(4008)));
    }

    #[test]
    fn a_socket_that_ends_reports_the_close_under_way_or_1006() {
        let (mut l, t0) = open();
        assert_eq!(l.on_socket_end(), 1006);
        assert_eq!(l.poll_timeout(), None);
        let mut l = Lifecycle::new(timing(), t0);
        l.begin_close(4002, t0);
        assert_eq!(l.on_socket_end(), 4002);
    }

    #[test]
    fn nothing_is_flushed_into_a_close_while_open() {
        let (mut l, _) = open();
        assert_eq!(l.after_flush(true), None);
        assert!(l.is_open());
    }
}
