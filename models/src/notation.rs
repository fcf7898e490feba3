//! Parser for DARTS notation, the Python text of a `Genotype` namedtuple.
//!
//! Accepts `[NAME =] Genotype(normal=[('op', i), ...], normal_concat=[2, 3, 4, 5] | range(2, 6),
//! reduce=[...], reduce_concat=...)` with single or double quotes, keyword arguments in any
//! order, and a Python list of such genotypes for per-stage genotypes.

use crate::genotype::{CellGenotype, CellPair, Genotype, GenotypeError, Primitive};

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
}

enum Value {
    Edges(Vec<(Primitive, usize)>),
    Ints(Vec<usize>),
}

impl<'a> Parser<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, GenotypeError> {
        Err(GenotypeError::Syntax {
            pos: self.pos,
            msg: msg.into(),
        })
    }

    fn skip_ws(&mut self) {
        while self.pos < self.text.len() && (self.text[self.pos] as char).is_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), GenotypeError> {
        if self.eat(c) {
            Ok(())
        } else {
            let found = self
                .peek()
                .map(|b| format!("'{}'", b as char))
                .unwrap_or_else(|| "end of text".into());
            self.err(format!("expected '{}', found {}", c as char, found))
        }
    }

    fn ident(&mut self) -> Result<String, GenotypeError> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.text.len()
            && (self.text[self.pos].is_ascii_alphanumeric()
                || self.text[self.pos] == b'_'
                || self.text[self.pos] == b'.')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return self.err("expected a name");
        }
        Ok(String::from_utf8_lossy(&self.text[start..self.pos]).into_owned())
    }

    fn int(&mut self) -> Result<usize, GenotypeError> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        if start == self.pos {
            return self.err("expected a non-negative integer");
        }
        std::str::from_utf8(&self.text[start..self.pos])
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or_else(|| self.err("integer too large"), Ok)
    }

    fn string(&mut self) -> Result<String, GenotypeError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return self.err("expected a quoted operation name"),
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos] != quote {
            self.pos += 1;
        }
        if self.pos >= self.text.len() {
            return self.err("unterminated string");
        }
        let s = String::from_utf8_lossy(&self.text[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(s)
    }

    /// `[ ... ]` of `('op', i)` tuples or of integers, or `range(a, b)` / `list(range(a, b))`.
    fn value(&mut self) -> Result<Value, GenotypeError> {
        match self.peek() {
            Some(b'[') => {
                self.pos += 1;
                if self.eat(b']') {
                    return Ok(Value::Ints(vec![]));
                }
                if self.peek() == Some(b'(') {
                    let mut edges = vec![];
                    loop {
                        self.expect(b'(')?;
                        let name = self.string()?;
                        let op = Primitive::from_name(&name)?;
                        self.expect(b',')?;
                        let input = self.int()?;
                        self.eat(b',');
                        self.expect(b')')?;
                        edges.push((op, input));
                        if !self.eat(b',') || self.peek() == Some(b']') {
                            break;
                        }
                    }
                    self.expect(b']')?;
                    Ok(Value::Edges(edges))
                } else {
                    let mut ints = vec![];
                    loop {
                        ints.push(self.int()?);
                        if !self.eat(b',') || self.peek() == Some(b']') {
                            break;
                        }
                    }
                    self.expect(b']')?;
                    Ok(Value::Ints(ints))
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let name = self.ident()?;
                match name.as_str() {
                    "list" => {
                        self.expect(b'(')?;
                        let v = self.value()?;
                        self.expect(b')')?;
                        Ok(v)
                    }
                    "range" => {
                        self.expect(b'(')?;
                        let a = self.int()?;
                        let b = if self.eat(b',') {
                            Some(self.int()?)
                        } else {
                            None
                        };
                        self.expect(b')')?;
                        let (start, end) = match b {
                            Some(b) => (a, b),
                            None => (0, a),
                        };
                        Ok(Value::Ints((start..end).collect()))
                    }
                    other => self.err(format!("expected a list or range(..), found '{other}'")),
                }
            }
            _ => self.err("expected a list or range(..)"),
        }
    }

    fn genotype(&mut self) -> Result<CellPair, GenotypeError> {
        let name = self.ident()?;
        if !name.ends_with("Genotype") {
            return self.err(format!("expected 'Genotype(', found '{name}'"));
        }
        self.expect(b'(')?;
        let (mut normal, mut normal_concat, mut reduce, mut reduce_concat) =
            (None, None, None, None);
        while self.peek() != Some(b')') {
            let key_pos = self.pos;
            let key = self.ident()?;
            self.expect(b'=')?;
            let v = self.value()?;
            match (key.as_str(), v) {
                ("normal", Value::Edges(e)) => normal = Some(e),
                ("reduce", Value::Edges(e)) => reduce = Some(e),
                ("normal" | "reduce", Value::Ints(i)) if i.is_empty() => {
                    if key == "normal" {
                        normal = Some(vec![])
                    } else {
                        reduce = Some(vec![])
                    }
                }
                ("normal_concat", Value::Ints(i)) => normal_concat = Some(i),
                ("reduce_concat", Value::Ints(i)) => reduce_concat = Some(i),
                (k, _) => {
                    self.pos = key_pos;
                    return self.err(format!("unexpected field or value type for '{k}' (fields: normal, normal_concat, reduce, reduce_concat)"));
                }
            }
            if !self.eat(b',') {
                break;
            }
        }
        self.expect(b')')?;
        let missing = |f: &str| GenotypeError::Syntax {
            pos: self.pos,
            msg: format!("missing field '{f}'"),
        };
        Ok(CellPair {
            normal: CellGenotype {
                edges: normal.ok_or_else(|| missing("normal"))?,
                concat: normal_concat.ok_or_else(|| missing("normal_concat"))?,
            },
            reduce: CellGenotype {
                edges: reduce.ok_or_else(|| missing("reduce"))?,
                concat: reduce_concat.ok_or_else(|| missing("reduce_concat"))?,
            },
        })
    }
}

/// Parses DARTS notation (see the module documentation).
pub fn parse(text: &str) -> Result<Genotype, GenotypeError> {
    let mut p = Parser {
        text: text.as_bytes(),
        pos: 0,
    };
    // Optional `NAME =` prefix.
    let start = p.pos;
    if p.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
        let _ = p.ident();
        if !p.eat(b'=') {
            p.pos = start;
        }
    }
    let stages = if p.eat(b'[') {
        let mut stages = vec![];
        loop {
            stages.push(p.genotype()?);
            if !p.eat(b',') || p.peek() == Some(b']') {
                break;
            }
        }
        p.expect(b']')?;
        stages
    } else {
        vec![p.genotype()?]
    };
    if p.peek().is_some() {
        return p.err("unexpected text after the genotype");
    }
    Genotype::new(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "DARTS_V2 = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))";

    #[test]
    fn parses_the_published_text_with_range() {
        let g = parse(V2).unwrap();
        assert_eq!(g.normal().edges.len(), 8);
        assert_eq!(g.normal().edges[7], (Primitive::DilConv3x3, 2));
        assert_eq!(g.reduce().concat, vec![2, 3, 4, 5]);
        assert_eq!(g, crate::zoo::by_name("DARTS_V2").unwrap());
    }

    #[test]
    fn malformed_text_gives_clear_errors() {
        let unknown = V2.replace("'dil_conv_3x3'", "'conv_9x9'");
        let e = parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown operation 'conv_9x9'"), "{e}");

        let seven = V2.replace(", ('dil_conv_3x3', 2)]", "]");
        let e = parse(&seven).unwrap_err().to_string();
        assert!(e.contains("normal cell has 7 edges"), "{e}");

        let out_of_range = V2.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)");
        let e = parse(&out_of_range).unwrap_err().to_string();
        assert!(e.contains("node 3, edge 1: input 5 is out of range"), "{e}");

        let e = parse("Genotype(normal=[('sep_conv_3x3', 0)")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot parse DARTS notation"), "{e}");

        let e =
            parse("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2])")
                .unwrap_err()
                .to_string();
        assert!(e.contains("missing field 'reduce'"), "{e}");

        let e = parse("hello world").unwrap_err().to_string();
        assert!(e.contains("cannot parse"), "{e}");
    }
}
