#![allow(clippy::unwrap_used)]

use super::*;
use crate::users::Partition;

const BASE: &str = r#"
[target]
address = "127.0.0.1:5222"
domain = "localhost"

[users]
count = 100
password = "pw"
"#;

fn parse(extra: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(&format!("{BASE}\n{extra}"), "test.toml", Path::new("."), &[])
}

fn parse_with(extra: &str, overrides: &[&str]) -> Result<Scenario, ScenarioError> {
    let o: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
    Scenario::parse(&format!("{BASE}\n{extra}"), "test.toml", Path::new("."), &o)
}

fn err(extra: &str) -> String {
    parse(extra).unwrap_err().to_string()
}

const CHAT: &str = "[chat]\npairs = 10\nrate = 100\nduration = \"10s\"\n";

fn example_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_scenario_parses() {
    let files = example_files();
    let names: Vec<String> = files.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["smoke", "login-storm", "idle-50k", "chat-1to1", "presence-fanout", "mam-sync", "reconnect-resume"]
    {
        assert!(names.iter().any(|n| n == expected), "missing scenarios/{expected}.toml");
    }
    for f in files {
        let s = Scenario::load(&f, &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!s.kinds().is_empty(), "{}", f.display());
        for k in s.kinds() {
            if k != Kind::Muc {
                assert!(s.schedule(k).unwrap().expected() > 0.0, "{} [{}]", f.display(), k.name());
            }
        }
    }
}

#[test]
fn smoke_is_small_and_short() {
    let s = Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml"), &[]).unwrap();
    assert!(s.pool.len() <= 30);
    let chat = s.schedule(Kind::Chat).unwrap();
    assert!(chat.duration() <= Duration::from_secs(5));
    // 200 msg/s over 16 senders stays far below a 200 stanzas/s per-session limit.
    let per_sender = s.file.chat.as_ref().unwrap().rate / (2.0 * s.unit_count(Kind::Chat) as f64);
    assert!(per_sender < 50.0);
}

#[test]
fn defaults() {
    let s = parse(CHAT).unwrap();
    assert_eq!(s.name, "test");
    assert_eq!(s.file.target.tls, TlsMode::Starttls);
    assert_eq!(s.sasl, Mechanism::ALL.to_vec());
    assert_eq!(s.file.target.resource, "load");
    assert!(s.file.target.stream_management && s.file.target.initial_presence);
    assert_eq!(s.file.run.grace.0, Duration::from_secs(5));
    assert_eq!(s.pool.get(0).unwrap().jid, "load1@localhost");
    let sched = s.schedule(Kind::Chat).unwrap();
    assert_eq!(sched.arrivals().count(), 1000);
}

#[test]
fn unknown_keys_are_named() {
    for (extra, key) in [
        ("[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\nratee = 5\n", "ratee"),
        ("[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\n[chatt]\nx = 1\n", "chatt"),
        ("[run]\ngrce = \"1s\"\n", "grce"),
        ("[provision]\nadmin_ur = \"x\"\n", "admin_ur"),
        ("[chat]\npairs = 1\nrate = 1\nphases = [{ phase = \"steady\", duration = \"1s\", rat = 5 }]\n", "rat"),
        ("[login]\nusers = 1\nrate = 1\nduration = \"1s\"\nholdd = \"1s\"\n", "holdd"),
        ("[idle]\nconnections = 1\nhold = \"1s\"\nlogin_rat = 3\n", "login_rat"),
        ("[presence]\ngroups = 1\ncontacts = 1\nrate = 1\nduration = \"1s\"\ncontact = 2\n", "contact"),
        ("[mam]\nusers = 1\nrate = 1\nduration = \"1s\"\npage = 2\n", "page"),
        ("[reconnect]\nusers = 1\nrate = 1\nduration = \"1s\"\nresumee = true\n", "resumee"),
        ("[muc]\nrooms = 1\nroomz = 2\n", "roomz"),
    ] {
        let e = err(extra);
        assert!(e.contains(&format!("`{key}`")), "error for {key:?} does not name it: {e}");
    }
    let e = Scenario::parse(
        &BASE.replace("domain = \"localhost\"", "domain = \"localhost\"\nadress = \"x\""),
        "t.toml",
        Path::new("."),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`adress`"), "{e}");
}

#[test]
fn bad_values_are_named() {
    for (extra, key) in [
        ("[chat]\npairs = 1\nrate = -1\nduration = \"1s\"\n", "chat.rate"),
        ("[chat]\npairs = 0\nrate = 1\nduration = \"1s\"\n", "chat.pairs"),
        ("[chat]\npairs = 1\nrate = 1\n", "chat.phases"),
        (
            "[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\nphases = [{ phase = \"steady\", duration = \"1s\" }]\n",
            "chat.duration",
        ),
        ("[chat]\npairs = 1\nrate = 0\nduration = \"1s\"\n", "chat.rate"),
        (
            "[chat]\npairs = 1\nrate = 1\nphases = [{ phase = \"ramp\", duration = \"1s\", rate = 3 }]\n",
            "chat.phases[0].rate",
        ),
        (
            "[chat]\npairs = 1\nrate = 1\nphases = [{ phase = \"steady\", duration = \"1s\", to = 3 }]\n",
            "chat.phases[0]",
        ),
        ("[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\npass = [\"p98_ms < 5\"]\n", "chat.pass[0]"),
        ("[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\npass = [\"loss == 0\", \"loss is 0\"]\n", "chat.pass[1]"),
        ("[chat]\npairs = 60\nrate = 1\nduration = \"1s\"\n", "chat users"),
        ("[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\nuser_offset = 99\n", "chat.user_offset"),
        ("[idle]\nconnections = 1\nhold = \"1s\"\nlogin_rate = 0\n", "idle.login_rate"),
        ("[mam]\nusers = 1\nrate = 1\nduration = \"1s\"\npage_size = 0\n", "mam.page_size"),
        ("[run]\nconnect_rate = 0\n[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\n", "run.connect_rate"),
        ("[provision]\nconcurrency = 0\n[chat]\npairs = 1\nrate = 1\nduration = \"1s\"\n", "provision.concurrency"),
        ("", "(scenario)"),
    ] {
        let e = err(extra);
        assert!(e.contains(&format!("`{key}`")), "error for {key:?} does not name it: {e}");
    }
    // Errors from the TOML layer quote the offending line, so the key is named there too.
    let e = err("[chat]\npairs = 1\nrate = \"fast\"\nduration = \"1s\"\n");
    assert!(e.contains("rate"), "{e}");
    let e = err("[chat]\npairs = 1\nrate = 1\nduration = \"10x\"\n");
    assert!(e.contains("10x") && e.contains("duration"), "{e}");
    let e = err("[chat]\npairs = 1\nrate = 1\narrival = \"bursty\"\nduration = \"1s\"\n");
    assert!(e.contains("bursty") && e.contains("arrival"), "{e}");
}

#[test]
fn target_and_users_are_checked() {
    let with = |from: &str, to: &str, extra: &str| {
        Scenario::parse(&format!("{}\n{extra}", BASE.replace(from, to)), "t.toml", Path::new("."), &[])
            .unwrap_err()
            .to_string()
    };
    assert!(with("127.0.0.1:5222", "127.0.0.1", CHAT).contains("`target.address`"));
    assert!(with("domain = \"localhost\"", "domain = \"a@b\"", CHAT).contains("`target.domain`"));
    let e = with("domain = \"localhost\"", "domain = \"localhost\"\nsasl = [\"PLAIN\", \"DIGEST-MD5\"]", CHAT);
    assert!(e.contains("`target.sasl[1]`") && e.contains("DIGEST-MD5"), "{e}");
    let e = with("domain = \"localhost\"", "domain = \"localhost\"\nsource_addrs = \"10.0.0.9-10.0.0.1\"", CHAT);
    assert!(e.contains("`target.source_addrs`"), "{e}");
    assert!(with("password = \"pw\"", "", CHAT).contains("`users.password`"));
    assert!(with("count = 100", "count = 0", CHAT).contains("`users.count`"));
    let e = with("count = 100", "count = 1\ncsv = \"/nonexistent/users.csv\"", CHAT);
    assert!(e.contains("/nonexistent/users.csv"), "{e}");
}

#[test]
fn csv_users_relative_to_the_scenario() {
    let dir = std::env::temp_dir().join(format!("rookery-load-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("users.csv"), "jid,password\na@x,1\nb@x,2\nc@x,3\nd@x,4\n").unwrap();
    let text = BASE.replace("count = 100\npassword = \"pw\"", "csv = \"users.csv\"")
        + "[chat]\npairs = 2\nrate = 1\nduration = \"1s\"\n";
    let s = Scenario::parse(&text, "t.toml", &dir, &[]).unwrap();
    assert_eq!(s.pool.len(), 4);
    assert_eq!(s.pool.get(3).unwrap().password, "4");
    let e = Scenario::parse(&text.replace("pairs = 2", "pairs = 3"), "t.toml", &dir, &[]).unwrap_err();
    assert!(e.to_string().contains("provides 4"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn overrides() {
    let s = parse_with(CHAT, &["chat.rate=20000"]).unwrap();
    assert_eq!(s.file.chat.as_ref().unwrap().rate, 20000.0);
    assert_eq!(s.schedule(Kind::Chat).unwrap().expected(), 200_000.0);
    let s = parse_with(CHAT, &["target.address=10.1.2.3:5223", "target.tls=direct", "chat.duration=2m"]).unwrap();
    assert_eq!(s.file.target.address, "10.1.2.3:5223");
    assert_eq!(s.file.target.tls, TlsMode::Direct);
    assert_eq!(s.schedule(Kind::Chat).unwrap().duration(), Duration::from_secs(120));
    let s = parse_with(CHAT, &["chat.pass=[\"loss == 0\", \"p99_ms < 5\"]"]).unwrap();
    assert_eq!(s.criteria[&Kind::Chat].len(), 2);
    // Array items by index.
    let phased = "[chat]\npairs = 1\nrate = 10\nphases = [{ phase = \"ramp\", duration = \"1s\" }, { phase = \"steady\", duration = \"1s\" }]\n";
    let s = parse_with(phased, &["chat.phases.1.duration=5s"]).unwrap();
    assert_eq!(s.schedule(Kind::Chat).unwrap().duration(), Duration::from_secs(6));
    // A whole new table from the command line.
    let s = parse_with(CHAT, &["login.users=5", "login.rate=2", "login.duration=3s"]).unwrap();
    assert_eq!(s.blocks[&Kind::Login], 0..5);
    // Errors name the override.
    let e = parse_with(CHAT, &["chat.rate"]).unwrap_err().to_string();
    assert!(e.contains("--set chat.rate"), "{e}");
    let e = parse_with(phased, &["chat.phases.7.duration=1s"]).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let e = parse_with(CHAT, &["chat.rate.x=1"]).unwrap_err().to_string();
    assert!(e.contains("not a table"), "{e}");
    let e = parse_with(CHAT, &["chat.ratee=1"]).unwrap_err().to_string();
    assert!(e.contains("`ratee`"), "{e}");
    let e = parse_with(CHAT, &["chat.rate=fast"]).unwrap_err().to_string();
    assert!(e.contains("rate"), "{e}");
}

#[test]
fn users_are_allocated_in_blocks() {
    let s = parse(
        "[login]\nusers = 5\nrate = 1\nduration = \"1s\"\n\
         [chat]\npairs = 10\nrate = 1\nduration = \"1s\"\n\
         [presence]\ngroups = 2\ncontacts = 4\nrate = 1\nduration = \"1s\"\n\
         [mam]\nusers = 20\nuser_offset = 5\nrate = 1\nduration = \"1s\"\n",
    )
    .unwrap();
    assert_eq!(s.blocks[&Kind::Login], 0..5);
    assert_eq!(s.blocks[&Kind::Chat], 5..25);
    assert_eq!(s.blocks[&Kind::Presence], 25..35);
    assert_eq!(s.blocks[&Kind::Mam], 5..25, "explicit offset: shares the chat users");
    assert_eq!(s.unit_users(Kind::Chat, 3), 11..13);
    assert_eq!(s.unit_users(Kind::Presence, 1), 30..35);
    assert_eq!(s.kinds(), vec![Kind::Login, Kind::Chat, Kind::Presence, Kind::Mam]);
}

/// Each worker's users are disjoint and together they are exactly the users one process
/// would connect; every arrival belongs to exactly one worker.
#[test]
fn worker_partition_covers_every_user_once() {
    let s = parse(
        "[login]\nusers = 7\nrate = 10\nduration = \"1s\"\n\
         [idle]\nconnections = 9\nhold = \"1s\"\n\
         [chat]\npairs = 11\nrate = 50\nduration = \"1s\"\n\
         [presence]\ngroups = 3\ncontacts = 5\nrate = 10\nduration = \"1s\"\n\
         [mam]\nusers = 6\nrate = 10\nduration = \"1s\"\n\
         [reconnect]\nusers = 8\nrate = 10\nduration = \"1s\"\n",
    )
    .unwrap();
    let mut files = vec![s];
    files.extend(example_files().iter().map(|f| Scenario::load(f, &[]).unwrap()));
    for s in &files {
        for kind in s.kinds().into_iter().filter(|k| *k != Kind::Muc) {
            let block = s.blocks[&kind].clone();
            for n in 1..=5u32 {
                let parts: Vec<Partition> = (0..n).map(|index| Partition { index, count: n }).collect();
                let mine: Vec<std::collections::HashSet<u64>> =
                    parts.iter().map(|p| s.worker_users(kind, *p).into_iter().collect()).collect();
                let mut seen = std::collections::BTreeMap::<u64, u32>::new();
                for u in parts.iter().flat_map(|p| s.worker_users(kind, *p)) {
                    *seen.entry(u).or_default() += 1;
                }
                assert!(seen.values().all(|c| *c == 1), "{} [{}] n={n}: a user in two workers", s.name, kind.name());
                assert!(
                    seen.keys().copied().eq(block.clone()),
                    "{} [{}] n={n}: workers do not cover the block",
                    s.name,
                    kind.name()
                );
                // Arrivals: the unit of each belongs to one worker, and its users are that
                // worker's users.
                let arrivals = s.schedule(kind).unwrap().expected().ceil() as u64;
                for k in 0..arrivals.min(2_000) {
                    let unit = s.arrival_unit(kind, k);
                    let owners: Vec<usize> = (0..parts.len()).filter(|i| parts[*i].owns(unit)).collect();
                    assert_eq!(owners.len(), 1);
                    assert!(s.unit_users(kind, unit).all(|u| mine[owners[0]].contains(&u)));
                }
            }
        }
    }
}

#[test]
fn chat_arrivals_cycle_over_flows() {
    let s = parse(CHAT).unwrap();
    // 10 pairs, both directions: flows 0..20, flow f belongs to pair f / 2.
    assert_eq!(s.chat_flows(), (20, 2));
    assert_eq!(s.arrival_unit(Kind::Chat, 0), 0);
    assert_eq!(s.arrival_unit(Kind::Chat, 3), 1);
    assert_eq!(s.arrival_unit(Kind::Chat, 21), 0);
    let one_way = parse_with(CHAT, &["chat.bidirectional=false"]).unwrap();
    assert_eq!(one_way.chat_flows(), (10, 1));
    assert_eq!(one_way.arrival_unit(Kind::Chat, 13), 3);
}

#[test]
fn criteria() {
    let c = Criterion::parse("p99_ms<50", Kind::Chat).unwrap();
    assert_eq!((c.metric.as_str(), c.op, c.value), ("p99_ms", Op::Lt, 50.0));
    let c = Criterion::parse(" delivered_rate >= 1.5e3 ", Kind::Chat).unwrap();
    assert_eq!((c.metric.as_str(), c.op, c.value), ("delivered_rate", Op::Ge, 1500.0));
    assert_eq!(Criterion::parse("loss == 0", Kind::Chat).unwrap().op, Op::Eq);
    assert_eq!(Criterion::parse("errors != 0", Kind::Chat).unwrap().op, Op::Ne);
    assert_eq!(Criterion::parse("auth_p99_ms <= 20", Kind::Login).unwrap().op, Op::Le);
    assert!(Criterion::parse("loss = 0", Kind::Chat).is_err());
    assert!(Criterion::parse("loss == zero", Kind::Chat).is_err());
    assert!(Criterion::parse("resumed == 0", Kind::Chat).unwrap_err().contains("unknown metric `resumed`"));
    assert!(Criterion::parse("resumed_ratio > 0.9", Kind::Reconnect).is_ok());
    assert_eq!(c_display("p99_ms < 50"), "p99_ms < 50");
}

fn c_display(s: &str) -> String {
    Criterion::parse(s, Kind::Chat).unwrap().to_string()
}

#[test]
fn durations() {
    assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
    assert_eq!(Dur::parse("1.5s").unwrap().0, Duration::from_millis(1500));
    assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
    assert_eq!(Dur::parse("1h").unwrap().0, Duration::from_secs(3600));
    assert_eq!(Dur::parse("7").unwrap().0, Duration::from_secs(7));
    assert!(Dur::parse("-1s").is_err());
    assert!(Dur::parse("s").is_err());
    assert!(Dur::parse("3 weeks").is_err());
    let s = parse("[login]\nusers = 1\nrate = 1\nduration = 3\nhold = 1.5\n").unwrap();
    assert_eq!(s.file.login.as_ref().unwrap().hold.0, Duration::from_millis(1500));
    assert_eq!(s.schedule(Kind::Login).unwrap().duration(), Duration::from_secs(3));
}

#[test]
fn muc_is_accepted() {
    let s = parse("[muc]\nrooms = 10\noccupants = 20\nrate = 5\nduration = \"1s\"\n").unwrap();
    assert_eq!(s.kinds(), vec![Kind::Muc]);
}
