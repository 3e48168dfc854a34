//! Remembering a routing script's answer while its inputs stay the same.
//!
//! A `route` call costs far more than the rest of the routing stage (a sort with a script
//! closure is ~130 k instructions), and under steady traffic it is asked the same question again
//! and again. A script's answer is remembered when the script can only depend on its candidates:
//!
//! - it never names the `request` parameter (a static check of every function body and closure
//!   in the script), and
//! - it calls nothing that is not a function of its arguments: `rand_float`, `rand_int`,
//!   `timestamp`, `sleep`, `print`, `debug`, nor a function pointer to one of them.
//!
//! The health of each candidate (`error_rate`, `latency_ms`, `in_cooldown`) changes after
//! every attempt, so it is not part of the key as a whole: each call records which health fields
//! of which candidate the script actually read ([`track`]), and a remembered answer is reused only
//! while those fields hold the same values and every other field of every candidate is equal. A
//! script that reads `in_cooldown` is recomputed when a deployment starts or ends its cooldown,
//! not when a latency average moves. Failed calls are never remembered.

use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rhai::AST;
use rhai::{ASTNode, Expr, FnCallExpr, FnPtr, Stmt};

use super::rhai::CandidateView;

/// Functions whose result is not a function of their arguments (or that have an effect a
/// remembered answer would skip).
const IMPURE: &[&str] = &[
    "rand_float",
    "rand_int",
    "timestamp",
    "sleep",
    "print",
    "debug",
];

/// How many candidate sets one script remembers (a script may route several groups).
const SLOTS: usize = 8;

/// Health fields, as bits of a read set.
pub(crate) const ERROR_RATE: u8 = 1;
pub(crate) const LATENCY_MS: u8 = 2;
pub(crate) const IN_COOLDOWN: u8 = 4;
pub(crate) const ALL_HEALTH: u8 = ERROR_RATE | LATENCY_MS | IN_COOLDOWN;

/// Whether `ast`'s answer depends only on its candidates; `request` is the name of `route`'s
/// first parameter.
pub(crate) fn memoizable(ast: &AST, request: &str) -> bool {
    let impure_call = |call: &FnCallExpr| {
        IMPURE.contains(&call.name.as_str())
            // A function pointer made from a computed name could be anything.
            || (call.name.as_str() == "Fn"
                && !matches!(call.args.first(), Some(Expr::StringConstant(..))))
    };
    let mut pure = true;
    ast.walk(&mut |path: &[ASTNode]| {
        let bad = match path.last() {
            Some(ASTNode::Expr(expr)) => match expr {
                Expr::Variable(v, ..) => v.1.as_str() == request,
                Expr::FnCall(call, ..) | Expr::MethodCall(call, ..) => impure_call(call),
                Expr::StringConstant(s, ..) => IMPURE.contains(&s.as_str()),
                Expr::DynamicConstant(d, ..) => {
                    d.read_lock::<FnPtr>()
                        .is_some_and(|f| IMPURE.contains(&f.fn_name()))
                        || d.read_lock::<rhai::ImmutableString>()
                            .is_some_and(|s| IMPURE.contains(&s.as_str()))
                }
                _ => false,
            },
            Some(ASTNode::Stmt(stmt)) => match stmt {
                Stmt::FnCall(call, ..) => impure_call(call),
                // A closure capturing `request`.
                Stmt::Share(names) => names.iter().any(|(name, _)| name.name.as_str() == request),
                _ => false,
            },
            _ => false,
        };
        if bad {
            pure = false;
        }
        pure
    });
    pure
}

thread_local! {
    /// The health fields read during the current `route` call, one bit set per candidate.
    static READS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Notes that the running script read `fields` of candidate `index`.
pub(crate) fn note_read(index: usize, fields: u8) {
    READS.with(|r| {
        if let Some(slot) = r.borrow_mut().get_mut(index) {
            *slot |= fields;
        }
    });
}

/// Runs `call` with read tracking for `candidates` candidates; returns its result and the read
/// set.
pub(crate) fn track<T>(candidates: usize, call: impl FnOnce() -> T) -> (T, Vec<u8>) {
    READS.with(|r| {
        let mut reads = r.borrow_mut();
        reads.clear();
        reads.resize(candidates, 0);
    });
    let result = call();
    let reads = READS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    (result, reads)
}

/// One remembered answer.
struct Entry {
    candidates: Vec<CandidateView>,
    reads: Vec<u8>,
    order: Vec<usize>,
}

impl Entry {
    fn answers(&self, candidates: &[CandidateView]) -> bool {
        self.candidates.len() == candidates.len()
            && self
                .candidates
                .iter()
                .zip(candidates)
                .zip(&self.reads)
                .all(|((was, now), reads)| same_static(was, now) && same_health(was, now, *reads))
    }
}

/// The same deployments with the same static fields (health aside).
fn same_set(a: &[CandidateView], b: &[CandidateView]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_static(a, b))
}

fn same_static(a: &CandidateView, b: &CandidateView) -> bool {
    a.model == b.model
        && a.provider == b.provider
        && a.weight == b.weight
        && a.priority == b.priority
        && a.region == b.region
        && a.tags == b.tags
        && a.price_input.to_bits() == b.price_input.to_bits()
        && a.price_output.to_bits() == b.price_output.to_bits()
}

fn same_health(a: &CandidateView, b: &CandidateView, reads: u8) -> bool {
    (reads & ERROR_RATE == 0 || a.error_rate.to_bits() == b.error_rate.to_bits())
        && (reads & LATENCY_MS == 0 || a.latency_ms.to_bits() == b.latency_ms.to_bits())
        && (reads & IN_COOLDOWN == 0 || a.in_cooldown == b.in_cooldown)
}

/// The remembered answers of one script (lock-free to read; a miss replaces one slot).
#[derive(Default)]
pub(crate) struct Memo {
    entries: ArcSwap<Vec<Arc<Entry>>>,
}

impl Memo {
    /// The remembered order for `candidates`, if their inputs are unchanged.
    pub(crate) fn get(&self, candidates: &[CandidateView]) -> Option<Vec<usize>> {
        self.entries
            .load()
            .iter()
            .find(|e| e.answers(candidates))
            .map(|e| e.order.clone())
    }

    /// Remembers `order` for `candidates`, given the health fields the script read.
    pub(crate) fn put(&self, candidates: &[CandidateView], reads: Vec<u8>, order: &[usize]) {
        let entry = Arc::new(Entry {
            candidates: candidates.to_vec(),
            reads,
            order: order.to_vec(),
        });
        self.entries.rcu(|entries| {
            // The same candidate set replaces its own slot; a new one evicts the oldest.
            let mut next: Vec<Arc<Entry>> = entries
                .iter()
                .filter(|e| !same_set(&e.candidates, candidates))
                .cloned()
                .collect();
            if next.len() >= SLOTS {
                next.remove(0);
            }
            next.push(entry.clone());
            next
        });
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memo")
            .field("entries", &self.entries.load().len())
            .finish()
    }
}
