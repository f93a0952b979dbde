//! docs/compliance.md must be exactly what the code declares.
#![allow(clippy::unwrap_used)]

#[test]
fn compliance_doc_matches_code() {
    let generated = rookery::compliance().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/compliance.md");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/compliance.md is stale: run `cargo run -p rookery -- compliance > docs/compliance.md`"
    );
}
