//! `splitnas compile`: an int8 QDQ ONNX file -> `DIR/model.plan` for a microcontroller
//! (`splitnas_export::plan`: the runtime's int8 program, op by op, with a static memory
//! plan), checked against the target's SRAM and flash budgets; `DIR/model.json` keeps
//! the file's mean, std and class names for `splitnas run DIR/model.plan` on images.

use super::args::{choice, CompileTarget, OptionalDataArgs};
use super::{errors, testset};
use anyhow::{bail, Context, Result};
use clap::Args;
use splitnas_export::plan::{compile, Budget};
use splitnas_runtime::micro_plan::{PlanMeta, PlanModel};
use splitnas_runtime::{with_int8, Model};
use std::path::PathBuf;

type Cpu = burn::backend::Flex;

/// A Cortex-M4's default budget: 256 KiB of SRAM, 1 MiB of flash.
const M4_BUDGET: (u64, u64) = (256 * 1024, 1024 * 1024);

#[derive(Args)]
pub struct CompileArgs {
    /// The int8 QDQ ONNX file (`splitnas quantize`'s).
    file: PathBuf,
    /// cortex-m4 (budget: 256 KiB SRAM, 1 MiB flash unless given) or host (no budget
    /// unless given; run the plan with `splitnas run DIR/model.plan`).
    #[arg(long, value_parser = choice::<CompileTarget>(), hide_possible_values = true)]
    target: CompileTarget,
    /// The folder to write model.plan (and model.json) into.
    #[arg(long)]
    out: PathBuf,
    /// SRAM budget in bytes: the activations' arena must fit.
    #[arg(long)]
    sram: Option<u64>,
    /// Flash budget in bytes: the plan must fit.
    #[arg(long)]
    flash: Option<u64>,
    /// Run the plan (on the host, with splitnas-micro) and the int8 file (the runtime's
    /// int8 engine) on the test split and print `plan_acc=... int8_acc=...
    /// identical_logits=N/M`.
    #[arg(long)]
    eval: bool,
    /// With --eval: only the first N test images (default: the whole test split).
    #[arg(long, requires = "eval")]
    eval_images: Option<usize>,
    #[command(flatten)]
    data: OptionalDataArgs,
}

pub fn run(a: CompileArgs) -> Result<()> {
    if a.eval_images == Some(0) {
        bail!("--eval-images: must be at least 1 (got 0)");
    }
    let file = a.file.display().to_string();
    let bytes = std::fs::read(&a.file).with_context(|| format!("cannot read {file}"))?;
    let model = with_int8(true, || {
        Model::<Cpu>::from_bytes(&bytes, &Default::default())
    })
    .map_err(errors::runtime)
    .with_context(|| file.clone())?;
    let Some(program) = model.int8_program() else {
        bail!(
            "{file}: not an int8 model the int8 engine runs ({}); compile takes `splitnas quantize`'s QDQ files",
            model.engine_note().unwrap_or("no QuantizeLinear / DequantizeLinear nodes")
        );
    };
    let budget = match a.target {
        CompileTarget::CortexM4 => Budget {
            sram: Some(a.sram.unwrap_or(M4_BUDGET.0)),
            flash: Some(a.flash.unwrap_or(M4_BUDGET.1)),
        },
        CompileTarget::Host => Budget {
            sram: a.sram,
            flash: a.flash,
        },
    };
    let c = compile(program, model.input_shape(), budget).with_context(|| file.clone())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let plan = a.out.join("model.plan");
    splitnas_export::write_atomic(&plan, &c.bytes)
        .with_context(|| format!("--out {}", a.out.display()))?;
    let meta = PlanMeta {
        mean: model.mean(),
        std: model.std(),
        classes: model.classes(),
    };
    let json = serde_json::to_vec_pretty(&meta)?;
    splitnas_export::write_atomic(&PlanMeta::path(&plan), &json)
        .with_context(|| format!("--out {}", a.out.display()))?;
    let target = match a.target {
        CompileTarget::CortexM4 => "cortex-m4",
        CompileTarget::Host => "host",
    };
    println!("wrote {}: {} ops for {target}", plan.display(), c.ops);
    println!(
        "flash_bytes={} sram_peak_bytes={} macs={}",
        c.flash_bytes, c.sram_peak, c.macs
    );
    println!(
        "activations_sum_bytes={} lower_bound_bytes={}",
        c.activations_sum, c.lower_bound
    );
    println!(
        "order={} program_order_sram_bytes={}",
        c.order, c.program_order_sram
    );
    if a.eval {
        evaluate(&a, &file, &model, c.bytes)?;
    }
    Ok(())
}

/// `--eval`: the plan and the int8 engine on the test split, accuracy and how many
/// images' logits are bit-identical.
fn evaluate(a: &CompileArgs, file: &str, model: &Model<Cpu>, plan: Vec<u8>) -> Result<()> {
    let kind = testset::dataset_kind(file, &a.data, model.metadata())?;
    let set = testset::load(kind, &a.data, a.eval_images, 0)?;
    let Some((mean, std)) = model.mean().zip(model.std()) else {
        bail!("{file}: --eval: no usable mean/std in the file's metadata to normalize images");
    };
    let plan = PlanModel::new(plan).context("--eval: the compiled plan")?;
    let k = model.num_classes();
    let ms = (&mean[..], &std[..]);
    let engine = |x: &[f32], n| model.run_host(x, n).map_err(errors::runtime);
    let (int8_acc, a_logits) = testset::evaluate(&set.test, ms, k, engine)?;
    let micro = |x: &[f32], n| Ok(plan.run_host(x, n)?);
    let (plan_acc, b_logits) = testset::evaluate(&set.test, ms, k, micro)?;
    let same = a_logits
        .chunks(k.max(1))
        .zip(b_logits.chunks(k.max(1)))
        .filter(|(a, b)| a.iter().zip(*b).all(|(x, y)| x.to_bits() == y.to_bits()))
        .count();
    println!(
        "plan_acc={plan_acc:.4} int8_acc={int8_acc:.4} identical_logits={same}/{}",
        set.test.len()
    );
    Ok(())
}
