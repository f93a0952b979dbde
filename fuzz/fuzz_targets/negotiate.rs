//! The stream negotiation machine (rookery-edge `negotiate`, RFC 6120 §4.3, §5, §6, §7)
//! fed arbitrary frames: arbitrary bytes through the real framer, with lookups answered
//! at once the way the c2s driver answers them. Besides not panicking, it must keep its
//! promises: no authentication before TLS on a plain transport, no binding before
//! authentication, only the one account whose password is known authenticates, and
//! nothing happens after the stream ended.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rookery_edge::negotiate::{Action, AuthOutcome, Credentials, Input, Negotiator, Security, Settings};
use rookery_sasl::{HashAlg, StoredCredentials, derive_credentials};
use rookery_xml::{Frame, Framer, Limits};
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

/// alice@localhost's password is "pencil"; one PBKDF2 iteration keeps runs fast.
fn alice() -> &'static [StoredCredentials] {
    static CREDS: OnceLock<Vec<StoredCredentials>> = OnceLock::new();
    CREDS.get_or_init(|| {
        HashAlg::ALL.iter().filter_map(|&alg| derive_credentials(alg, "pencil", b"fuzz-salt", 1).ok()).collect()
    })
}

struct Run {
    m: Negotiator,
    framer: Framer,
    tls: bool,
    authenticated: bool,
    ended: bool,
}

impl Run {
    /// Carries out actions as the c2s driver does; returns false once the stream ended
    /// (`ended`: the machine ended it) or the driver gave up (bytes after `<starttls/>`).
    fn act(&mut self, actions: Vec<Action>) -> bool {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            assert!(!self.ended, "action after the end: {a:?}");
            match a {
                Action::Write(bytes) => assert!(!bytes.is_empty()),
                Action::StartTls => {
                    assert!(!self.tls, "STARTTLS twice");
                    // What is still buffered in the clear goes to the machine first.
                    loop {
                        match self.framer.next_frame() {
                            Ok(Some(f)) => {
                                let acts = self.m.handle(Input::Frame(f));
                                if !acts.is_empty() {
                                    assert!(acts.iter().all(|a| matches!(a, Action::Abort(_))), "{acts:?}");
                                    self.ended = true;
                                    return false;
                                }
                            }
                            Ok(None) => break,
                            Err(_) => return false,
                        }
                    }
                    if self.framer.buffered_len() > 0 {
                        return false;
                    }
                    self.framer.restart();
                    self.tls = true;
                    queue.extend(self.m.handle(Input::TlsEstablished { exporter: Some(vec![7; 32]) }));
                }
                Action::RestartStream => self.framer.restart(),
                Action::LookupCredentials { user } => {
                    let c = match user.as_str() {
                        "alice@localhost" => Credentials::Found(alice().to_vec()),
                        "broken@localhost" => Credentials::Failed,
                        _ => Credentials::Unknown,
                    };
                    queue.extend(self.m.handle(Input::Credentials(c)));
                }
                Action::VerifyPassword { creds, password } => {
                    let ok = rookery_sasl::verify_password(&creds, &password);
                    queue.extend(self.m.handle(Input::PasswordChecked(ok)));
                }
                Action::PreauthIq(req) => {
                    assert!(req.from.is_none());
                    queue.extend(self.m.handle(Input::PreauthIqResult(Ok(None))));
                }
                Action::Auth(AuthOutcome::Success { user }) => {
                    assert!(self.tls, "authenticated before TLS");
                    assert_eq!(user.as_str(), "alice@localhost");
                    assert!(!self.authenticated, "authenticated twice");
                    self.authenticated = true;
                }
                Action::Auth(_) => {}
                Action::Bound { jid, reply } => {
                    assert!(self.authenticated, "bound before authentication");
                    assert_eq!(jid.bare_str(), "alice@localhost");
                    assert!(!reply.is_empty());
                    self.ended = true;
                }
                Action::Resume { user, previd, .. } => {
                    // Only after authentication, for the authenticated account.
                    assert!(self.authenticated, "resume before authentication");
                    assert_eq!(user.as_str(), "alice@localhost");
                    assert!(!previd.is_empty());
                }
                Action::Close(e) => {
                    assert!(!self.m.error_bytes(&e).is_empty());
                    self.ended = true;
                }
                Action::ClientClosed | Action::Abort(_) => self.ended = true,
            }
        }
        !self.ended
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let (security, tls) = match ctl & 3 {
        0 | 1 => (Security::Plain, false),
        2 => (Security::Tls { exporter: None }, true),
        _ => (Security::Tls { exporter: Some(vec![7; 32]) }, true),
    };
    let settings = Arc::new(Settings {
        stream_management: true,
        client_state_indication: true,
        stream_ns: if ctl & 4 == 0 { "jabber:client" } else { "jabber:server" },
        domains: vec!["localhost".into(), "example.org".into()],
        allow_registration: ctl & 8 != 0,
        fake_secret: b"fuzz".to_vec(),
        tls_server_end_point: (ctl & 16 != 0).then(|| vec![1; 32]),
    });
    let chunk = usize::from(ctl >> 5) * 9 + 1;
    let mut run = Run {
        m: Negotiator::new(settings, security),
        framer: Framer::new(Limits::default()),
        tls,
        authenticated: false,
        ended: false,
    };
    for bytes in stream.chunks(chunk) {
        run.framer.read_buf().extend_from_slice(bytes);
        loop {
            let frame: Frame = match run.framer.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let actions = run.m.handle(Input::Frame(frame));
            if !run.act(actions) {
                if run.ended {
                    // The machine takes nothing after the end.
                    let more = run.m.handle(Input::Frame(Frame::StreamClose));
                    assert!(more.is_empty(), "{more:?}");
                }
                return;
            }
        }
    }
});
