//! The admin API and the `rookery` CLI, against a real node and a real binary.
#![allow(clippy::unwrap_used)]

use rookery::admin::call;
use serde_json::json;
use std::process::Command;

fn cfg(dir: &std::path::Path) -> rookery_config::Config {
    let mut c = rookery_config::Config { data_dir: dir.to_path_buf(), ..Default::default() };
    c.listen.c2s = Some("127.0.0.1:0".parse().unwrap());
    c.listen.c2s_tls = Some("127.0.0.1:0".parse().unwrap());
    c.listen.http = Some("127.0.0.1:0".parse().unwrap());
    c
}

#[tokio::test]
async fn admin_api_manages_accounts_and_requires_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = rookery::start(cfg(tmp.path())).await.unwrap();
    let http = server.http.unwrap();
    let token = server.admin_token.clone();
    let on_disk = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
    assert_eq!(on_disk.trim(), token);

    let body = json!({ "jid": "alice@localhost", "password": "secret" });
    let (s, _) = call(http, "wrong", "POST", "/admin/users", Some(body.clone())).await.unwrap();
    assert_eq!(s, 401);
    let (s, _) = call(http, &token, "POST", "/admin/users", Some(body.clone())).await.unwrap();
    assert_eq!(s, 201);
    let (s, j) = call(http, &token, "POST", "/admin/users", Some(body)).await.unwrap();
    assert_eq!(s, 409);
    assert!(j["error"].as_str().unwrap().contains("already exists"));
    let (s, j) =
        call(http, &token, "POST", "/admin/users", Some(json!({ "jid": "bob@elsewhere.example", "password": "x" })))
            .await
            .unwrap();
    assert_eq!(s, 400, "{j}");
    let (s, j) = call(http, &token, "GET", "/admin/users", None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(j["users"], json!(["alice@localhost"]));
    let (s, _) =
        call(http, &token, "PUT", "/admin/users/alice@localhost/password", Some(json!({ "password": "other" })))
            .await
            .unwrap();
    assert_eq!(s, 204);
    let acc = server
        .router
        .stores()
        .accounts
        .get(&rookery_jid::BareJid::parse("alice@localhost").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(rookery_sasl::verify_password(&acc.credentials[0], "other"));
    assert!(!rookery_sasl::verify_password(&acc.credentials[0], "secret"));
    let (s, _) = call(http, &token, "DELETE", "/admin/users/alice@localhost", None).await.unwrap();
    assert_eq!(s, 204);
    let (s, _) = call(http, &token, "DELETE", "/admin/users/alice@localhost", None).await.unwrap();
    assert_eq!(s, 404);
    server.shutdown().await;
}

fn rookery(dir: &std::path::Path, args: &[&str], admin: Option<&str>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rookery"));
    c.args(args).arg("--data-dir").arg(dir).env_remove("ROOKERY_ADMIN_URL").env_remove("ROOKERY_ADMIN_TOKEN");
    c.env("ROOKERY_HTTP", "off");
    if let Some(url) = admin {
        c.env("ROOKERY_ADMIN_URL", url);
    }
    c.output().unwrap()
}

// The CLI runs as a child process while this runtime must keep serving it: the blocking
// `Command::output` calls need a second worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_user_commands_work_offline_and_against_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    // Stopped server: the CLI writes the data directory directly.
    let out = rookery(tmp.path(), &["user", "add", "carol@localhost", "--password", "secret"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rookery(tmp.path(), &["user", "add", "carol@localhost", "--password", "secret"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = rookery(tmp.path(), &["user", "add", "nope@other.example", "--password", "secret"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a served domain"));

    // Running server: the CLI goes through the admin API (the store is locked by the
    // server, so a direct write would fail).
    let server = rookery::start(cfg(tmp.path())).await.unwrap();
    let url = format!("http://{}", server.http.unwrap());
    let out = rookery(tmp.path(), &["user", "add", "dave@localhost", "--password", "secret"], Some(&url));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rookery(tmp.path(), &["user", "list"], Some(&url));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec!["carol@localhost", "dave@localhost"]);
    let out = rookery(tmp.path(), &["user", "del", "carol@localhost"], Some(&url));
    assert!(out.status.success());
    let dave = rookery_jid::BareJid::parse("dave@localhost").unwrap();
    assert!(server.router.stores().accounts.get(&dave).await.unwrap().is_some());
    server.shutdown().await;

    // And offline again after the server stopped.
    let out = rookery(tmp.path(), &["user", "list"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dave@localhost");
}

#[test]
fn check_config_names_the_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.toml");
    std::fs::write(&f, "[limits]\nmax_stanza_byte = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rookery")).args(["check-config", "--config"]).arg(&f).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_stanza_byte") && err.contains("max_stanza_bytes"), "{err}");
    std::fs::write(&f, "domains = [\"chat.example.org\"]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rookery")).args(["check-config", "--config"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
