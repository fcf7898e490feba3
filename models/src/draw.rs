//! Cell diagrams as SVG, drawn the way DARTS papers draw them: the two cell inputs
//! `c_{k-2}` and `c_{k-1}` on the left, intermediate nodes `0..n` in columns by depth,
//! the output `c_{k}` on the right, each edge labelled with its operation.
//!
//! Pure Rust string output (no Graphviz): nodes are placed in columns by their longest
//! path from the inputs, stacked within a column, edges are straight lines with the op
//! name on a white label box.

use crate::genotype::{CellGenotype, Genotype};
use std::fmt::Write;

const COL_W: f64 = 230.0;
const ROW_H: f64 = 100.0;
const NODE_W: f64 = 70.0;
const NODE_H: f64 = 34.0;
const MARGIN: f64 = 30.0;
const TITLE_H: f64 = 34.0;

/// A node of the drawn cell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Input,
    Inner,
    Output,
}

struct Node {
    label: String,
    kind: Kind,
    x: f64,
    y: f64,
}

struct Panel {
    svg: String,
    width: f64,
    height: f64,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Column of each node: inputs 0, node i one right of its deepest input.
fn columns(cell: &CellGenotype) -> Vec<usize> {
    let n = cell.nodes();
    let mut col = vec![0usize; 2 + n];
    for i in 0..n {
        let deepest = cell.edges[2 * i..2 * i + 2]
            .iter()
            .map(|&(_, src)| col.get(src).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        col[2 + i] = deepest + 1;
    }
    col
}

/// One cell as an SVG group whose top-left corner is (0, 0).
fn panel(title: &str, cell: &CellGenotype) -> Panel {
    let n = cell.nodes();
    let col = columns(cell);
    let out_col = col.iter().copied().max().unwrap_or(0) + 1;
    let mut per_col = vec![0usize; out_col + 1];
    col.iter().for_each(|&c| per_col[c] += 1);
    per_col[out_col] = 1;
    let rows = per_col.iter().copied().max().unwrap_or(1).max(2);
    let height = TITLE_H + rows as f64 * ROW_H + MARGIN;
    let width = 2.0 * MARGIN + out_col as f64 * COL_W + NODE_W;
    let mut slot = vec![0usize; out_col + 1];
    let mut place = |c: usize| {
        let k = slot[c];
        slot[c] += 1;
        let offset = (rows - per_col[c]) as f64 * ROW_H / 2.0;
        (
            MARGIN + c as f64 * COL_W + NODE_W / 2.0,
            TITLE_H + offset + k as f64 * ROW_H + ROW_H / 2.0,
        )
    };
    let mut nodes: Vec<Node> = Vec::with_capacity(n + 3);
    for (i, label) in ["c_{k-2}", "c_{k-1}"].iter().enumerate() {
        let (x, y) = place(col[i]);
        nodes.push(Node {
            label: label.to_string(),
            kind: Kind::Input,
            x,
            y,
        });
    }
    for i in 0..n {
        let (x, y) = place(col[2 + i]);
        nodes.push(Node {
            label: i.to_string(),
            kind: Kind::Inner,
            x,
            y,
        });
    }
    let (x, y) = place(out_col);
    nodes.push(Node {
        label: "c_{k}".into(),
        kind: Kind::Output,
        x,
        y,
    });
    let out = nodes.len() - 1;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN}" y="22" font-family="sans-serif" font-size="16" font-weight="bold">{}</text>"#,
        escape(title)
    );
    // Edges first (under the nodes): concat edges to the output, then the op edges,
    // whose labels go on top of every line.
    let line = |s: &mut String, a: &Node, b: &Node, dashed: bool| {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#555" stroke-width="1.4"{} marker-end="url(#arrow)"/>"##,
            a.x + NODE_W / 2.0,
            a.y,
            b.x - NODE_W / 2.0 - 2.0,
            b.y,
            if dashed {
                r#" stroke-dasharray="4 3""#
            } else {
                ""
            }
        );
    };
    for &c in &cell.concat {
        if let Some(node) = nodes.get(c) {
            line(&mut s, node, &nodes[out], true);
        }
    }
    // Labels: greedy placement along each edge, the first position (middle first) whose
    // box overlaps no node and no label placed before.
    let mut boxes: Vec<[f64; 4]> = nodes
        .iter()
        .map(|n| [n.x - NODE_W / 2.0, n.y - NODE_H / 2.0, NODE_W, NODE_H])
        .collect();
    let overlaps = |a: &[f64; 4], b: &[f64; 4]| {
        a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3]
    };
    let mut labels = String::new();
    for (e, &(op, src)) in cell.edges.iter().enumerate() {
        let (Some(a), Some(b)) = (nodes.get(src), nodes.get(2 + e / 2)) else {
            continue;
        };
        line(&mut s, a, b, false);
        let (x0, x1) = (a.x + NODE_W / 2.0, b.x - NODE_W / 2.0);
        let name = op.name();
        let w = 6.6 * name.len() as f64 + 10.0;
        let at = |t: f64| {
            let (lx, ly) = (x0 + t * (x1 - x0), a.y + t * (b.y - a.y));
            [lx - w / 2.0, ly - 8.0, w, 16.0]
        };
        let candidates = [0.5, 0.35, 0.65, 0.25, 0.75, 0.42, 0.58, 0.18, 0.82];
        let bx = candidates
            .iter()
            .map(|&t| at(t))
            .find(|c| boxes.iter().all(|o| !overlaps(c, o)))
            .unwrap_or_else(|| at(0.5));
        boxes.push(bx);
        let _ = writeln!(
            labels,
            r##"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="16" rx="3" fill="white" fill-opacity="0.92" stroke="#bbb" stroke-width="0.6"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-family="sans-serif" font-size="11" fill="#222">{}</text>"##,
            bx[0],
            bx[1],
            bx[0] + w / 2.0,
            bx[1] + 12.0,
            escape(name)
        );
    }
    for node in &nodes {
        let fill = match node.kind {
            Kind::Input => "#a6dba0",
            Kind::Inner => "#9ecae1",
            Kind::Output => "#fee391",
        };
        let _ = writeln!(
            s,
            r##"<rect x="{:.1}" y="{:.1}" width="{NODE_W}" height="{NODE_H}" rx="8" fill="{fill}" stroke="#333" stroke-width="1.2"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-family="sans-serif" font-size="14">{}</text>"##,
            node.x - NODE_W / 2.0,
            node.y - NODE_H / 2.0,
            node.x,
            node.y + 5.0,
            escape(&node.label)
        );
    }
    s.push_str(&labels);
    Panel {
        svg: s,
        width,
        height,
    }
}

/// The normal and reduction cells of `genotype` (per stage, when it has several) as one
/// SVG document, panels stacked top to bottom.
pub fn genotype_svg(genotype: &Genotype) -> String {
    let stages = genotype.stages();
    let mut panels = Vec::new();
    for (k, pair) in stages.iter().enumerate() {
        let stage = if stages.len() > 1 {
            format!(" (stage {})", k + 1)
        } else {
            String::new()
        };
        panels.push(panel(&format!("normal cell{stage}"), &pair.normal));
        panels.push(panel(&format!("reduction cell{stage}"), &pair.reduce));
    }
    let width = panels.iter().map(|p| p.width).fold(0.0, f64::max);
    let height: f64 = panels.iter().map(|p| p.height).sum();
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}">"#
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&genotype.to_darts()));
    s.push_str(
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
"##,
    );
    let mut y = 0.0;
    for p in &panels {
        let _ = writeln!(s, r#"<g transform="translate(0,{y:.1})">"#);
        s.push_str(&p.svg);
        s.push_str("</g>\n");
        y += p.height;
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zoo;

    #[test]
    fn columns_follow_the_longest_path() {
        let g = zoo::by_name("DARTS_V2").unwrap();
        // DARTS_V2 normal: node 0 <- (0, 1), node 1 <- (0, 1), node 2 <- (1, 0),
        // node 3 <- (0, 2): all inputs are cell inputs except node 3's second.
        let c = columns(g.normal());
        assert_eq!(c, vec![0, 0, 1, 1, 1, 2]);
        // DARTS_V2 reduce: node 0 <- (0, 1); nodes 1, 2 and 3 each take node 0.
        let r = columns(g.reduce());
        assert_eq!(r, vec![0, 0, 1, 2, 2, 2]);
    }

    #[test]
    fn svg_names_every_edge_op_once_per_edge() {
        let g = zoo::by_name("PC_DARTS").unwrap();
        let svg = genotype_svg(&g);
        assert!(svg.starts_with("<svg"));
        for cell in [g.normal(), g.reduce()] {
            for &(op, _) in &cell.edges {
                assert!(svg.contains(&format!(">{}</text>", op.name())));
            }
        }
        let text_labels = svg.matches("font-size=\"11\"").count();
        assert_eq!(text_labels, g.normal().edges.len() + g.reduce().edges.len());
    }
}
