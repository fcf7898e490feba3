//! User journey: `splitnas compile` on a QDQ file (`splitnas export` DARTS_V2 C=8 L=5,
//! `splitnas quantize` on Fashion-MNIST images) -> `model.plan`; the plan run on the host
//! through `splitnas-micro` gives the runtime int8 engine's logits bit for bit (the engine
//! is an independent executor: its own buffers, packed SIMD kernels, no memory plan),
//! in-process and through `splitnas run`. The memory plan's figures: the arena within
//! 1.1x the lower bound for the op order. A budget too small and a corrupt plan: one
//! clear line, exit code 1.

use splitnas_runtime::micro_plan::PlanModel;
use splitnas_runtime::Model;
use std::collections::HashMap;
use std::path::Path;
mod common;
use common::{export_darts_v2_c8, input_images, read_npy, splitnas, write_npy};

/// A seeded DARTS_V2 C=8 L=5 network for 1x28x28 images, quantized on 32 Fashion-MNIST
/// training images; returns the int8 file's path.
fn int8_file(dir: &Path) -> String {
    let float = dir.join("float.onnx");
    export_darts_v2_c8(&float);
    let int8 = dir.join("int8.onnx");
    let (ok, _, err) = splitnas(&[
        "quantize",
        float.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
        "--dataset",
        "fashion-mnist",
        "--calibration-images",
        "32",
    ]);
    assert!(ok, "{err}");
    int8.to_str().unwrap().to_string()
}

/// The `key=value` pairs of the output.
fn pairs(out: &str) -> HashMap<String, u64> {
    out.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// `splitnas genotype show ARGS --cost` on 1x28x28 images, 10 classes: its figures
/// (`params`, `macs`, `sram_bytes`, `flash_bytes`).
fn cost_model(args: &[&str]) -> HashMap<String, u64> {
    let mut all = vec![
        "genotype",
        "show",
        "--cost",
        "--image-size",
        "28",
        "--in-channels",
        "1",
    ];
    all.extend_from_slice(args);
    let (ok, stdout, err) = splitnas(&all);
    assert!(ok, "{err}");
    pairs(stdout.lines().last().unwrap())
}

/// Every operation (both 5x5 convolutions, both pools, skip_connect at stride 1 and 2)
/// and the identity connection: the cost model's MACs equal the compiled plan's, which
/// counts them from the int8 program's shapes (ONNX -> runtime int8 ops -> plan), code
/// that shares nothing with the cost model.
#[test]
fn cost_model_macs_equal_the_compiled_plans() {
    let dir = tempfile::tempdir().unwrap();
    let genotype = dir.path().join("every-op.txt");
    std::fs::write(
        &genotype,
        "Genotype(normal=[('sep_conv_5x5', 0), ('dil_conv_5x5', 1), ('avg_pool_3x3', 0), ('skip_connect', 2), ('max_pool_3x3', 3), ('dil_conv_3x3', 1), ('sep_conv_3x3', 4), ('skip_connect', 0)], normal_concat=[2, 3, 4, 5], reduce=[('skip_connect', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 0), ('avg_pool_3x3', 2), ('skip_connect', 1), ('sep_conv_3x3', 3), ('dil_conv_3x3', 4), ('max_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
    )
    .unwrap();
    let g = genotype.to_str().unwrap();
    let (float, int8) = (dir.path().join("f.onnx"), dir.path().join("q.onnx"));
    let sizes = ["--channels", "4", "--layers", "4", "--identity"];
    let mut export = vec![
        "export",
        "--genotype",
        g,
        "--in-channels",
        "1",
        "--image-size",
        "28",
    ];
    export.extend_from_slice(&sizes);
    export.extend_from_slice(&["--out", float.to_str().unwrap()]);
    let (ok, _, err) = splitnas(&export);
    assert!(ok, "{err}");
    let (ok, _, err) = splitnas(&[
        "quantize",
        float.to_str().unwrap(),
        "--out",
        int8.to_str().unwrap(),
        "--dataset",
        "fashion-mnist",
        "--calibration-images",
        "8",
    ]);
    assert!(ok, "{err}");
    let out = dir.path().join("plan");
    let (ok, stdout, err) = splitnas(&[
        "compile",
        int8.to_str().unwrap(),
        "--target",
        "cortex-m4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let mut args = vec![g];
    args.extend_from_slice(&sizes);
    let priced = cost_model(&args);
    let compiled = pairs(&stdout);
    for key in ["macs", "sram_bytes", "flash_bytes"] {
        let k = if key == "sram_bytes" {
            "sram_peak_bytes"
        } else {
            key
        };
        assert_eq!(priced[key], compiled[k], "{key}: {stdout}");
    }
    assert!(priced["params"] > 0);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn compiled_plan_matches_the_int8_engine_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let int8 = int8_file(dir.path());
    let out = dir.path().join("m4");
    let (ok, stdout, err) = splitnas(&[
        "compile",
        &int8,
        "--target",
        "cortex-m4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    println!("{stdout}");
    let f = pairs(&stdout);
    let (flash, peak, macs) = (f["flash_bytes"], f["sram_peak_bytes"], f["macs"]);
    let (sum, lb) = (f["activations_sum_bytes"], f["lower_bound_bytes"]);
    println!(
        "DARTS_V2 C=8 L=5 1x28x28: flash {flash} B, sram peak {peak} B, lower bound {lb} B ({:.3}x), sum of activations {sum} B, {macs} MACs",
        peak as f64 / lb as f64
    );
    let plan_path = out.join("model.plan");
    let bytes = std::fs::read(&plan_path).unwrap();
    assert_eq!(flash, bytes.len() as u64);
    assert!(lb <= peak && peak < sum, "{stdout}");
    assert!(peak as f64 <= 1.1 * lb as f64, "{stdout}");
    assert!(flash <= 1 << 20 && peak <= 256 << 10, "{stdout}");
    assert!(macs > 1_000_000, "{stdout}");
    // the search's cost model counts the same MACs from the genotype alone, and the plan
    // `genotype show --cost` makes from seeded weights and synthetic calibration images
    // has this plan's arena and length (they depend on shapes alone)
    let priced = cost_model(&["DARTS_V2", "--channels", "8", "--layers", "5"]);
    assert_eq!(macs, priced["macs"]);
    assert_eq!(peak, priced["sram_bytes"]);
    assert_eq!(flash, priced["flash_bytes"]);
    // the op order: the smallest arena of the candidates, never above the program's; the
    // engine below runs the program's order, so the codes check the reordering too
    let order = stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("order="))
        .expect("an order= line");
    assert!(
        ["program", "min-growth", "min-alive"].contains(&order),
        "{stdout}"
    );
    assert!(peak <= f["program_order_sram_bytes"], "{stdout}");

    // in-process: the engine against micro on 8 images
    type Cpu = burn::backend::Flex;
    let model = splitnas_runtime::with_int8(true, || {
        Model::<Cpu>::load(Path::new(&int8), &Default::default()).unwrap()
    });
    assert_eq!(model.engine(), "int8", "{:?}", model.engine_note());
    let n = 8;
    let x = input_images(n, 1, 28, 28);
    let engine = model.run_host(&x, n).unwrap();
    let plan = PlanModel::new(bytes.clone()).unwrap();
    assert_eq!(plan.input_shape(), [1, 28, 28]);
    assert_eq!(plan.arena_len() as u64, peak);
    let micro = plan.run_host(&x, n).unwrap();
    assert_eq!(
        bits(&micro),
        bits(&engine),
        "micro {micro:?}\nengine {engine:?}"
    );
    // not all one class: the logits carry the images
    assert!(engine.chunks(10).any(|r| r != &engine[..10]));

    // through the binary: `splitnas run` on the plan and on the ONNX file
    let xs = dir.path().join("x.npy");
    write_npy(&xs, &x, &[n as u64, 1, 28, 28]);
    let (ya, yb) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    let (ok, _, err) = splitnas(&[
        "run",
        plan_path.to_str().unwrap(),
        "--input",
        xs.to_str().unwrap(),
        "--output",
        ya.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("engine: micro plan"), "{err}");
    let (ok, _, err) = splitnas(&[
        "run",
        &int8,
        "--input",
        xs.to_str().unwrap(),
        "--output",
        yb.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("engine: int8"), "{err}");
    let ((sa, a), (sb, b)) = (read_npy(&ya), read_npy(&yb));
    assert_eq!(sa, [n as u64, 10]);
    assert_eq!((sa, bits(&a)), (sb, bits(&b)));
    assert_eq!(bits(&a), bits(&engine));

    // an image: normalized with model.json's mean/std beside the plan, as the ONNX
    // file's metadata says; the same lines printed
    let png = dir.path().join("i.png");
    let pixels: Vec<u8> = (0..28 * 28).map(|i| (i * 37 % 256) as u8).collect();
    image::GrayImage::from_raw(28, 28, pixels)
        .unwrap()
        .save(&png)
        .unwrap();
    let on = |file: &str| {
        let (ok, out, err) = splitnas(&["run", file, "--input", png.to_str().unwrap()]);
        assert!(ok, "{err}");
        out
    };
    assert!(out.join("model.json").exists());
    assert_eq!(on(plan_path.to_str().unwrap()), on(&int8));

    // the host target writes the same plan (no budget)
    let host = dir.path().join("host");
    let (ok, stdout_host, err) = splitnas(&[
        "compile",
        &int8,
        "--target",
        "host",
        "--out",
        host.to_str().unwrap(),
        "--eval",
        "--eval-images",
        "60",
        "--dataset",
        "fashion-mnist",
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(host.join("model.plan")).unwrap(), bytes);
    assert_eq!(pairs(&stdout_host)["sram_peak_bytes"], peak);
    // --eval: the plan and the engine on 60 test images, every row bit-identical (the
    // engine is the independent executor, as above)
    let line = stdout_host
        .lines()
        .find(|l| l.starts_with("plan_acc="))
        .unwrap_or_else(|| panic!("no plan_acc= line: {stdout_host}"));
    let (mut plan_acc, mut int8_acc) = (None, None);
    for kv in line.split_whitespace() {
        match kv.split_once('=') {
            Some(("plan_acc", v)) => plan_acc = v.parse::<f64>().ok(),
            Some(("int8_acc", v)) => int8_acc = v.parse::<f64>().ok(),
            Some(("identical_logits", v)) => assert_eq!(v, "60/60", "{line}"),
            _ => panic!("unexpected {kv} in {line}"),
        }
    }
    assert_eq!(plan_acc, int8_acc, "{line}");
    assert!(plan_acc.is_some_and(|a| (0.0..=1.0).contains(&a)), "{line}");
}

#[test]
fn budgets_and_corrupt_plans_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let int8 = int8_file(dir.path());
    let out = dir.path().join("tiny");
    let (ok, stdout, err) = splitnas(&[
        "compile",
        &int8,
        "--target",
        "cortex-m4",
        "--sram",
        "4096",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    println!("{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    let line = err.lines().next().unwrap();
    assert!(line.starts_with("error: "), "{err}");
    assert!(line.contains("over the budget of 4096 bytes"), "{err}");
    assert!(line.contains("the largest tensor '"), "{err}");
    assert!(!out.join("model.plan").exists());
    let (ok, _, err) = splitnas(&[
        "compile",
        &int8,
        "--target",
        "cortex-m4",
        "--flash",
        "1000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "{err}");
    assert!(err.contains("over the flash budget of 1000 bytes"), "{err}");
    assert!(err.contains("the largest weights are op"), "{err}");

    // a plan with one byte changed: parse's checksum, one line, exit 1, no panic
    let good = dir.path().join("good");
    let (ok, _, err) = splitnas(&[
        "compile",
        &int8,
        "--target",
        "host",
        "--out",
        good.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let mut bytes = std::fs::read(good.join("model.plan")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let bad = dir.path().join("bad.plan");
    std::fs::write(&bad, &bytes).unwrap();
    let xs = dir.path().join("x.npy");
    write_npy(&xs, &input_images(1, 1, 28, 28), &[1, 1, 28, 28]);
    let (ok, _, err) = splitnas(&[
        "run",
        bad.to_str().unwrap(),
        "--input",
        xs.to_str().unwrap(),
    ]);
    assert!(!ok, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{err}"); // the error, then the test's exit status
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains("bad.plan: not a valid plan"), "{err}");
    assert!(lines[0].contains("checksum"), "{err}");
    assert!(lines[1].contains("exit status: 1"), "{err}");
}
