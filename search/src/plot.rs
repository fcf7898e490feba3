//! Pictures of a run: training curves (loss and accuracy per epoch) for a training or a
//! search run, and for a search run the evolution of each edge's op weights
//! (softmax(alpha) after every epoch). SVG and PNG, drawn with plotters; the PNG text
//! uses the DejaVu Sans font compiled into the binary (`assets/fonts/`), so no system
//! fonts are needed.

use crate::checkpoint::write_atomic;
use crate::search::SearchMetrics;
use crate::train::EpochMetrics;
use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Problems reading a run or writing its pictures; each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// Neither `metrics.jsonl` nor `search.jsonl` in the directory.
    #[error("{0}: not a run directory (no metrics.jsonl from `splitnas train` or search.jsonl from `splitnas search`)")]
    NotARun(PathBuf),
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line that is not a metrics record.
    #[error("{path}: line {line}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The run has not finished an epoch yet.
    #[error("{0}: no epochs recorded yet")]
    Empty(PathBuf),
    /// Writing a picture failed.
    #[error(transparent)]
    Write(#[from] crate::train::TrainError),
    /// plotters failed.
    #[error("{path}: drawing failed: {problem}")]
    Draw {
        /// The picture being drawn.
        path: PathBuf,
        /// plotters' message.
        problem: String,
    },
}

const FONT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../assets/fonts/DejaVuSans.ttf"
));

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A font compiled in: cannot be malformed at run time.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Reads a `.jsonl` file of records.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, PlotError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| PlotError::Corrupt {
                path: path.to_path_buf(),
                line: i + 1,
                problem: e.to_string(),
            })
        })
        .collect()
}

/// One curve: a name and (epoch, value) points.
struct Series {
    name: &'static str,
    points: Vec<(f64, f64)>,
}

/// Loss and accuracy side by side.
struct Curves {
    title: String,
    loss: Vec<Series>,
    acc: Vec<Series>,
}

/// Op weight per epoch for every edge of one cell type: `[edge][op][epoch]`.
struct EdgeWeights {
    title: &'static str,
    primitives: Vec<&'static str>,
    epochs: Vec<f64>,
    values: Vec<Vec<Vec<f64>>>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(120, 120, 120), // none
    RGBColor(31, 119, 180),  // max_pool_3x3
    RGBColor(255, 127, 14),  // avg_pool_3x3
    RGBColor(44, 160, 44),   // skip_connect
    RGBColor(214, 39, 40),   // sep_conv_3x3
    RGBColor(148, 103, 189), // sep_conv_5x5
    RGBColor(140, 86, 75),   // dil_conv_3x3
    RGBColor(227, 119, 194), // dil_conv_5x5
];

type DrawResult = Result<(), String>;

/// Epoch axis labels: whole epochs only (plotters also asks for the half-way points).
fn epoch_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn range(series: &[Series], floor_zero: bool) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if floor_zero {
        y0 = y0.min(0.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    let xs = if x1 > x0 { x0..x1 } else { x0 - 0.5..x1 + 0.5 };
    (xs, (y0 - if floor_zero { 0.0 } else { pad })..(y1 + pad))
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    series: &[Series],
    floor_zero: bool,
) -> DrawResult {
    let (xr, yr) = range(series, floor_zero);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(xr, yr)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(series.first().map_or(2, |s| s.points.len()).clamp(2, 12))
        .x_label_formatter(&epoch_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[[1, 3, 4, 2][i % 4]];
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(if floor_zero {
            SeriesLabelPosition::UpperRight
        } else {
            SeriesLabelPosition::LowerRight
        })
        .draw()
        .map_err(|e| e.to_string())
}

fn draw_curves<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Curves) -> DrawResult {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(&c.title, ("sans-serif", 20))
        .map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    draw_panel(&left, "loss", "cross-entropy", &c.loss, true)?;
    draw_panel(&right, "accuracy", "accuracy", &c.acc, false)?;
    root.present().map_err(|e| e.to_string())
}

fn draw_weights<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    cells: &[EdgeWeights],
) -> DrawResult {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let rows = root.split_evenly((cells.len(), 1));
    for (area, cell) in rows.iter().zip(cells) {
        let area = area
            .titled(cell.title, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        let (grid, legend) = area.split_vertically(area.dim_in_pixel().1 - 28);
        let edges = cell.values.len();
        let cols = 7.min(edges.max(1));
        let rows_n = edges.div_ceil(cols);
        let panels = grid.split_evenly((rows_n, cols));
        let x0 = cell.epochs.first().copied().unwrap_or(0.0);
        let x1 = cell.epochs.last().copied().unwrap_or(1.0);
        let xr = if x1 > x0 { x0..x1 } else { x0 - 0.5..x1 + 0.5 };
        // One y range for every edge of the cell, zoomed on the values.
        let all = || cell.values.iter().flatten().flatten().copied();
        let (lo, hi) = (all().fold(1.0, f64::min), all().fold(0.0, f64::max));
        let pad = ((hi - lo) * 0.08).max(0.005);
        let yr = (lo - pad).max(0.0)..(hi + pad).min(1.0);
        for (e, panel) in panels.iter().enumerate().take(edges) {
            let (node, input) = edge_name(e);
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("node {node} <- {input}"), ("sans-serif", 12))
                .margin(4)
                .x_label_area_size(18)
                .y_label_area_size(30)
                .build_cartesian_2d(xr.clone(), yr.clone())
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_labels(cell.epochs.len().clamp(2, 6))
                .y_labels(3)
                .x_label_formatter(&epoch_label)
                .y_label_formatter(&|y| format!("{y:.2}"))
                .label_style(("sans-serif", 9))
                .draw()
                .map_err(|e| e.to_string())?;
            for (k, color) in PALETTE.iter().enumerate().take(cell.primitives.len()) {
                let pts: Vec<(f64, f64)> = cell
                    .epochs
                    .iter()
                    .zip(&cell.values[e][k])
                    .map(|(&x, &y)| (x, y))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|e| e.to_string())?;
            }
        }
        // One legend for the whole cell: a colored dash and the op name per primitive.
        let n = cell.primitives.len().max(1) as i32;
        let w = legend.dim_in_pixel().0 as i32 / n;
        for (k, name) in cell.primitives.iter().enumerate() {
            let x = k as i32 * w + 8;
            legend
                .draw(&PathElement::new(
                    vec![(x, 12), (x + 18, 12)],
                    PALETTE[k % 8].stroke_width(3),
                ))
                .map_err(|e| e.to_string())?;
            legend
                .draw(&Text::new(*name, (x + 22, 5), ("sans-serif", 12)))
                .map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Edge `e` of a 4-node cell as (node, input name).
fn edge_name(e: usize) -> (usize, String) {
    let mut start = 0;
    for node in 0.. {
        let n_in = node + 2;
        if e < start + n_in {
            let input = e - start;
            let name = match input {
                0 => "c_{k-2}".to_string(),
                1 => "c_{k-1}".to_string(),
                m => format!("node {}", m - 2),
            };
            return (node, name);
        }
        start += n_in;
    }
    unreachable!("the loop returns for every edge index")
}

/// Draws one picture with `$draw(root, $data)` into `$stem.svg` and `$stem.png`.
macro_rules! render {
    ($stem:expr, $size:expr, $draw:ident, $data:expr) => {{
        let (stem, (w, h)): (&Path, (u32, u32)) = ($stem, $size);
        let svg_path = stem.with_extension("svg");
        let png_path = stem.with_extension("png");
        register_font();
        let mut svg = String::new();
        $draw(
            SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area(),
            $data,
        )
        .map_err(|problem| PlotError::Draw {
            path: svg_path.clone(),
            problem,
        })?;
        let mut rgb = vec![255u8; (w * h * 3) as usize];
        $draw(
            BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(),
            $data,
        )
        .map_err(|problem| PlotError::Draw {
            path: png_path.clone(),
            problem,
        })?;
        write_atomic(&svg_path, svg.as_bytes())?;
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
            .map_err(|e| PlotError::Draw {
                path: png_path.clone(),
                problem: e.to_string(),
            })?;
        write_atomic(&png_path, &png)?;
        vec![svg_path, png_path]
    }};
}

/// Loss and accuracy curves from rows `[epoch, train loss, held-out loss, train acc,
/// held-out acc]`; `names` labels the training and the held-out series.
fn curves(title: String, names: [&'static str; 2], rows: &[[f64; 5]]) -> Curves {
    let series = |name, col: usize| Series {
        name,
        points: rows.iter().map(|r| (r[0], r[col])).collect(),
    };
    Curves {
        title,
        loss: vec![series(names[0], 1), series(names[1], 2)],
        acc: vec![series(names[0], 3), series(names[1], 4)],
    }
}

/// Renders the pictures of the run in `run` into `out` (created if needed) and returns
/// the files written: `curves.svg`/`.png` (loss and accuracy per epoch) for a training or
/// a search run, plus `op_weights.svg`/`.png` (softmax(alpha) of every edge per epoch,
/// normal and reduction cell) for a search run. A directory with both a search and a
/// training run gets `search_curves.*` and `train_curves.*`.
pub fn plot_run(run: &Path, out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let train_file = run.join("metrics.jsonl");
    let search_file = run.join("search.jsonl");
    let (has_train, has_search) = (train_file.exists(), search_file.exists());
    if !has_train && !has_search {
        return Err(PlotError::NotARun(run.to_path_buf()));
    }
    std::fs::create_dir_all(out).map_err(|source| PlotError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let both = has_train && has_search;
    let mut written = vec![];
    if has_train {
        let m: Vec<EpochMetrics> = read_jsonl(&train_file)?;
        if m.is_empty() {
            return Err(PlotError::Empty(train_file));
        }
        let rows: Vec<[f64; 5]> = m
            .iter()
            .map(|e| {
                [
                    e.epoch as f64,
                    e.train_loss,
                    e.test_loss,
                    e.train_acc,
                    e.test_acc,
                ]
            })
            .collect();
        let c = curves(
            format!("training run {}", run.display()),
            ["train", "test"],
            &rows,
        );
        let stem = out.join(if both { "train_curves" } else { "curves" });
        written.extend(render!(&stem, (960, 400), draw_curves, &c));
    }
    if has_search {
        let m: Vec<SearchMetrics> = read_jsonl(&search_file)?;
        if m.is_empty() {
            return Err(PlotError::Empty(search_file));
        }
        let rows: Vec<[f64; 5]> = m
            .iter()
            .map(|e| {
                [
                    e.epoch as f64,
                    e.train_loss,
                    e.valid_loss,
                    e.train_acc,
                    e.valid_acc,
                ]
            })
            .collect();
        let c = curves(
            format!("search run {}", run.display()),
            ["train (weight half)", "valid (architecture half)"],
            &rows,
        );
        let stem = out.join(if both { "search_curves" } else { "curves" });
        written.extend(render!(&stem, (960, 400), draw_curves, &c));
        let with_weights: Vec<&SearchMetrics> = m.iter().filter(|e| e.weights.is_some()).collect();
        if !with_weights.is_empty() {
            let cells: Vec<EdgeWeights> = [
                ("normal cell: softmax(alpha) per edge", false),
                ("reduction cell: softmax(alpha) per edge", true),
            ]
            .into_iter()
            .map(|(title, reduce)| {
                let get = |e: &SearchMetrics| {
                    let w = e.weights.as_ref().expect("filtered on weights");
                    if reduce {
                        w.reduce.alphas.clone()
                    } else {
                        w.normal.alphas.clone()
                    }
                };
                let first = get(with_weights[0]);
                let (edges, ops) = (first.len(), first.first().map_or(0, |r| r.len()));
                let mut values = vec![vec![vec![]; ops]; edges];
                for e in &with_weights {
                    let a = get(e);
                    for (edge, row) in a.iter().enumerate().take(edges) {
                        for (k, &v) in row.iter().enumerate().take(ops) {
                            values[edge][k].push(v as f64);
                        }
                    }
                }
                EdgeWeights {
                    title,
                    primitives: splitnas_models::Primitive::ALL
                        .iter()
                        .map(|p| p.name())
                        .take(ops)
                        .collect(),
                    epochs: with_weights.iter().map(|e| e.epoch as f64).collect(),
                    values,
                }
            })
            .collect();
            written.extend(render!(
                &out.join("op_weights"),
                (1400, 900),
                draw_weights,
                &cells
            ));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_names_follow_darts_order() {
        // DARTS edge order: node 0 <- (s0, s1), node 1 <- (s0, s1, n0), ...
        assert_eq!(edge_name(0), (0, "c_{k-2}".into()));
        assert_eq!(edge_name(1), (0, "c_{k-1}".into()));
        assert_eq!(edge_name(4), (1, "node 0".into()));
        assert_eq!(edge_name(13), (3, "node 2".into()));
    }
}
