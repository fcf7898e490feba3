//! Flag groups several commands share (`#[command(flatten)]`; their structs carry no doc
//! comment, which clap would take for the command's about text) and the named values of
//! `--dataset`, `--selector`, `--order` and `--method` (`--device` is the runtime's
//! `DeviceArg`).
//!
//! A named value that matches none of its choices fails with the message the commands
//! have always printed (`--dataset: unknown data set 'x' (expected ...)`, exit code 1)
//! rather than clap's usage error: `main` recognises it by its [`UnknownValue`] source.

use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Args, ValueEnum};
use splitnas_search::architect::Order as LibOrder;
use splitnas_search::data::DatasetKind;
use splitnas_search::mixed_op::SelectorKind;
use splitnas_search::supernet::SupernetConfig;
use std::marker::PhantomData;
use std::path::PathBuf;

/// `--device`: the same flag, parser and opening as `splitnas-run`'s (one home).
pub use splitnas_runtime::cli::DeviceArg;

// `--dataset` (required) and `--data-dir`.
#[derive(Args)]
pub struct DataArgs {
    /// fashion-mnist, mnist, cifar10, cifar100 or synthetic.
    #[arg(long, value_parser = choice::<Dataset>(), hide_possible_values = true)]
    pub dataset: Dataset,
    /// Directory with the data files (fashion-mnist default: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

// `--dataset` where the command has a default for it (`quantize`: the file's metadata),
// and `--data-dir`.
#[derive(Args)]
pub struct OptionalDataArgs {
    /// fashion-mnist, mnist, cifar10, cifar100 or synthetic (default: the data set the
    /// file's metadata names).
    #[arg(long, value_parser = choice::<Dataset>(), hide_possible_values = true)]
    pub dataset: Option<Dataset>,
    /// Directory with the data files (fashion-mnist default: /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

// `--seed`.
#[derive(Args)]
pub struct SeedArg {
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

// `--out` and `--resume` of a run that checkpoints.
#[derive(Args)]
pub struct RunDirArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out after its last checkpoint.
    #[arg(long)]
    pub resume: bool,
}

// The search method: `--partial-k`, `--selector`, `--spatial-reconstruction`,
// `--learn-proportion` and `--order` (search and `bench search-step`).
#[derive(Args)]
pub struct MethodArgs {
    /// Partial channel factor K: C/K channels of each edge enter the operations (1 = DARTS).
    /// Default 4.
    #[arg(long)]
    pub partial_k: Option<usize>,
    /// Channel selection: split (CSC-DARTS: fixed split + channel shuffle), random
    /// (PC-DARTS-style subset per step) or attention (ADARTS: top-scored channels of a
    /// channel-attention module, weighted by their scores).
    #[arg(
        long,
        default_value = "split",
        value_parser = choice::<Selector>(),
        hide_possible_values = true
    )]
    pub selector: Selector,
    /// Slim-DARTS: a spatial reconstruction unit (group-norm gated, cross-reconstructed)
    /// on the channels entering every MixedOp.
    #[arg(long)]
    pub spatial_reconstruction: bool,
    /// Slim-DARTS: learn each edge's proportion of processed channels (a softmax mixture of
    /// 1/2, 1/4 and 1/8, trained with the architecture) instead of a fixed --partial-k.
    #[arg(long, conflicts_with = "partial_k")]
    pub learn_proportion: bool,
    /// Architecture gradient: first or second (unrolled, finite-difference Hessian).
    #[arg(
        long,
        default_value = "first",
        value_parser = choice::<Order>(),
        hide_possible_values = true
    )]
    pub order: Order,
}

impl MethodArgs {
    /// `cfg` with this method's channel selection.
    pub fn apply(&self, cfg: SupernetConfig) -> SupernetConfig {
        let cfg = cfg
            .with_selector(self.selector.into())
            .with_spatial_reconstruction(self.spatial_reconstruction)
            .with_learn_proportion(self.learn_proportion);
        match self.partial_k {
            Some(k) => cfg.with_partial_k(k),
            None => cfg,
        }
    }
}

// The network and batch sizes of the training benchmarks (synthetic data).
#[derive(Args)]
pub struct BenchSizeArgs {
    #[arg(long, default_value_t = 16)]
    pub channels: usize,
    #[arg(long, default_value_t = 8)]
    pub layers: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
}

/// A flag value that is none of its command's choices.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: unknown {noun} '{value}' (expected {expected})")]
pub struct UnknownValue {
    flag: String,
    noun: &'static str,
    value: String,
    expected: String,
}

/// A [`ValueEnum`] read by [`ChoiceParser`]: case-insensitive, aliases accepted.
pub trait Choice: ValueEnum + Clone + Send + Sync + 'static {
    /// What one value names ("device").
    const NOUN: &'static str;
}

/// Parses a [`Choice`]; a value that is none of them is an [`UnknownValue`].
pub struct ChoiceParser<E>(PhantomData<E>);

impl<E> Clone for ChoiceParser<E> {
    fn clone(&self) -> Self {
        ChoiceParser(PhantomData)
    }
}

impl<E: Choice> TypedValueParser for ChoiceParser<E> {
    type Value = E;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<E, clap::Error> {
        let flag = arg
            .and_then(|a| a.get_long())
            .map_or_else(|| E::NOUN.to_string(), |l| format!("--{l}"));
        let parse = move |s: &str| {
            E::from_str(s, true).map_err(|_| UnknownValue {
                flag: flag.clone(),
                noun: E::NOUN,
                value: s.to_string(),
                expected: expected::<E>(),
            })
        };
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            E::value_variants()
                .iter()
                .filter_map(ValueEnum::to_possible_value),
        ))
    }
}

/// "a, b or c": the names of `E`'s values.
fn expected<E: ValueEnum>() -> String {
    let names: Vec<String> = E::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// The parser of a [`Choice`] flag: `#[arg(value_parser = choice::<Order>())]` (clap
/// would otherwise pick its own `ValueEnum` parser, with its own error).
pub fn choice<E: Choice>() -> ChoiceParser<E> {
    ChoiceParser(PhantomData)
}

macro_rules! choice {
    ($t:ty, $noun:literal) => {
        impl Choice for $t {
            const NOUN: &'static str = $noun;
        }
    };
}

/// `--dataset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dataset {
    /// Fashion-MNIST.
    #[value(name = "fashion-mnist", aliases = ["fashionmnist", "fashion_mnist"])]
    FashionMnist,
    /// MNIST.
    #[value(name = "mnist")]
    Mnist,
    /// CIFAR-10.
    #[value(name = "cifar10", aliases = ["cifar-10", "cifar_10"])]
    Cifar10,
    /// CIFAR-100.
    #[value(name = "cifar100", aliases = ["cifar-100", "cifar_100"])]
    Cifar100,
    /// Seeded synthetic images.
    #[value(name = "synthetic")]
    Synthetic,
}
choice!(Dataset, "data set");

impl From<Dataset> for DatasetKind {
    fn from(d: Dataset) -> Self {
        match d {
            Dataset::FashionMnist => DatasetKind::FashionMnist,
            Dataset::Mnist => DatasetKind::Mnist,
            Dataset::Cifar10 => DatasetKind::Cifar10,
            Dataset::Cifar100 => DatasetKind::Cifar100,
            Dataset::Synthetic => DatasetKind::Synthetic,
        }
    }
}

/// `--selector`: how each edge picks the channels that enter its operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Selector {
    /// Fixed split + channel shuffle (CSC-DARTS).
    Split,
    /// A random subset per step (PC-DARTS style).
    Random,
    /// Top-scored channels of a channel-attention module (ADARTS).
    Attention,
}
choice!(Selector, "selector");

impl From<Selector> for SelectorKind {
    fn from(s: Selector) -> Self {
        match s {
            Selector::Split => SelectorKind::Split,
            Selector::Random => SelectorKind::Random,
            Selector::Attention => SelectorKind::Attention,
        }
    }
}

/// `--order`: the architecture gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// First order.
    #[value(alias = "1")]
    First,
    /// Second order (unrolled, finite-difference Hessian).
    #[value(alias = "2")]
    Second,
}
choice!(Order, "order");

impl Order {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Order::First => "first",
            Order::Second => "second",
        }
    }
}

impl From<Order> for LibOrder {
    fn from(o: Order) -> Self {
        match o {
            Order::First => LibOrder::First,
            Order::Second => LibOrder::Second,
        }
    }
}

/// `--method` of `quantize`: how activation ranges are calibrated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum QuantMethod {
    /// The observed minimum and maximum.
    #[value(name = "minmax", aliases = ["min-max", "min_max"])]
    MinMax,
    /// The 99.99% two-sided percentile range.
    Percentile,
    /// KL-divergence (entropy) calibration, as TensorRT.
    #[value(alias = "kl")]
    Entropy,
}
choice!(QuantMethod, "method");

impl From<QuantMethod> for splitnas_export::quantize::Method {
    fn from(m: QuantMethod) -> Self {
        use splitnas_export::quantize::Method;
        match m {
            QuantMethod::MinMax => Method::MinMax,
            QuantMethod::Percentile => Method::Percentile,
            QuantMethod::Entropy => Method::Entropy,
        }
    }
}

/// `compile --target`: the board a plan is for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileTarget {
    /// An ARM Cortex-M4 (default budget 256 KiB SRAM, 1 MiB flash).
    #[value(name = "cortex-m4", aliases = ["cortex_m4", "m4"])]
    CortexM4,
    /// This machine (`splitnas run model.plan`): no budget unless given.
    Host,
}
choice!(CompileTarget, "target");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_the_hand_parsers_took_is_accepted() {
        for s in [
            "fashion-mnist",
            "fashion_mnist",
            "FashionMNIST",
            "Fashion-MNIST",
            "mnist",
            "cifar10",
            "CIFAR-10",
            "cifar_10",
            "cifar100",
            "cifar-100",
            "Cifar_100",
            "synthetic",
        ] {
            let ours = Dataset::from_str(s, true).map(DatasetKind::from).ok();
            let library: Option<DatasetKind> = s.parse().ok();
            assert!(ours.is_some(), "{s}");
            assert_eq!(ours, library, "{s}");
        }
        for s in ["split", "Random", "ATTENTION"] {
            let ours = Selector::from_str(s, true).map(SelectorKind::from).ok();
            assert_eq!(ours, s.parse().ok(), "{s}");
        }
        for s in ["first", "1", "second", "2"] {
            let ours = Order::from_str(s, true).map(LibOrder::from).ok();
            assert_eq!(ours, s.parse().ok(), "{s}");
        }
    }

    #[derive(clap::Parser)]
    struct Probe {
        #[command(flatten)]
        data: DataArgs,
    }

    #[test]
    fn a_bad_value_fails_with_the_commands_message_and_a_good_one_parses() {
        use clap::Parser;
        let e = match Probe::try_parse_from(["probe", "--dataset", "imagenet"]) {
            Err(e) => e,
            Ok(_) => panic!("imagenet parsed"),
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        let bad = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<UnknownValue>())
            .expect("an UnknownValue source");
        assert_eq!(
            bad.to_string(),
            "--dataset: unknown data set 'imagenet' (expected fashion-mnist, mnist, cifar10, cifar100 or synthetic)"
        );
        let ok = |args: &[&str]| Probe::try_parse_from(args).map(|p| p.data.dataset).ok();
        assert_eq!(ok(&["probe"]), None);
        assert_eq!(ok(&["probe", "--dataset", "MNIST"]), Some(Dataset::Mnist));
        assert_eq!(
            ok(&["probe", "--dataset", "Fashion_MNIST"]),
            Some(Dataset::FashionMnist)
        );
    }

    #[test]
    fn expected_lists_the_names() {
        assert_eq!(expected::<Order>(), "first or second");
    }
}
