//! Dispatched jobs: who was offered a job, who took it, and when it lapses.
//!
//! Sans-IO like the pool beside it: no runtime, no clock, no I/O. The caller passes `now_ms`
//! in and carries out the returned [`Outcome`]; the frames themselves are opaque (`F`), the
//! table only says which one goes to which room.
//!
//! # A job's life
//!
//! A job is one request from a seeker, offered to a few providers. The dispatch endpoint
//! (`POST <dispatch path>`) asks the pool's owner for the nearest matching providers, renders
//! one offer per provider and the `taken` frame once, and [creates](JobTable::create) the job
//! on the shard that owns `job:<dispatch>:<job id>` before any offer leaves: that owner's inbox
//! is FIFO, so a provider's answer always finds its job. Responses from providers' sockets hop
//! to the same owner, wherever those sockets live.
//!
//! While the job lives, each [response](JobTable::respond) is decided here:
//!
//! - the first acceptance by an offered provider wins: it is relayed to the seeker's room, and
//!   every other offered provider gets `taken`;
//! - a later acceptance is answered with `taken` to the responder and never reaches the seeker;
//! - a rejection is relayed to the seeker and leaves the job as it was, so the others can
//!   still accept;
//! - an answer from a provider the job was not offered to, or for a job that is unknown or has
//!   expired, is ignored: nobody is told anything.
//!
//! A job expires `ttl_ms` after its creation (the dispatch's `job_ttl_s`), taken or not: at
//! `now_ms == created + ttl_ms` it is already gone. Nothing is sent at expiry. Dispatching the
//! same job id again replaces the job outright (new offer list, open again, later expiry); the
//! earlier expiry then comes due and is skipped.
//!
//! # Memory
//!
//! Expiry is lazy: every call sweeps what has come due before it acts, so no timer is needed
//! and a lapsed job can never be answered. The table holds one job per live id and one queue
//! entry per creation not yet due, so it is bounded by the dispatch rate times the TTL.
//!
//! The queue is in creation order, which is expiry order only while every job on the shard has
//! the same TTL and the clock does not step back. Otherwise a job waits behind an earlier one
//! that lapses later, stays in memory, and can still be answered, past its own TTL. That is how
//! the engine behaved before this table existed and is kept as found.

use std::collections::{HashMap, VecDeque};

/// Which job: the dispatch that offered it and the id its request rendered. Owned by the
/// shard that owns `job:<dispatch>:<job id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobKey {
    /// The dispatch's index in the protocol.
    pub dispatch: usize,
    pub job: String,
}

/// What a job offers and to whom: the input to [`JobTable::create`]. Owned by the shard that
/// owns `job:<dispatch>:<job id>`.
#[derive(Debug, Clone)]
pub struct Offer<F> {
    /// Where accepted and rejected answers are relayed.
    pub seeker_room: String,
    /// (provider user id, room the offer went to), one per provider offered the job.
    pub notified: Vec<(String, String)>,
    /// The frame the other offered providers get once one accepts.
    pub taken: F,
}

/// A provider's answer to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Reject,
}

/// What to do with a provider's answer. Borrows the table until carried out.
#[derive(Debug)]
pub enum Outcome<'a, F> {
    /// The first acceptance: relay it to `seeker_room`, and send `taken` to every room in
    /// `others`.
    Won {
        seeker_room: &'a str,
        taken: &'a F,
        others: Others<'a>,
    },
    /// A rejection: relay it to `seeker_room`. The job is unchanged.
    Rejected { seeker_room: &'a str },
    /// An acceptance after the job was taken: send `taken` to the responder's own room.
    AlreadyTaken { taken: &'a F },
    /// The job exists but was not offered to this provider: ignore the answer.
    NotOffered,
    /// No such job, or it expired: ignore the answer.
    Unknown,
}

/// The rooms of every offered provider except the winner, in offer order.
#[derive(Debug, Clone)]
pub struct Others<'a> {
    notified: std::slice::Iter<'a, (String, String)>,
    winner: &'a str,
}

impl<'a> Iterator for Others<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.notified
            .by_ref()
            .find(|(provider, _)| provider != self.winner)
            .map(|(_, room)| room.as_str())
    }
}

/// One live job.
#[derive(Debug)]
struct Job<F> {
    offer: Offer<F>,
    taken_by: Option<String>,
    expires_ms: u64,
}

/// Every live job one shard owns, with their expiry queue. Owned by the shard that owns
/// `job:<dispatch>:<job id>`.
#[derive(Debug)]
pub struct JobTable<F> {
    jobs: HashMap<JobKey, Job<F>>,
    /// (expires_ms, job), in creation order; a re-dispatched job has an entry per creation.
    expiry: VecDeque<(u64, JobKey)>,
}

impl<F> Default for JobTable<F> {
    fn default() -> Self {
        JobTable {
            jobs: HashMap::new(),
            expiry: VecDeque::new(),
        }
    }
}

impl<F> JobTable<F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `key` for `ttl_ms` from `now_ms`, replacing any job with the same key.
    pub fn create(&mut self, now_ms: u64, key: JobKey, offer: Offer<F>, ttl_ms: u64) {
        self.expire(now_ms);
        let expires_ms = now_ms + ttl_ms;
        self.expiry.push_back((expires_ms, key.clone()));
        self.jobs.insert(
            key,
            Job {
                offer,
                taken_by: None,
                expires_ms,
            },
        );
    }

    /// Decides `provider`'s answer to `key` at `now_ms`.
    pub fn respond(
        &mut self,
        now_ms: u64,
        key: &JobKey,
        provider: &str,
        answer: Answer,
    ) -> Outcome<'_, F> {
        self.expire(now_ms);
        let Some(job) = self.jobs.get_mut(key) else {
            return Outcome::Unknown;
        };
        if !job.offer.notified.iter().any(|(p, _)| p == provider) {
            return Outcome::NotOffered;
        }
        match (&job.taken_by, answer) {
            (Some(_), Answer::Accept) => Outcome::AlreadyTaken {
                taken: &job.offer.taken,
            },
            (None, Answer::Accept) => {
                let winner = job.taken_by.insert(provider.to_owned());
                Outcome::Won {
                    seeker_room: &job.offer.seeker_room,
                    taken: &job.offer.taken,
                    others: Others {
                        notified: job.offer.notified.iter(),
                        winner,
                    },
                }
            }
            (_, Answer::Reject) => Outcome::Rejected {
                seeker_room: &job.offer.seeker_room,
            },
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while self.expiry.front().is_some_and(|(at, _)| *at <= now_ms) {
            let Some((at, key)) = self.expiry.pop_front() else {
                break;
            };
            // A re-dispatched job has a later expiry; only the entry that matches ends it.
            if self.jobs.get(&key).is_some_and(|j| j.expires_ms == at) {
                self.jobs.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Answer::{Accept, Reject};

    type Table = JobTable<&'static str>;

    const TTL: u64 = 1_000;

    fn key(job: &str) -> JobKey {
        JobKey {
            dispatch: 0,
            job: job.to_owned(),
        }
    }

    /// Offered to providers `p1`, `p2`, `p3`, each reached in room `r<n>`.
    fn offer() -> Offer<&'static str> {
        Offer {
            seeker_room: "seeker".to_owned(),
            notified: (1..=3)
                .map(|n| (format!("p{n}"), format!("r{n}")))
                .collect(),
            taken: "taken",
        }
    }

    /// A table holding job `j`, created at 0 with [`offer`].
    fn with_job() -> Table {
        let mut t = Table::new();
        t.create(0, key("j"), offer(), TTL);
        t
    }

    /// The outcome as owned data, so tests compare it whole.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Won(String, Vec<String>),
        Rejected(String),
        AlreadyTaken,
        NotOffered,
        Unknown,
    }

    fn seen(o: Outcome<'_, &'static str>) -> Seen {
        match o {
            Outcome::Won {
                seeker_room,
                others,
                ..
            } => Seen::Won(seeker_room.to_owned(), others.map(str::to_owned).collect()),
            Outcome::Rejected { seeker_room } => Seen::Rejected(seeker_room.to_owned()),
            Outcome::AlreadyTaken { .. } => Seen::AlreadyTaken,
            Outcome::NotOffered => Seen::NotOffered,
            Outcome::Unknown => Seen::Unknown,
        }
    }

    /// Won by the default offer's seeker, with `taken` for these rooms.
    fn won(others: &[&str]) -> Seen {
        Seen::Won(
            "seeker".to_owned(),
            others.iter().map(|r| r.to_string()).collect(),
        )
    }

    fn relayed() -> Seen {
        Seen::Rejected("seeker".to_owned())
    }

    /// Plays (now_ms, job, provider, answer, expected outcome) in order.
    fn play(t: &mut Table, steps: &[(u64, &str, &str, Answer, Seen)]) {
        for (i, (now_ms, job, provider, answer, want)) in steps.iter().enumerate() {
            let got = seen(t.respond(*now_ms, &key(job), provider, *answer));
            assert_eq!(
                &got, want,
                "step {i}: {provider} {answer:?} {job} at {now_ms}"
            );
        }
    }

    fn winner(t: &Table, job: &str) -> Option<String> {
        t.jobs[&key(job)].taken_by.clone()
    }

    #[test]
    fn first_acceptance_wins_and_the_others_are_told() {
        let mut t = with_job();
        play(&mut t, &[(10, "j", "p2", Accept, won(&["r1", "r3"]))]);
        match t.respond(11, &key("j"), "p1", Accept) {
            Outcome::AlreadyTaken { taken } => assert_eq!(*taken, "taken"),
            other => panic!("{other:?}"),
        }
        assert_eq!(winner(&t, "j").as_deref(), Some("p2"));
    }

    #[test]
    fn a_second_acceptance_is_told_taken_even_from_the_winner() {
        let mut t = with_job();
        play(
            &mut t,
            &[
                (1, "j", "p1", Accept, won(&["r2", "r3"])),
                (2, "j", "p3", Accept, Seen::AlreadyTaken),
                // As found: the winner accepting again is sent `taken` too.
                (3, "j", "p1", Accept, Seen::AlreadyTaken),
            ],
        );
        assert_eq!(winner(&t, "j").as_deref(), Some("p1"));
    }

    #[test]
    fn a_rejection_is_relayed_and_leaves_the_job_open() {
        let mut t = with_job();
        play(
            &mut t,
            &[
                (1, "j", "p1", Reject, relayed()),
                (2, "j", "p1", Reject, relayed()),
                // The provider that rejected may still take it.
                (3, "j", "p1", Accept, won(&["r2", "r3"])),
                // As found: a rejection after the job is taken still reaches the seeker.
                (4, "j", "p2", Reject, relayed()),
                (5, "j", "p1", Reject, relayed()),
            ],
        );
        assert_eq!(winner(&t, "j").as_deref(), Some("p1"));
    }

    #[test]
    fn a_provider_not_offered_the_job_cannot_answer_it() {
        let mut t = with_job();
        play(
            &mut t,
            &[
                (1, "j", "p9", Accept, Seen::NotOffered),
                (1, "j", "p9", Reject, Seen::NotOffered),
            ],
        );
        assert_eq!(winner(&t, "j"), None);
        play(
            &mut t,
            &[
                (2, "j", "p3", Accept, won(&["r1", "r2"])),
                (3, "j", "p9", Accept, Seen::NotOffered),
            ],
        );
    }

    #[test]
    fn unknown_jobs_and_other_dispatches_are_ignored() {
        let mut t = with_job();
        play(&mut t, &[(1, "k", "p1", Accept, Seen::Unknown)]);
        let other_dispatch = JobKey {
            dispatch: 1,
            job: "j".to_owned(),
        };
        assert_eq!(
            seen(t.respond(1, &other_dispatch, "p1", Accept)),
            Seen::Unknown
        );
        assert_eq!(winner(&t, "j"), None);
    }

    #[test]
    fn a_job_lives_until_just_before_its_ttl() {
        for (now, want) in [
            (TTL - 1, won(&["r2", "r3"])),
            (TTL, Seen::Unknown),
            (TTL + 1, Seen::Unknown),
        ] {
            play(&mut with_job(), &[(now, "j", "p1", Accept, want)]);
        }
        // The boundary is counted from creation, not from the epoch.
        let mut t = Table::new();
        t.create(5_000, key("j"), offer(), TTL);
        play(
            &mut t,
            &[
                (5_000 + TTL - 1, "j", "p1", Reject, relayed()),
                (5_000 + TTL, "j", "p1", Reject, Seen::Unknown),
            ],
        );
    }

    #[test]
    fn a_taken_job_expires_too() {
        let mut t = with_job();
        play(
            &mut t,
            &[
                (1, "j", "p1", Accept, won(&["r2", "r3"])),
                (TTL, "j", "p2", Accept, Seen::Unknown),
            ],
        );
        assert!(t.jobs.is_empty());
    }

    #[test]
    fn a_re_dispatch_replaces_the_job_and_extends_its_life() {
        let mut t = with_job();
        play(&mut t, &[(1, "j", "p1", Accept, won(&["r2", "r3"]))]);
        let again = Offer {
            seeker_room: "seeker2".to_owned(),
            notified: vec![("p4".to_owned(), "r4".to_owned())],
            taken: "taken2",
        };
        t.create(500, key("j"), again, TTL);
        // The first creation's expiry comes due and is skipped.
        play(&mut t, &[(TTL, "j", "p1", Accept, Seen::NotOffered)]);
        assert_eq!(t.expiry.len(), 1);
        play(
            &mut t,
            &[
                // As found: the re-dispatched job is open again, whoever took the earlier one.
                (
                    500 + TTL - 1,
                    "j",
                    "p4",
                    Accept,
                    Seen::Won("seeker2".to_owned(), vec![]),
                ),
                (500 + TTL, "j", "p4", Accept, Seen::Unknown),
            ],
        );
        assert!(t.jobs.is_empty() && t.expiry.is_empty());
    }

    #[test]
    fn a_re_dispatch_at_the_same_instant_expires_once() {
        let mut t = with_job();
        t.create(0, key("j"), offer(), TTL);
        play(
            &mut t,
            &[
                (TTL - 1, "j", "p1", Reject, relayed()),
                (TTL, "j", "p1", Reject, Seen::Unknown),
            ],
        );
        assert!(t.jobs.is_empty() && t.expiry.is_empty());
    }

    #[test]
    fn lapsed_jobs_are_dropped_so_memory_stays_bounded() {
        let mut t = Table::new();
        for round in 0..50u64 {
            for i in 0..100 {
                t.create(round * TTL, key(&format!("{round}-{i}")), offer(), TTL);
            }
            // Only this round's jobs are held; every earlier round has lapsed.
            assert_eq!((t.jobs.len(), t.expiry.len()), (100, 100));
        }
        play(&mut t, &[(50 * TTL, "x", "p1", Accept, Seen::Unknown)]);
        assert!(t.jobs.is_empty() && t.expiry.is_empty());
    }

    #[test]
    fn many_jobs_expire_in_creation_order() {
        let mut t = Table::new();
        for i in 0..10u64 {
            t.create(i * 100, key(&i.to_string()), offer(), TTL);
        }
        for i in 0..10u64 {
            // Job i lapses at i * 100 + TTL; every later one is still there.
            let job = i.to_string();
            play(
                &mut t,
                &[(i * 100 + TTL, &job, "p1", Reject, Seen::Unknown)],
            );
            let held: Vec<u64> = (0..10)
                .filter(|j| t.jobs.contains_key(&key(&j.to_string())))
                .collect();
            assert_eq!(held, (i + 1..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_short_ttl_behind_a_longer_one_outlives_itself_as_found() {
        // Creation order is expiry order only under one TTL; pinned so a fix shows up here.
        let mut t = Table::new();
        t.create(0, key("long"), offer(), 10 * TTL);
        t.create(1, key("short"), offer(), TTL);
        play(
            &mut t,
            &[(2 * TTL, "short", "p1", Accept, won(&["r2", "r3"]))],
        );
        assert_eq!(t.jobs.len(), 2);
        play(&mut t, &[(10 * TTL, "short", "p1", Accept, Seen::Unknown)]);
        assert!(t.jobs.is_empty() && t.expiry.is_empty());
    }

    mod oracle {
        //! The table against a brute-force oracle that keeps every creation and decides each
        //! answer from the whole history, under one TTL and a clock that never steps back
        //! (the case in which the table promises exact expiry).

        use proptest::prelude::*;

        use super::*;

        const JOBS: usize = 3;
        const PROVIDERS: usize = 4;

        #[derive(Debug, Clone)]
        enum Op {
            Create {
                dispatch: usize,
                job: usize,
                /// Which of the providers are offered the job.
                offered: Vec<bool>,
            },
            Respond {
                dispatch: usize,
                job: usize,
                provider: usize,
                answer: Answer,
            },
        }

        fn op() -> impl Strategy<Value = (u64, Op)> {
            let create = (
                0..2usize,
                0..JOBS,
                prop::collection::vec(any::<bool>(), PROVIDERS),
            )
                .prop_map(|(dispatch, job, offered)| Op::Create {
                    dispatch,
                    job,
                    offered,
                });
            let answer = prop_oneof![Just(Answer::Accept), Just(Answer::Reject)];
            let respond = (0..2usize, 0..JOBS, 0..PROVIDERS, answer).prop_map(
                |(dispatch, job, provider, answer)| Op::Respond {
                    dispatch,
                    job,
                    provider,
                    answer,
                },
            );
            // Steps around the TTL so boundaries are hit exactly.
            let after = prop_oneof![Just(0u64), 0..5u64, Just(TTL / 2), Just(TTL)];
            (after, prop_oneof![create, respond])
        }

        /// One creation as the oracle remembers it.
        struct Created {
            at: u64,
            key: JobKey,
            offered: Vec<usize>,
            round: usize,
        }

        /// The answer the oracle expects, from every earlier creation and acceptance.
        fn expect(
            history: &[Created],
            accepted: &[(usize, usize)],
            now: u64,
            key: &JobKey,
            provider: usize,
            answer: Answer,
        ) -> Seen {
            let Some(c) = history.iter().rev().find(|c| c.key == *key) else {
                return Seen::Unknown;
            };
            if now >= c.at + TTL {
                return Seen::Unknown;
            }
            if !c.offered.contains(&provider) {
                return Seen::NotOffered;
            }
            let taken = accepted.iter().any(|&(round, _)| round == c.round);
            match (taken, answer) {
                (true, Answer::Accept) => Seen::AlreadyTaken,
                (false, Answer::Accept) => Seen::Won(
                    format!("seeker{}", c.round),
                    c.offered
                        .iter()
                        .filter(|&&p| p != provider)
                        .map(|p| format!("r{p}"))
                        .collect(),
                ),
                (_, Answer::Reject) => Seen::Rejected(format!("seeker{}", c.round)),
            }
        }

        proptest! {
            #[test]
            fn table_agrees_with_the_oracle(ops in prop::collection::vec(op(), 1..80)) {
                let mut t = Table::new();
                let mut history: Vec<Created> = Vec::new();
                // (creation round, winning provider)
                let mut accepted: Vec<(usize, usize)> = Vec::new();
                let mut now = 0;
                for (after, op) in ops {
                    now += after;
                    match op {
                        Op::Create { dispatch, job, offered } => {
                            let key = JobKey { dispatch, job: job.to_string() };
                            let offered: Vec<usize> =
                                (0..PROVIDERS).filter(|&p| offered[p]).collect();
                            let round = history.len();
                            let offer = Offer {
                                seeker_room: format!("seeker{round}"),
                                notified: offered
                                    .iter()
                                    .map(|p| (format!("p{p}"), format!("r{p}")))
                                    .collect(),
                                taken: "taken",
                            };
                            t.create(now, key.clone(), offer, TTL);
                            history.push(Created { at: now, key, offered, round });
                        }
                        Op::Respond { dispatch, job, provider, answer } => {
                            let key = JobKey { dispatch, job: job.to_string() };
                            let want = expect(&history, &accepted, now, &key, provider, answer);
                            let got = seen(t.respond(now, &key, &format!("p{provider}"), answer));
                            if let Seen::Won(..) = got {
                                let round = history.iter().rev().find(|c| c.key == key).unwrap().round;
                                accepted.push((round, provider));
                            }
                            prop_assert_eq!(got, want);
                        }
                    }
                    // Memory: exactly the creations not yet due, and their live jobs.
                    let due = |c: &&Created| c.at + TTL > now;
                    prop_assert_eq!(t.expiry.len(), history.iter().filter(due).count());
                    let live: std::collections::HashSet<&JobKey> =
                        history.iter().filter(due).map(|c| &c.key).collect();
                    prop_assert_eq!(t.jobs.len(), live.len());
                }
            }
        }
    }
}
