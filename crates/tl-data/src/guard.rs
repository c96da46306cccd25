//! Turning a panic inside a dependency into an error. Damaged Parquet files make polars'
//! decoder panic (found by fuzzing: "thrift bool field"); a damaged file must be an error
//! naming it, never a crash, so every Parquet read of outside data runs in [`guard_panics`].

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

thread_local! {
    static GUARDED: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f`; a panic inside it becomes `Err` with the panic's message. Binaries may keep
/// such panics quiet with [`inside_guard`] in their panic hook.
pub fn guard_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    r.map_err(|p| panic_message(&*p))
}

/// The message a panic carried (`panic!` with a literal or a formatted string).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".into())
}

/// True while this thread runs inside [`guard_panics`] (for a binary's panic hook).
pub fn inside_guard() -> bool {
    GUARDED.with(|g| g.get() > 0)
}
