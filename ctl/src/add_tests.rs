use super::*;

#[test]
fn a_name_that_could_write_more_than_a_name_is_refused() {
    let dir = tempfile_dir("names");
    let path = dir.join("config.toml");
    for name in [
        "x]\nclient_secret = \"s\"\n[installations.y",
        "a b",
        "",
        "é",
    ] {
        let request = Request {
            name: name.to_owned(),
            token_url: Some("https://sso.example.com/token".into()),
            client_id: Some("id".into()),
            public: true,
            ..Request::default()
        };
        let failure = write(&path, &request, false).expect_err(name);
        assert_eq!(failure.status, exit::USAGE, "{name:?}");
        assert!(!path.exists(), "nothing written for {name:?}");
    }
    let quoted = Request {
        name: "ok".into(),
        token_url: Some("https://sso.example.com/token\"\nclient_secret = \"x".into()),
        client_id: Some("id\"]\n[daemon".into()),
        scopes: vec!["a\"b".into()],
        public: true,
        ..Request::default()
    };
    write(&path, &quoted, false).expect("values are quoted");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(
        text.contains("\n# callers = ["),
        "a policy proposed: {text}"
    );
    let table: toml::Table = toml::from_str(&text).expect("TOML");
    let consumer = table["consumers"]["ok"].as_table().expect("consumer");
    assert!(consumer.get("client_secret").is_none(), "{consumer:?}");
    assert!(table.get("daemon").is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn callers_given_are_written_as_the_policy() {
    let dir = tempfile_dir("callers");
    let path = dir.join("config.toml");
    let request = Request {
        name: "work".into(),
        token_url: Some("https://sso.example.com/token".into()),
        client_id: Some("id".into()),
        public: true,
        callers: vec!["unit:backup.service".into(), "exe:/usr/bin/x\"]".into()],
        ..Request::default()
    };
    write(&path, &request, false).expect("written");
    let table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&path).expect("config")).expect("TOML");
    let callers = table["installations"]["work"]["callers"]
        .as_array()
        .expect("callers");
    assert_eq!(callers.len(), 2, "{callers:?}");
    assert_eq!(callers[1].as_str(), Some("exe:/usr/bin/x\"]"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_name_with_a_dot_is_one_table_and_a_roll_back_removes_a_new_file() {
    let dir = tempfile_dir("dot");
    let path = dir.join("config.toml");
    let request = Request {
        name: "my.app".into(),
        token_url: Some("https://sso.example.com/token".into()),
        client_id: Some("id".into()),
        public: true,
        ..Request::default()
    };
    let written = write(&path, &request, false).expect("written");
    let table: toml::Table =
        toml::from_str(&std::fs::read_to_string(&path).expect("config")).expect("TOML");
    assert!(table["installations"].get("my.app").is_some(), "{table:?}");
    assert!(table["consumers"].get("my.app").is_some(), "{table:?}");
    assert!(roll_back(&path, &written));
    assert!(!path.exists(), "there was no file before");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokctl-add-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}
