//! Waiting for something to become true: one helper instead of a hand-written loop per
//! test. A check says `Break(value)` when done, `Continue(why)` when not yet (`why` is
//! what the timeout error shows of the last look), or an error to stop at once (an
//! invariant broken on the way).

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// How often a check runs.
const EVERY: Duration = Duration::from_millis(100);

/// Runs `check` every 100 ms until it breaks with a value, for at most `timeout`.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<ControlFlow<T, String>>,
) -> anyhow::Result<T> {
    let t0 = Instant::now();
    loop {
        match check()? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(why) if t0.elapsed() >= timeout => {
                anyhow::bail!("{what}: not within {timeout:?}; last: {why}")
            }
            ControlFlow::Continue(_) => std::thread::sleep(EVERY),
        }
    }
}

/// [`eventually`] for checks that await.
pub async fn eventually_async<T>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<ControlFlow<T, String>>,
) -> anyhow::Result<T> {
    let t0 = Instant::now();
    loop {
        match check().await? {
            ControlFlow::Break(v) => return Ok(v),
            ControlFlow::Continue(why) if t0.elapsed() >= timeout => {
                anyhow::bail!("{what}: not within {timeout:?}; last: {why}")
            }
            ControlFlow::Continue(_) => tokio::time::sleep(EVERY).await,
        }
    }
}

/// `Break(())` when `done`, else `Continue(why)`.
pub fn until(done: bool, why: impl FnOnce() -> String) -> ControlFlow<(), String> {
    if done {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(why())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_value_then_gives_up_with_the_last_look() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(5), "three looks", || {
            n += 1;
            Ok(if n == 3 {
                ControlFlow::Break(n)
            } else {
                ControlFlow::Continue(format!("look {n}"))
            })
        })
        .unwrap();
        assert_eq!(got, 3);
        let e = eventually::<()>(Duration::from_millis(250), "never", || {
            Ok(ControlFlow::Continue("still no".into()))
        })
        .unwrap_err();
        assert!(e.to_string().contains("never: not within"), "{e}");
        assert!(e.to_string().contains("last: still no"), "{e}");
        let e = eventually::<()>(Duration::from_secs(5), "broken", || {
            anyhow::bail!("at once")
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "at once");
    }
}
