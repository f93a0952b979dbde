//! `rookery serve` as an operator runs it: a real process with its output piped, as under
//! systemd or in a container. What it prints, what it leaves on disk, and how it fails.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where `rookery serve` is told its data directory.
enum DataDir<'a> {
    Flag(&'a Path),
    Env(&'a Path),
}

/// `rookery serve` on loopback with free ports and its stdout/stderr piped (not a terminal).
fn spawn_serve(data: DataDir) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rookery"));
    cmd.arg("serve");
    match data {
        DataDir::Flag(dir) => cmd.arg("--data-dir").arg(dir),
        DataDir::Env(dir) => cmd.env("ROOKERY_DATA_DIR", dir),
    };
    cmd.args(["--c2s", "127.0.0.1:0", "--c2s-tls", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .env_remove("ROOKERY_ADMIN_URL")
        .env_remove("ROOKERY_ADMIN_TOKEN")
        .env_remove("ROOKERY_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stderr lines as they come, on a thread, so a test can wait for one with a timeout.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects stderr lines up to and including the first one containing `needle`.
fn until(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return;
                }
            }
            Err(e) => panic!("no line with {needle:?} ({e}); stderr so far:\n{}", seen.join("\n")),
        }
    }
}

/// SIGTERM, then everything the process still writes, and its exit status.
fn stop(mut child: Child, rx: mpsc::Receiver<String>, seen: &mut Vec<String>) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    seen.extend(rx.iter());
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    (child.wait().unwrap(), stdout)
}

/// Piped output has no colour codes, the server says when it has stopped, and the "add a
/// user" hint is a command that works as printed, shown only while there is no account.
#[test]
fn serve_output_when_piped() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // The data directory from the environment, which the shell the hint is pasted into
    // does not have.
    let mut child = spawn_serve(DataDir::Env(&data));
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    until(&rx, "  data ", &mut seen);
    // The log lines so far (certificate generated, started) are plain text.
    let so_far = seen.join("\n");
    assert!(!so_far.contains("\x1b["), "ANSI escape codes in piped stderr:\n{so_far}");
    // The banner's last line: the hint.
    let hint = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    seen.push(hint.clone());
    assert!(hint.starts_with("no accounts yet; add one"), "{hint}");
    let cmd = hint.split_once(": ").unwrap().1;
    // Pasted into a shell as printed, from another directory.
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(tmp.path())
        .env_remove("ROOKERY_DATA_DIR")
        .env_remove("ROOKERY_ADMIN_URL")
        .env_remove("ROOKERY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, stdout) = stop(child, rx, &mut seen);
    let stderr = seen.join("\n");
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("\x1b["), "ANSI escape codes in piped stderr:\n{stderr}");
    assert!(!stdout.contains("\x1b["), "ANSI escape codes in piped stdout:\n{stdout}");
    assert!(stderr.contains("event=\"started\"") || stderr.contains("event=started"), "{stderr}");
    let last = seen.iter().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(last.contains("stopped"), "the last line should say the server stopped:\n{stderr}");

    // alice@localhost exists now: no hint on the next start.
    let mut child = spawn_serve(DataDir::Flag(&data));
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    until(&rx, "  data ", &mut seen);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = stop(child, rx, &mut seen);
    let stderr = seen.join("\n");
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("add one"), "hint printed although an account exists:\n{stderr}");
}

/// A busy port fails the start with the address named, before anything is written.
#[test]
fn serve_on_a_busy_port_fails_before_touching_the_data_dir() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fresh");
    let out = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--c2s-tls", "127.0.0.1:0", "--http", "127.0.0.1:0", "--c2s", &addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!data.exists(), "the data directory was created: {:?}", std::fs::read_dir(&data).map(|d| d.count()));
}

/// The generated certificate says what it is for and who made it, in the subject and
/// the subject alternative names.
#[test]
fn generated_certificate_names_the_domains_and_rookery() {
    let tmp = tempfile::tempdir().unwrap();
    let domains = vec!["example.org".to_owned(), "chat.example.net".to_owned()];
    rookery_edge::tls::load_or_generate(None, None, tmp.path(), &domains).unwrap();
    let pem = std::fs::read(tmp.path().join("tls/cert.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let subject = cert.subject();
    let cn: Vec<&str> = subject.iter_common_name().map(|a| a.as_str().unwrap()).collect();
    let org: Vec<&str> = subject.iter_organization().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(cn, ["example.org"], "{subject}");
    assert!(org.len() == 1 && org[0].contains("Rookery"), "{subject}");
    assert!(!subject.to_string().contains("rcgen"), "{subject}");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<String> = san.value.general_names.iter().map(|n| n.to_string()).collect();
    for d in ["example.org", "chat.example.net", "localhost"] {
        assert!(names.iter().any(|n| n.contains(d)), "{d} not in {names:?}");
    }
}

/// SIGTERM still shuts the server down when whoever read its output has gone away (a
/// closed stderr pipe): logging must not take the signal handling down with it.
#[test]
fn sigterm_stops_the_server_after_its_stderr_reader_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut child = spawn_serve(DataDir::Flag(&data));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    // Up to the banner's last line (the hint, on a fresh data directory): nothing more is
    // printed with eprintln! after it.
    while !line.contains("add one") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "rookery exited during start-up");
    }
    drop(stderr);
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("rookery did not stop on SIGTERM once its stderr was closed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.wait().unwrap().success());
}
