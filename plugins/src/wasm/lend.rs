//! Lending the request's own headers to a Wasm callback for the length of one call.
//!
//! A callback edits headers through host functions that only see the store's data, which
//! must be `'static`; copying the headers in and out for every callback would cost more
//! than the plugin itself. Instead the store holds a [`Lend`]: a pointer to the caller's
//! value, set by [`lend`] for exactly one synchronous call and cleared afterwards, even if
//! the call unwinds.

use std::ptr::NonNull;

/// A value borrowed from the caller while a callback runs; empty otherwise.
pub struct Lend<T>(Option<NonNull<T>>);

// SAFETY: a `Lend` only ever holds a pointer during `lend`, which has the value's `&mut`
// borrow for that whole time; the store it lives in moves between threads only between
// calls, when it is empty.
unsafe impl<T: Send> Send for Lend<T> {}
unsafe impl<T: Sync> Sync for Lend<T> {}

impl<T> Default for Lend<T> {
    fn default() -> Self {
        Lend(None)
    }
}

impl<T> Lend<T> {
    /// The lent value, if a call is lending one.
    pub fn get(&mut self) -> Option<&mut T> {
        // SAFETY: set only inside `lend`, from a `&mut T` that outlives the call, and taken
        // through `&mut self`, so no two borrows of it exist at once.
        self.0.map(|p| unsafe { &mut *p.as_ptr() })
    }

    #[cfg(test)]
    pub fn is_lent(&self) -> bool {
        self.0.is_some()
    }
}

/// Runs `call` with `value` lent through `slot`; the loan ends when `call` returns.
pub fn lend<S, T, R>(
    state: &mut S,
    slot: fn(&mut S) -> &mut Lend<T>,
    value: &mut T,
    call: impl FnOnce(&mut S) -> R,
) -> R {
    struct Clear<'s, S, T> {
        state: &'s mut S,
        slot: fn(&mut S) -> &mut Lend<T>,
    }
    impl<S, T> Drop for Clear<'_, S, T> {
        fn drop(&mut self) {
            (self.slot)(self.state).0 = None;
        }
    }
    slot(state).0 = Some(NonNull::from(value));
    let guard = Clear { state, slot };
    call(guard.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct State {
        text: Lend<String>,
    }

    #[test]
    fn a_loan_lasts_exactly_one_call() {
        let mut state = State::default();
        let mut text = String::from("a");
        let out = lend(
            &mut state,
            |s| &mut s.text,
            &mut text,
            |s| {
                s.text.get().unwrap().push('b');
                s.text.get().unwrap().len()
            },
        );
        assert_eq!(out, 2);
        assert_eq!(text, "ab");
        assert!(!state.text.is_lent());
        assert!(state.text.get().is_none());
    }

    #[test]
    fn a_loan_ends_when_the_call_unwinds() {
        let mut state = State::default();
        let mut text = String::new();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lend(&mut state, |s| &mut s.text, &mut text, |_| panic!("boom"))
        }));
        assert!(unwound.is_err());
        assert!(!state.text.is_lent());
    }
}
