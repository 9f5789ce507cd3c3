use super::*;

fn sample(access: &str) -> Record {
    Record {
        access_token: Some(AccessToken::new(access)),
        refresh_token: Some(RefreshToken::new("refresh-1")),
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
        scopes: vec!["repository".into(), "pullrequest".into()],
        last_refresh: Some(UNIX_EPOCH + Duration::from_secs(1_899_992_800)),
        last_error: None,
        ..Record::default()
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn round_trip_with_permissions() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path().join("state/tokd")).expect("open");
    assert_eq!(mode(store.dir()), 0o700);
    assert!(matches!(store.load("a").expect("load"), Loaded::Missing));

    let record = sample("access-1");
    store.save("a", &record).expect("save");
    assert_eq!(mode(&store.path_of("a")), 0o600);
    match store.load("a").expect("load") {
        Loaded::Found(found) => assert_eq!(found, record),
        other => panic!("{other:?}"),
    }
    // Overwrite keeps permissions and replaces content.
    let newer = sample("access-2");
    store.save("a", &newer).expect("save");
    assert!(matches!(store.load("a").expect("load"), Loaded::Found(r) if r == newer));
    assert_eq!(mode(&store.path_of("a")), 0o600);
    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(store.dir())
        .expect("read_dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["a.json"]);
}

#[test]
fn the_format_is_versioned_json_with_wall_clock_seconds() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    store.save("a", &sample("tok")).expect("save");
    let text = fs::read_to_string(store.path_of("a")).expect("read");
    let value: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(value["version"], 1);
    assert_eq!(value["expires_at"], 1_900_000_000u64);
    assert_eq!(value["access_token"], "tok");
    assert_eq!(value["scopes"][1], "pullrequest");
}

#[test]
fn a_record_written_by_an_earlier_tokd_still_reads() {
    // As the tokd of the first release wrote it: with `token_type`, which
    // is no longer kept (only bearer tokens are accepted), and `secrets`.
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    let earlier = br#"{"version":1,"access_token":"tok","refresh_token":"refresh-1","expires_at":1900000000,"scopes":["repository"],"token_type":"bearer","last_refresh":1899992800,"last_error":null,"issued_for":"id","secrets":"keyring"}"#;
    fs::write(store.path_of("a"), earlier).expect("write");
    fs::set_permissions(store.path_of("a"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let Loaded::Found(record) = store.load("a").expect("load") else {
        panic!("not found");
    };
    assert_eq!(
        record
            .access_token
            .as_ref()
            .map(|token| token.expose().to_owned()),
        Some("tok".to_owned())
    );
    assert_eq!(record.scopes, ["repository"]);
    assert_eq!(record.store, Store::Keyring);
    assert_eq!(record.issued_for.as_deref(), Some("id"));
}

#[test]
fn loose_folder_is_tightened() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("tokd");
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    StateFolder::open(&dir).expect("open");
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn loose_file_is_tightened_on_load() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    store.save("a", &sample("tok")).expect("save");
    fs::set_permissions(store.path_of("a"), fs::Permissions::from_mode(0o644)).expect("chmod");
    assert!(matches!(store.load("a").expect("load"), Loaded::Found(_)));
    assert_eq!(mode(&store.path_of("a")), 0o600);
}

#[test]
fn a_file_in_place_of_the_folder_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("tokd");
    fs::write(&path, "").expect("write");
    assert!(StateFolder::open(&path).is_err());
}

#[test]
fn corrupt_file_is_moved_aside_and_only_its_installation_is_affected() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    store.save("good", &sample("tok")).expect("save");
    let garbage = b"{\"version\": 1, \"access_token\": \"half-writ";
    fs::write(store.path_of("bad"), garbage).expect("write");

    let Loaded::MovedAside { moved_to, reason } = store.load("bad").expect("load") else {
        panic!("expected the corrupt file to be moved aside");
    };
    assert!(reason.contains("truncated"), "{reason}");
    assert!(
        !reason.contains("half-writ"),
        "the reason never quotes content: {reason}"
    );
    assert!(!store.path_of("bad").exists());
    assert_eq!(fs::read(&moved_to).expect("kept"), garbage, "never deleted");
    assert!(matches!(store.load("bad").expect("load"), Loaded::Missing));
    assert!(matches!(
        store.load("good").expect("load"),
        Loaded::Found(_)
    ));

    // A second corruption at the same second does not overwrite the first.
    fs::write(store.path_of("bad"), b"[]").expect("write");
    let Loaded::MovedAside {
        moved_to: second,
        reason,
    } = store.load("bad").expect("load")
    else {
        panic!("expected a move");
    };
    assert!(reason.contains("not a token record"), "{reason}");
    assert_ne!(second, moved_to);
    assert!(moved_to.exists() && second.exists());
}

#[test]
fn a_newer_format_is_left_untouched() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    let future = b"{\"version\": 2, \"something\": \"new\"}";
    fs::write(store.path_of("a"), future).expect("write");
    let error = store.load("a").expect_err("refused");
    assert!(matches!(error, StateError::NewerFormat { found: 2, .. }));
    assert!(error.to_string().contains("upgrade tokd"), "{error}");
    assert_eq!(fs::read(store.path_of("a")).expect("still there"), future);
}

#[test]
fn stale_temporaries_are_removed_fresh_ones_kept() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path();
    let stale = dir.join(".a.json.tmp-1-0");
    let fresh = dir.join(".b.json.tmp-1-1");
    fs::write(&stale, "x").expect("write");
    fs::write(&fresh, "x").expect("write");
    let old = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&stale)
        .expect("open")
        .set_modified(old)
        .expect("set mtime");
    StateFolder::open(dir).expect("open");
    assert!(!stale.exists());
    assert!(fresh.exists());
}

#[test]
fn a_failed_write_leaves_what_was_there_and_no_temporary() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    // Make the rename fail: the target of `b` is a non-empty folder,
    // which rename cannot replace. (Permission tricks do not work when
    // the tests run as root; `it::store` covers a write cut off by the
    // kernel over a real old record.)
    fs::create_dir(store.path_of("b")).expect("mkdir");
    fs::write(store.path_of("b").join("keep"), "x").expect("write");
    let error = store
        .save("b", &sample("new"))
        .expect_err("the rename fails");
    assert!(matches!(error, StateError::Write { .. }), "{error}");
    assert_eq!(
        fs::read(store.path_of("b").join("keep")).expect("still there"),
        b"x"
    );
    let leftovers = fs::read_dir(root.path())
        .expect("read_dir")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|entry| entry.file_name().to_string_lossy().contains(".tmp-"))
        })
        .count();
    assert_eq!(leftovers, 0, "the temporary file was cleaned up");
}

#[test]
fn remove_deletes_and_tolerates_missing() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    store.save("a", &sample("tok")).expect("save");
    store.remove("a").expect("remove");
    assert!(matches!(store.load("a").expect("load"), Loaded::Missing));
    store.remove("a").expect("remove again");
}

#[test]
fn the_keyring_item_is_recorded_in_the_file_and_not_in_the_record() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = StateFolder::open(root.path()).expect("open");
    let record = sample("tok").without_tokens();
    assert_eq!(store.recorded_item("a"), None, "no file");
    let item = "/org/freedesktop/secrets/collection/login/7";
    store
        .write_encoded(
            "a",
            &store.encode("a", &record, Some(item)).expect("encode"),
        )
        .expect("write");
    assert_eq!(store.recorded_item("a").as_deref(), Some(item));
    // The record reads as it was written; the item stays in the file.
    assert!(matches!(store.load("a").expect("load"), Loaded::Found(r) if r == record));
    store.save("a", &record).expect("save");
    assert_eq!(store.recorded_item("a"), None, "a file store records none");
}
