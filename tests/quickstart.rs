//! User journey: the quickstart on the embedded Fashion-MNIST subset with tiny settings,
//! the pictures it draws, and the refusal to overwrite a previous run.

use splitnas_models::Genotype;
use std::io::Read;
use std::path::Path;
use std::process::Command;
mod common;
use common::{max_abs, read_npy, tract};
use tract_onnx::prelude::Framework;

fn splitnas() -> Command {
    Command::new(env!("CARGO_BIN_EXE_splitnas"))
}

/// Labels of the embedded subset, read straight from the committed IDX file.
fn embedded_test_labels(n: usize) -> Vec<usize> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist/t10k-labels-idx1-ubyte.gz");
    let mut raw = vec![];
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(&raw[..4], &[0, 0, 8, 1], "IDX label magic");
    raw[8..8 + n].iter().map(|&l| l as usize).collect()
}

fn embedded_test_images(n: usize) -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist/t10k-images-idx3-ubyte.gz");
    let mut raw = vec![];
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    raw[16..16 + n * 784].to_vec()
}

fn parse_svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        doc.root_element().tag_name().name(),
        "svg",
        "{}",
        path.display()
    );
    doc.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn quickstart_on_the_embedded_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("qs");
    let (n_test, n_train) = (200usize, 400usize);
    let args = [
        "quickstart",
        "--out",
        out.to_str().unwrap(),
        "--search-epochs",
        "2",
        "--search-images",
        "200",
        "--train-epochs",
        "1",
        "--train-limit",
        &n_train.to_string(),
        "--test-limit",
        &n_test.to_string(),
    ];
    let run = splitnas()
        .args(args)
        // No Debian package here: the embedded subset must be used, and said.
        .env("SPLITNAS_FASHION_MNIST_DIR", tmp.path().join("absent"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(
        run.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("embedded Fashion-MNIST subset"), "{stderr}");

    for f in [
        "search/genotype.json",
        "search/search.jsonl",
        "train/model.mpk",
        "train/metrics.jsonl",
        "model.onnx",
        "cell.svg",
        "pictures/search/curves.svg",
        "pictures/search/curves.png",
        "pictures/search/op_weights.svg",
        "pictures/search/op_weights.png",
        "pictures/train/curves.svg",
        "pictures/train/curves.png",
        "runtime_logits.npy",
        "summary.md",
        "summary.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }

    // The genotype is valid and is what the summary reports.
    let genotype =
        Genotype::from_json(&std::fs::read_to_string(out.join("search/genotype.json")).unwrap())
            .expect("valid genotype.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["genotype"], genotype.to_darts());
    assert!(summary["data"].as_str().unwrap().contains("embedded"));

    // The runtime's accuracy, recomputed here from its logits and the IDX labels.
    let (shape, logits) = read_npy(&out.join("runtime_logits.npy"));
    assert_eq!(shape, vec![n_test as u64, 10]);
    let labels = embedded_test_labels(n_test);
    let correct = logits
        .chunks(10)
        .zip(&labels)
        .filter(|(row, &l)| (0..10).all(|j| row[j] <= row[l]))
        .count();
    let acc = correct as f64 / n_test as f64;
    let reported = summary["runtime_acc"].as_f64().unwrap();
    assert!(
        (acc - reported).abs() < 1e-9,
        "runtime_acc {reported}, recomputed {acc}"
    );
    assert!(
        stdout.contains(&format!("runtime_acc={acc:.4}")),
        "{stdout}"
    );

    // The ONNX file loads in tract, and tract's logits on the first test images (normalized
    // with the file's own mean/std) match the runtime's within 1e-4.
    let proto = tract_onnx::onnx()
        .proto_model_for_path(out.join("model.onnx"))
        .unwrap();
    let meta = |k: &str| -> Vec<f32> {
        let p = proto.metadata_props.iter().find(|p| p.key == k).unwrap();
        serde_json::from_str(&p.value).unwrap()
    };
    let (mean, std) = (meta("mean"), meta("std"));
    let x: Vec<f32> = embedded_test_images(8)
        .iter()
        .map(|&p| (p as f32 / 255.0 - mean[0]) / std[0])
        .collect();
    let tract_logits = tract(&out.join("model.onnx"), &x, [8, 1, 28, 28]);
    let diff = max_abs(&tract_logits, &logits[..80]);
    assert!(diff <= 1e-4, "tract vs runtime max abs {diff}");
    // kept for `.ci/run`: onnxruntime's check and scripts/arm-check.sh (the ARM runtime)
    if let Ok(dir) = std::env::var("SPLITNAS_ONNX_CHECKS") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(out.join("model.onnx"), dir.join("quickstart_model.onnx")).unwrap();
        let json = serde_json::json!({"input_shape": [8, 1, 28, 28], "input": x, "logits": &logits[..80], "tolerance": 1e-4});
        std::fs::write(dir.join("quickstart_model.json"), json.to_string()).unwrap();
    }

    // Pictures: the cell diagram names every op of the genotype; the plots parse and decode.
    let cell_text = parse_svg(&out.join("cell.svg"));
    for pair in genotype.stages() {
        for (op, _) in pair.normal.edges.iter().chain(&pair.reduce.edges) {
            assert!(
                cell_text.contains(op.name()),
                "cell.svg lacks {}",
                op.name()
            );
        }
    }
    assert!(cell_text.contains("c_{k-2}") && cell_text.contains("c_{k}"));
    let weights_text = parse_svg(&out.join("pictures/search/op_weights.svg"));
    assert!(weights_text.contains("sep_conv_3x3") && weights_text.contains("node 3"));
    parse_svg(&out.join("pictures/train/curves.svg"));
    for png in [
        "pictures/search/curves.png",
        "pictures/train/curves.png",
        "pictures/search/op_weights.png",
    ] {
        let img = image::open(out.join(png)).unwrap_or_else(|e| panic!("{png}: {e}"));
        assert!(img.width() >= 640 && img.height() >= 300, "{png}");
    }

    // A second quickstart into the same directory is refused and leaves the first intact.
    let before = std::fs::read(out.join("summary.json")).unwrap();
    let onnx_before = std::fs::read(out.join("model.onnx")).unwrap();
    let again = splitnas()
        .args(args)
        .env("SPLITNAS_FASHION_MNIST_DIR", tmp.path().join("absent"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        err.contains("--force") && err.contains("already holds a quickstart"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
    assert_eq!(std::fs::read(out.join("model.onnx")).unwrap(), onnx_before);
}

#[test]
fn genotype_draw_and_plot_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("cell.svg");
    let draw = |genotype: &str, out: &std::path::Path| {
        splitnas()
            .args(["genotype", "draw", genotype, "--out", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let r = draw("DARTS_V2", &svg);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = parse_svg(&svg);
    for op in [
        "sep_conv_3x3",
        "skip_connect",
        "dil_conv_3x3",
        "max_pool_3x3",
    ] {
        assert!(text.contains(op), "{op}");
    }
    assert!(text.contains("normal cell") && text.contains("reduction cell"));
    // DARTS_V2 has 16 edges: 16 op labels.
    let labels = [
        "sep_conv_3x3",
        "skip_connect",
        "dil_conv_3x3",
        "max_pool_3x3",
    ]
    .iter()
    .map(|op| text.lines().filter(|l| l == op).count())
    .sum::<usize>();
    assert_eq!(labels, 16);

    // Bad input: an unknown genotype and a directory that is not a run.
    let r = draw("NOPE", &svg);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("NOPE"));
    // An --out that cannot be written is named as given (not its temporary file).
    let missing = tmp.path().join("no_such_dir").join("cell.svg");
    let r = draw("DARTS_V2", &missing);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains(&format!("{}: No such file", missing.display()))
            && !err.contains(".cell.svg."),
        "{err}"
    );
    let plot_fails = || {
        let r = splitnas()
            .args([
                "plot",
                tmp.path().to_str().unwrap(),
                "--out",
                tmp.path().join("p").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!r.status.success());
        String::from_utf8_lossy(&r.stderr).into_owned()
    };
    let err = plot_fails();
    assert!(
        err.contains("not a run directory") && err.contains(tmp.path().to_str().unwrap()),
        "{err}"
    );
    // A corrupt metrics file names the file and line.
    std::fs::write(tmp.path().join("metrics.jsonl"), "{\"epoch\": 1}\n").unwrap();
    let err = plot_fails();
    assert!(err.contains("metrics.jsonl: line 1"), "{err}");
}
