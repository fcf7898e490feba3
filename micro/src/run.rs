//! Running a parsed plan: the input copied into its tensor, the ops in order on the
//! arena, the output copied out. Each op borrows its output tensor mutably and its inputs
//! from the arena bytes before and after it (parse checked they do not overlap), and
//! calls the kernels' allocation-free entry points.
//!
//! Requant and Add may write over an input (a dead one: parse checked the lifetimes),
//! through the kernels' in-place variants.
//!
//! A convolution runs output channel by output channel: the channel's weights are copied
//! to a stack buffer (the plan's bytes are `u8`, the kernels read `i8`, and the crate
//! reinterprets nothing), its bias and multiplier decoded, and `conv::conv_into` called on
//! the channel's group of input planes. The integers are those of one call over all
//! channels (each output is its own sum), hence the host engine's.

use crate::error::RunError;
use crate::format::{concat_part, u32_at, Dense, Op, NONE};
use crate::{Plan, Tensor, MAX_K, MAX_ROW};
use splitnas_kernels::int8::{conv, elementwise, pool, OutQ, Requant};
use splitnas_kernels::Geom;

/// The arena split around one op's output: the output, and reads of the other tensors.
struct Io<'x> {
    before: &'x [i8],
    after: &'x [i8],
    /// Arena offset where `after` starts.
    after_at: usize,
}

impl Io<'_> {
    /// Tensor `t`'s values (parse checked it lies wholly before or after the output).
    fn read(&self, t: Tensor) -> &[i8] {
        let (at, len) = (t.offset as usize, t.len as usize);
        if at + len <= self.before.len() {
            &self.before[at..at + len]
        } else {
            let at = at.saturating_sub(self.after_at);
            self.after.get(at..at + len).unwrap_or(&[])
        }
    }
}

impl Plan<'_> {
    /// Runs the plan on `input` (`input_len` values quantized by `input_quant`) into
    /// `output` (`output_len` values, quantized by `output_quant`), with `arena` (at
    /// least [`Plan::arena_len`] bytes, contents ignored) holding every activation.
    ///
    /// # Errors
    /// A short arena, or an input or output of the wrong length; nothing is computed then.
    pub fn run(&self, arena: &mut [i8], input: &[i8], output: &mut [i8]) -> Result<(), RunError> {
        let need = self.arena_len();
        if arena.len() < need {
            return Err(RunError::Arena {
                need,
                len: arena.len(),
            });
        }
        let (xt, yt) = (self.tensor(self.input), self.tensor(self.output));
        let (Some(xt), Some(yt)) = (xt, yt) else {
            return Err(RunError::Input { need: 0, len: 0 });
        };
        if input.len() != xt.len as usize {
            let need = xt.len as usize;
            return Err(RunError::Input {
                need,
                len: input.len(),
            });
        }
        if output.len() != yt.len as usize {
            let need = yt.len as usize;
            return Err(RunError::Output {
                need,
                len: output.len(),
            });
        }
        let arena = &mut arena[..need];
        arena[xt.offset as usize..][..input.len()].copy_from_slice(input);
        // `each_op` decodes the ops parse already checked: its errors cannot occur
        let _ = self.each_op(|_, op| {
            self.exec(&op, arena);
            Ok(())
        });
        output.copy_from_slice(&arena[yt.offset as usize..][..output.len()]);
        Ok(())
    }

    fn t(&self, id: u16) -> Tensor {
        self.tensor(id).unwrap_or(Tensor {
            offset: 0,
            len: 0,
            dims: [0; 3],
        })
    }

    /// One (checked) op on the arena.
    fn exec(&self, op: &Op<'_>, arena: &mut [i8]) {
        let yt = self.t(op.output());
        let (head, rest) = arena.split_at_mut(yt.offset as usize);
        let (y, after) = rest.split_at_mut(yt.len as usize);
        let io = Io {
            before: head,
            after,
            after_at: (yt.offset + yt.len) as usize,
        };
        let x = |id| io.read(self.t(id));
        match *op {
            Op::Dense(d) => self.dense(&d, x(d.x), y),
            Op::MaxPool { x: xi, g, .. } => pool::max_into(x(xi), 1, &g, y),
            Op::AvgPool {
                x: xi,
                g,
                count_pad,
                q,
                ..
            } => {
                let mut row = [0i32; MAX_ROW];
                pool::avg_into(x(xi), 1, &g, count_pad, q, y, &mut row);
            }
            Op::GlobalAvg { x: xi, hw, q, .. } => {
                pool::global_avg(x(xi), [1, y.len(), hw as usize], q, y)
            }
            // in place (parse allowed it only on the same bytes)
            Op::Requant { x: xi, q, relu, .. } if self.in_place(op, xi) => {
                elementwise::requant_in_place(y, q[0], q[1], relu)
            }
            Op::Requant { x: xi, q, relu, .. } => elementwise::requant(x(xi), q[0], q[1], relu, y),
            Op::Add { a, b, q, relu, .. } if self.in_place(op, a) => {
                elementwise::add_in_place(y, x(b), q, relu)
            }
            Op::Add { a, b, q, relu, .. } if self.in_place(op, b) => {
                elementwise::add_in_place(y, x(a), [q[1], q[0], q[2]], relu)
            }
            Op::Add { a, b, q, relu, .. } => elementwise::add(x(a), x(b), q, relu, y),
            Op::Concat {
                outer, yq, parts, ..
            } => {
                // `elementwise::concat` over `outer` blocks, part by part
                let outer = outer as usize;
                let mut at = 0;
                for o in 0..outer {
                    for i in 0..parts.len() / 3 {
                        let (p, q) = concat_part(parts, i);
                        let src = x(p);
                        let len = src.len() / outer;
                        let dst = &mut y[at..at + len];
                        elementwise::requant(&src[o * len..][..len], q, yq, false, dst);
                        at += len;
                    }
                }
            }
            Op::Slice {
                x: xi,
                dims,
                ranges,
                ..
            } => {
                let r = ranges.map(|r| (r.0 as usize, r.1 as usize, r.2 as usize));
                elementwise::slice(x(xi), dims.map(|d| d as usize), r, y)
            }
            Op::Pad {
                x: xi,
                dims,
                pads,
                fill,
                ..
            } => {
                let p = pads.map(|p| (p.0 as usize, p.1 as usize));
                elementwise::pad(x(xi), dims.map(|d| d as usize), p, fill, y)
            }
            Op::Affine {
                x: xi,
                q,
                inner,
                c,
                a,
                b,
                ..
            } => {
                // channel by channel: `[C, inner]` images, channel `ch` contiguous
                let (src, inner) = (x(xi), inner as usize);
                for ch in 0..c as usize {
                    let f = |off: u32| f32::from_bits(u32_at(self.consts, off as usize + 4 * ch));
                    let (xs, ys) = (&src[ch * inner..][..inner], &mut y[ch * inner..][..inner]);
                    elementwise::affine(xs, q, inner, &[f(a)], &[f(b)], ys);
                }
            }
        }
    }

    /// A convolution or fully connected layer, output channel by output channel.
    fn dense(&self, d: &Dense, x: &[i8], y: &mut [i8]) {
        let (m, consts) = (d.m as usize, self.consts);
        let k = match d.geom {
            Some(g) => g.c / d.groups as usize * g.kh * g.kw,
            None => d.k as usize,
        };
        let mut wt = [0i8; MAX_K];
        let mut row = [0i32; MAX_ROW];
        let out = OutQ::with_relu(d.out_zero, d.relu);
        let word = |at: usize| u32_at(consts, at) as i32;
        for mi in 0..m {
            let w = &mut wt[..k];
            let src = &consts[d.weights as usize + mi * k..][..k];
            for (o, &b) in w.iter_mut().zip(src) {
                *o = b as i8;
            }
            let bias = (d.bias != NONE).then(|| [word(d.bias as usize + 4 * mi)]);
            let r = d.requant as usize + 8 * if d.requants == 1 { 0 } else { mi };
            let requant = [Requant {
                multiplier: word(r),
                shift: word(r + 4),
            }];
            let f = conv::Filter {
                wt: w,
                bias: bias.as_ref().map(|b| &b[..]),
                requant: &requant,
                groups: 1,
            };
            match d.geom {
                Some(g) => {
                    // the channel's group of input planes, as a one-group convolution
                    let cg = g.c / d.groups as usize;
                    let group = mi / (m / d.groups as usize);
                    let gc = Geom { c: cg, ..g };
                    let xs = &x[group * cg * g.plane_in()..][..cg * g.plane_in()];
                    let ys = &mut y[mi * g.plane_out()..][..g.plane_out()];
                    conv::conv_into(xs, d.zx, 1, &gc, f, out, ys, &mut row);
                }
                None => conv::gemm_into(x, d.zx, [1, k], f, out, &mut y[mi..mi + 1]),
            }
        }
    }
}
