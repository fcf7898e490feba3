//! `splitnas compile`: an int8 QDQ ONNX file -> `DIR/model.plan` for a microcontroller
//! (`splitnas_export::plan`: the runtime's int8 program, op by op, with a static memory
//! plan), checked against the target's SRAM and flash budgets; `DIR/model.json` keeps
//! the file's mean, std and class names for `splitnas run DIR/model.plan` on images.

use super::args::{choice, CompileTarget};
use super::errors;
use anyhow::{bail, Context, Result};
use clap::Args;
use splitnas_export::plan::{compile, Budget};
use splitnas_runtime::micro_plan::PlanMeta;
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
}

pub fn run(a: CompileArgs) -> Result<()> {
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
    Ok(())
}
