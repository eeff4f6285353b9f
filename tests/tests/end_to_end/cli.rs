//! The command line: `check-config` names the file, the key and the reason.

use std::process::Command;

use wardgate_tests::gateway::binary;

#[test]
fn check_config_names_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "gw.pem", "gw.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let good = "[gateway]\nid = \"gw\"\ndata_dir = \"d\"\n[cloud]\nmqtt_url = \"mqtts://h:8883\"\nca_file = \"ca.pem\"\ncert_file = \"gw.pem\"\nkey_file = \"gw.key\"\nprofile = \"aws-iot-core\"\n[hl7]\nlisten = \"127.0.0.1:2575\"\n";
    let path = dir.path().join("wardgate.toml");
    std::fs::write(&path, good).unwrap();
    let out = Command::new(binary().unwrap())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = good.replace("[hl7]\n", "[hl7]\nmax_message_bytes = 12\n");
    std::fs::write(&path, bad).unwrap();
    let out = Command::new(binary().unwrap())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("hl7.max_message_bytes"), "{err}");
    assert!(err.contains("1024"), "{err}");

    let out = Command::new(binary().unwrap())
        .arg("check-config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
