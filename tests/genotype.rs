//! User journey: inspect genotypes with `splitnas genotype show`.

use std::process::Command;

fn splitnas(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_splitnas"))
        .args(args)
        .output()
        .expect("run splitnas");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The published DARTS_V2 text (shared/reference/darts.md, from quark0/darts genotypes.py).
const DARTS_V2: &str = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])";

#[test]
fn show_prints_the_published_darts_text_and_json() {
    let (ok, out, err) = splitnas(&["genotype", "show", "darts_v2", "--format", "darts"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), DARTS_V2);
    let (ok, out, _) = splitnas(&["genotype", "show", "DARTS_V2"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["normal"].as_array().unwrap().len(), 8);
    assert_eq!(v["normal"][7], serde_json::json!(["dil_conv_3x3", 2]));
}

#[test]
fn files_in_both_notations_are_read_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let darts = dir.path().join("g.txt");
    std::fs::write(
        &darts,
        format!(
            "MY = {}\n",
            DARTS_V2.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)")
        ),
    )
    .unwrap();
    let (ok, json, err) = splitnas(&["genotype", "show", darts.to_str().unwrap()]);
    assert!(ok, "{err}");
    let jfile = dir.path().join("g.json");
    std::fs::write(&jfile, &json).unwrap();
    let (ok, out, _) = splitnas(&[
        "genotype",
        "show",
        jfile.to_str().unwrap(),
        "--format",
        "darts",
    ]);
    assert!(ok);
    assert_eq!(out.trim(), DARTS_V2);

    std::fs::write(
        &darts,
        DARTS_V2.replace("'dil_conv_3x3', 2", "'dil_conv_3x3', 7"),
    )
    .unwrap();
    let (ok, _, err) = splitnas(&["genotype", "show", darts.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("g.txt") && err.contains("input 7 is out of range"),
        "{err}"
    );

    let (ok, _, err) = splitnas(&["genotype", "show", "NOT_A_GENOTYPE"]);
    assert!(!ok);
    assert!(
        err.contains("'NOT_A_GENOTYPE' is neither a genotype in the zoo"),
        "{err}"
    );
}

/// A reader that has gone (`splitnas genotype list | head -0`): the process ends on
/// SIGPIPE like any Unix tool, without a panic message (Rust ignores SIGPIPE by default,
/// which made `println!` panic on the broken pipe).
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_process_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitnas"))
        .args(["genotype", "list"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    const SIGPIPE: i32 = 13; // Linux and the BSDs
    assert_eq!(out.status.signal(), Some(SIGPIPE), "{:?}", out.status);
}
