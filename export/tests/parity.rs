//! The compact network and its ONNX file against the Burn network they come from.
//!
//! Golden values: the Burn evaluation network (`models::Network`, inference mode, running
//! statistics) with random weights, random BatchNorm affine parameters and non-trivial
//! running statistics (three training-mode forward passes on random batches). Tolerances:
//! compact (folded) network run by Burn within 1e-5, the ONNX file run by tract (an
//! independent ONNX implementation) within 1e-4, max abs over the logits.
//!
//! With `SPLITNAS_ONNX_CHECKS=DIR` every ONNX file is kept in DIR with its input and the
//! Burn logits (`NAME.json`), for `.ci/run`'s onnx checker + onnxruntime comparison.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use onnx_protobuf::Message;
use splitnas_export::{compact, onnx, to_onnx_bytes, Metadata};
use splitnas_models::{Genotype, Network, NetworkConfig};
use tract_onnx::prelude::*;

type B = Flex;
type A = Autodiff<Flex>;

/// Replaces every 1-D parameter (BatchNorm gamma/beta, classifier bias) with U(0.5, 1.5),
/// so the folded affine parameters are far from the identity.
struct Affine;

impl ModuleMapper<A> for Affine {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
        if D != 1 {
            return param;
        }
        param.map(|t| {
            let shape = t.shape();
            Tensor::random(shape, Distribution::Uniform(0.5, 1.5), &t.device())
        })
    }
}

/// A zoo name, or `STAGED`: a per-stage genotype (LFR-DARTS) with DARTS_V1, DARTS_V2 and
/// PC_DARTS as its three stages.
fn genotype(name: &str) -> Genotype {
    if name == "STAGED" {
        let pairs = ["DARTS_V1", "DARTS_V2", "PC_DARTS"]
            .map(|n| Genotype::resolve(n).unwrap().stages()[0].clone())
            .to_vec();
        return Genotype::new(pairs).unwrap();
    }
    Genotype::resolve(name).unwrap()
}

fn network(name: &str, identity: bool, in_c: usize, side: usize) -> (NetworkConfig, Network<B>) {
    let cfg = NetworkConfig::new(genotype(name))
        .with_channels(8)
        .with_layers(5)
        .with_classes(10)
        .with_in_channels(in_c)
        .with_image_size(side)
        .with_auxiliary(true)
        .with_identity(identity);
    let device = Default::default();
    A::seed(&device, 7);
    let net: Network<A> = cfg.init(&device).unwrap().map(&mut Affine);
    // Training-mode passes move the running statistics away from (0, 1).
    for _ in 0..3 {
        let x = Tensor::<A, 4>::random(
            [4, in_c, side, side],
            Distribution::Normal(0.5, 2.0),
            &device,
        );
        let _ = net.forward_train(x, 0.0);
    }
    (cfg, net.valid())
}

fn input(n: usize, in_c: usize, side: usize) -> Tensor<B, 4> {
    Tensor::random(
        [n, in_c, side, side],
        Distribution::Normal(0.0, 1.0),
        &Default::default(),
    )
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs the ONNX bytes with tract; `batch` None keeps the file's symbolic batch dimension.
fn tract_logits(bytes: &[u8], x: &[f32], shape: [usize; 4], fix_batch: bool) -> Vec<f32> {
    let mut model = tract_onnx::onnx().model_for_read(&mut &*bytes).unwrap();
    if fix_batch {
        model = model.with_input_fact(0, f32::fact(shape).into()).unwrap();
    }
    let runnable = model.into_optimized().unwrap().into_runnable().unwrap();
    let input: tract_onnx::prelude::Tensor =
        tract_ndarray::Array4::from_shape_vec(shape, x.to_vec())
            .unwrap()
            .into();
    let out = runnable.run(tvec!(input.into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn check(name: &str, identity: bool, in_c: usize, side: usize) {
    let (cfg, net) = network(name, identity, in_c, side);
    let x = input(3, in_c, side);
    let reference = values(net.forward(x.clone()));

    let compact = compact(&net, &cfg).unwrap();
    let folded = values(compact.forward(x.clone()));
    let d_folded = max_abs(&folded, &reference);
    assert!(
        d_folded < 1e-5,
        "{name} identity={identity} {in_c}x{side}: folded vs Burn {d_folded}"
    );

    let meta = Metadata::untrained(&cfg);
    let (_, bytes) = to_onnx_bytes(&net, &cfg, &meta).unwrap();
    let xs = values(x);
    let shape = [3, in_c, side, side];
    for fix_batch in [true, false] {
        let ours = tract_logits(&bytes, &xs, shape, fix_batch);
        let d = max_abs(&ours, &reference);
        assert!(d < 1e-4, "{name} identity={identity} {in_c}x{side}: tract vs Burn {d} (fixed batch: {fix_batch})");
        eprintln!("{name} identity={identity} {in_c}x{side}: folded vs Burn {d_folded:.1e}, tract vs Burn {d:.1e} (fixed batch: {fix_batch})");
    }
    // The logits must depend on the input (a constant network would pass trivially).
    let spread = reference.iter().copied().fold(f32::MIN, f32::max)
        - reference.iter().copied().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3, "{name}: logits nearly constant");

    if let Ok(dir) = std::env::var("SPLITNAS_ONNX_CHECKS") {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        let stem = format!(
            "{name}_{}_{in_c}x{side}",
            if identity { "identity" } else { "plain" }
        );
        std::fs::write(dir.join(format!("{stem}.onnx")), &bytes).unwrap();
        let json = serde_json::json!({"input_shape": shape, "input": xs, "logits": reference, "tolerance": 1e-4});
        std::fs::write(dir.join(format!("{stem}.json")), json.to_string()).unwrap();
    }
}

#[test]
fn darts_v1_matches_burn_gray_and_rgb_with_and_without_identity() {
    for (in_c, side) in [(1, 28), (3, 32)] {
        for identity in [false, true] {
            check("DARTS_V1", identity, in_c, side);
        }
    }
}

#[test]
fn darts_v2_matches_burn_gray_and_rgb_with_and_without_identity() {
    for (in_c, side) in [(1, 28), (3, 32)] {
        for identity in [false, true] {
            check("DARTS_V2", identity, in_c, side);
        }
    }
}

/// A per-stage genotype (what `splitnas search --progressive 3` writes).
#[test]
fn per_stage_genotype_matches_burn() {
    assert_eq!(genotype("STAGED").stages().len(), 3);
    for (in_c, side) in [(1, 28), (3, 32)] {
        check("STAGED", true, in_c, side);
    }
}

#[test]
fn pc_darts_matches_burn_gray_and_rgb_with_and_without_identity() {
    for (in_c, side) in [(1, 28), (3, 32)] {
        for identity in [false, true] {
            check("PC_DARTS", identity, in_c, side);
        }
    }
}

/// The file's structure: opset, IR version, symbolic batch, raw_data initializers, no
/// BatchNorm, the metadata, node names from the network.
#[test]
fn onnx_file_has_the_promised_structure() {
    let (cfg, net) = network("DARTS_V2", true, 1, 28);
    let mut meta = Metadata::untrained(&cfg);
    meta.mean = vec![0.286];
    meta.std = vec![0.353];
    meta.dataset = "fashion-mnist".into();
    let (compact, bytes) = to_onnx_bytes(&net, &cfg, &meta).unwrap();
    let model = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    assert_eq!(model.ir_version, 8);
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].version, 17);
    let g = model.graph.as_ref().unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name, "input");
    let dims = &g.input[0].type_.tensor_type().shape.dim;
    assert_eq!(dims.len(), 4);
    assert!(dims[0].has_dim_param() && !dims[0].dim_param().is_empty());
    assert_eq!(
        [
            dims[1].dim_value(),
            dims[2].dim_value(),
            dims[3].dim_value()
        ],
        [1, 28, 28]
    );
    assert_eq!(g.output[0].name, "logits");
    assert_eq!(g.node.len(), compact.nodes.len());
    assert!(g.node.iter().all(|n| n.op_type != "BatchNormalization"));
    for t in &g.initializer {
        assert!(
            !t.raw_data.is_empty() && t.float_data.is_empty(),
            "{} not raw_data",
            t.name
        );
    }
    let names: Vec<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
    for expected in [
        "stem/conv",
        "cell0/node0/edge0/sep_conv_3x3/dw1",
        "cell0/node0/edge0/sep_conv_3x3/pw2",
        "cell1/node0/edge0/max_pool_3x3",
        "cell2/pre0/conv1",
        "cell2/pre0/shift",
        "cell0/identity/conv",
        "cell1/identity/concat",
        "head/classifier",
    ] {
        assert!(
            names.contains(&expected),
            "no node {expected}; nodes: {names:?}"
        );
    }
    // DARTS_V2's normal cell reads s0 and s1 with several ops: one ReLU per value.
    let relus_of_s1 = g
        .node
        .iter()
        .filter(|n| n.op_type == "Relu" && n.input[0] == "cell0/pre1/conv")
        .count();
    assert_eq!(relus_of_s1, 1);
    // AveragePool never appears in DARTS_V2; MaxPool in its reduction cell does.
    assert!(g.node.iter().any(|n| n.op_type == "MaxPool"));
    let props: std::collections::HashMap<&str, &str> = model
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(props["genotype"], cfg.genotype.to_darts());
    assert_eq!(
        serde_json::from_str::<Vec<f32>>(props["mean"]).unwrap(),
        vec![0.286]
    );
    assert_eq!(
        serde_json::from_str::<Vec<f32>>(props["std"]).unwrap(),
        vec![0.353]
    );
    assert_eq!(
        serde_json::from_str::<Vec<String>>(props["classes"])
            .unwrap()
            .len(),
        10
    );
    assert_eq!(props["dataset"], "fashion-mnist");
    assert_eq!(props["splitnas_version"], env!("CARGO_PKG_VERSION"));
    // Folding removes every BatchNorm parameter and the auxiliary head; what is left is
    // the convolutions' weights, the folded biases and the classifier.
    let aux = splitnas_models::count_parameters(net.auxiliary.as_ref().unwrap());
    assert!(compact.parameters() < splitnas_models::count_parameters(&net) - aux);
    assert_eq!(
        compact.parameters(),
        g.initializer
            .iter()
            .filter(|t| t.data_type == 1)
            .map(|t| t.dims.iter().product::<i64>() as usize)
            .sum::<usize>()
    );
    let _ = onnx::OPSET;
}

/// A genotype whose weights belong to another genotype is refused with the node's name.
#[test]
fn weights_of_another_genotype_are_refused() {
    let (cfg, net) = network("DARTS_V2", false, 1, 28);
    let mut other = cfg.clone();
    other.genotype = Genotype::resolve("DARTS_V1").unwrap();
    let err = compact(&net, &other).unwrap_err().to_string();
    assert!(
        err.contains("cell0") && err.contains("do not match the genotype"),
        "{err}"
    );
    let narrow = cfg.clone().with_channels(6);
    let err = compact(&net, &narrow).unwrap_err().to_string();
    assert!(err.contains("stem/conv") && err.contains("shape"), "{err}");
}
