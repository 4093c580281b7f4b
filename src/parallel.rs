//! Layers worked on in parallel: indexes handed out in order to a few scoped threads, the
//! first error stopping the hand-out. Used by `artifact` (generate's index passes) and
//! `convert` (its per-layer passes); calls nothing else in the crate.

use std::sync::Mutex;

/// Run `work(i)` for each `i` in `0..count` on up to `jobs` threads (at least one), handing
/// out indexes in order, and return the results in index order. Once a `work` fails no
/// further index is handed out, so the first error in index order is the one returned (every
/// index before it was handed out and finished). `lost(message)` is the error when a result is
/// missing, which only a worker that panicked leaves.
pub fn each_layer<T: Send, E: Send>(
    count: usize,
    jobs: usize,
    work: impl Fn(usize) -> Result<T, E> + Sync,
    lost: impl Fn(&'static str) -> E,
) -> Result<Vec<T>, E> {
    let results: Mutex<Vec<Option<Result<T, E>>>> = Mutex::new((0..count).map(|_| None).collect());
    let next = Mutex::new(0usize);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(count.max(1)) {
            s.spawn(|| {
                loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { return };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= count {
                        return;
                    }
                    let out = work(i);
                    let failed = out.is_err();
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(out);
                    }
                    if failed {
                        // Stop handing out layers: the first error is what the user sees.
                        if let Ok(mut n) = next.lock() {
                            *n = count;
                        }
                        return;
                    }
                }
            });
        }
    });
    let results = results.into_inner().map_err(|_| lost("a layer worker failed"))?;
    let mut out = Vec::with_capacity(count);
    for r in results {
        match r {
            Some(r) => out.push(r?),
            None => return Err(lost("a layer was not processed")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::each_layer;

    #[test]
    fn results_in_order_and_first_error() {
        let ok: Result<Vec<usize>, String> = each_layer(10, 3, |i| Ok(i * 2), |m| m.to_string());
        assert_eq!(ok, Ok((0..10).map(|i| i * 2).collect()));
        let err: Result<Vec<usize>, String> =
            each_layer(10, 1, |i| if i >= 4 { Err(format!("layer {i}")) } else { Ok(i) }, |m| m.to_string());
        assert_eq!(err, Err("layer 4".to_string()));
        let none: Result<Vec<usize>, String> = each_layer(0, 4, Ok, |m| m.to_string());
        assert_eq!(none, Ok(vec![]));
    }
}
