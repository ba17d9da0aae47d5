//! Integer arithmetic expressions: the tree, printing with the fewest parentheses that keep the tree,
//! a parser for submitted answers, and evaluation step by step with exact integer results. Shared by the
//! arithmetic and countdown families; knows nothing of prompts, splits or verdicts.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Add, Op::Sub, Op::Mul, Op::Div];

    pub fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }

    fn precedence(self) -> u8 {
        match self {
            Op::Add | Op::Sub => 1,
            Op::Mul | Op::Div => 2,
        }
    }

    /// Exact integer result: a division must leave no remainder.
    pub fn apply(self, a: i64, b: i64) -> Result<i64, EvalError> {
        let r = match self {
            Op::Add => a.checked_add(b),
            Op::Sub => a.checked_sub(b),
            Op::Mul => a.checked_mul(b),
            Op::Div => {
                if b == 0 {
                    return Err(EvalError::DivisionByZero { a });
                }
                if a % b != 0 {
                    return Err(EvalError::Inexact { a, b });
                }
                a.checked_div(b)
            }
        };
        r.ok_or(EvalError::Overflow {
            a,
            op: self.symbol(),
            b,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{a}/0 divides by zero")]
    DivisionByZero { a: i64 },
    #[error("{a}/{b} is not an integer")]
    Inexact { a: i64, b: i64 },
    #[error("{a}{op}{b} overflows")]
    Overflow { a: i64, op: char, b: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Num(i64),
    Bin {
        op: Op,
        left: Box<Expr>,
        right: Box<Expr>,
    },
}

/// One evaluated operation, printed `a+b=c`: the unit of a worked solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub left: i64,
    pub op: Op,
    pub right: i64,
    pub result: i64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}={}",
            self.left,
            self.op.symbol(),
            self.right,
            self.result
        )
    }
}

impl Expr {
    pub fn bin(op: Op, left: Expr, right: Expr) -> Expr {
        Expr::Bin {
            op,
            left: Box::new(left),
            right: Box::new(right),
        }
    }

    /// Value and the operations in evaluation order (left subtree, right subtree, then the node).
    pub fn eval_steps(&self) -> Result<(i64, Vec<Step>), EvalError> {
        let mut steps = Vec::new();
        let v = self.eval_into(&mut steps)?;
        Ok((v, steps))
    }

    pub fn eval(&self) -> Result<i64, EvalError> {
        self.eval_steps().map(|(v, _)| v)
    }

    fn eval_into(&self, steps: &mut Vec<Step>) -> Result<i64, EvalError> {
        match self {
            Expr::Num(n) => Ok(*n),
            Expr::Bin { op, left, right } => {
                let a = left.eval_into(steps)?;
                let b = right.eval_into(steps)?;
                let r = op.apply(a, b)?;
                steps.push(Step {
                    left: a,
                    op: *op,
                    right: b,
                    result: r,
                });
                Ok(r)
            }
        }
    }

    /// The numbers written in the expression, left to right.
    pub fn leaves(&self) -> Vec<i64> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves(&self, out: &mut Vec<i64>) {
        match self {
            Expr::Num(n) => out.push(*n),
            Expr::Bin { left, right, .. } => {
                left.collect_leaves(out);
                right.collect_leaves(out);
            }
        }
    }

    pub fn op_count(&self) -> usize {
        match self {
            Expr::Num(_) => 0,
            Expr::Bin { left, right, .. } => 1 + left.op_count() + right.op_count(),
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Expr::Num(_) => u8::MAX,
            Expr::Bin { op, .. } => op.precedence(),
        }
    }
}

impl fmt::Display for Expr {
    /// Parentheses only where the left-associative parser would otherwise build another tree: a left
    /// child binding looser than its parent, a right child binding no tighter (so `a-(b-c)` and
    /// `a+(b+c)` keep their shape and the printed text matches the worked steps).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(n) => write!(f, "{n}"),
            Expr::Bin { op, left, right } => {
                let p = op.precedence();
                if left.precedence() < p {
                    write!(f, "({left})")?;
                } else {
                    write!(f, "{left}")?;
                }
                write!(f, "{}", op.symbol())?;
                if right.precedence() <= p {
                    write!(f, "({right})")
                } else {
                    write!(f, "{right}")
                }
            }
        }
    }
}

/// Why a submitted expression could not be read, with the byte offset where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {pos}: {msg}")]
pub struct ParseError {
    pub pos: usize,
    pub msg: String,
}

/// Nesting deeper than this is refused so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Parses `+ - * /` over non-negative integers with parentheses and spaces; `*` and `/` bind tighter,
/// all operators associate to the left. No unary minus.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    p.skip_ws();
    if p.pos < p.s.len() {
        return Err(p.err("unexpected character after the expression"));
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> ParseError {
        ParseError {
            pos: self.pos,
            msg: msg.to_string(),
        }
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek_op(&mut self, ops: &[(u8, Op)]) -> Option<Op> {
        self.skip_ws();
        let c = *self.s.get(self.pos)?;
        let op = ops.iter().find(|(b, _)| *b == c).map(|(_, op)| *op)?;
        self.pos += 1;
        Some(op)
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.term()?;
        while let Some(op) = self.peek_op(&[(b'+', Op::Add), (b'-', Op::Sub)]) {
            let r = self.term()?;
            e = Expr::bin(op, e, r);
        }
        Ok(e)
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.factor()?;
        while let Some(op) = self.peek_op(&[(b'*', Op::Mul), (b'/', Op::Div)]) {
            let r = self.factor()?;
            e = Expr::bin(op, e, r);
        }
        Ok(e)
    }

    fn factor(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        match self.s.get(self.pos) {
            Some(b'(') => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(self.err("parentheses nested too deeply"));
                }
                self.pos += 1;
                let e = self.expr()?;
                self.skip_ws();
                if self.s.get(self.pos) != Some(&b')') {
                    return Err(self.err("expected `)`"));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                // The slice holds ASCII digits only, so it is valid UTF-8.
                let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
                digits
                    .parse::<i64>()
                    .map(Expr::Num)
                    .map_err(|_| ParseError {
                        pos: start,
                        msg: "number too large".to_string(),
                    })
            }
            Some(_) => Err(self.err("expected a number or `(`")),
            None => Err(self.err("expected a number or `(`, found the end")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_precedence_and_left_associativity() {
        let e = parse("7+5*3-4").unwrap();
        assert_eq!(e.eval().unwrap(), 18);
        assert_eq!(parse("20-5-3").unwrap().eval().unwrap(), 12);
        assert_eq!(parse("(7 + 5) * 3 - 4").unwrap().eval().unwrap(), 32);
        assert_eq!(parse("100/5/2").unwrap().eval().unwrap(), 10);
    }

    #[test]
    fn prints_the_fewest_parentheses_that_keep_the_tree() {
        for text in [
            "(7+5)*3-4",
            "7-(5-3)",
            "8/(4/2)",
            "2*(3+4)",
            "7+5*3",
            "(1+2)*(3+4)",
        ] {
            let e = parse(text).unwrap();
            assert_eq!(e.to_string(), text);
        }
        assert_eq!(parse("((7))+(5*3)").unwrap().to_string(), "7+5*3");
    }

    #[test]
    fn steps_follow_evaluation_order() {
        let (v, steps) = parse("(7+5)*3-4").unwrap().eval_steps().unwrap();
        let text: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(text, ["7+5=12", "12*3=36", "36-4=32"]);
        assert_eq!(v, 32);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "7+",
            "(7+5",
            "7 5",
            "-3+4",
            "7+5)",
            "a+1",
            "99999999999999999999",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        let deep = format!("{}1{}", "(".repeat(1000), ")".repeat(1000));
        assert!(parse(&deep).is_err());
        assert!(matches!(
            parse("7/2").unwrap().eval(),
            Err(EvalError::Inexact { .. })
        ));
        assert!(matches!(
            parse("7/(2-2)").unwrap().eval(),
            Err(EvalError::DivisionByZero { .. })
        ));
    }
}
