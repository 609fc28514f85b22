//! Retrying reads across a failover. A statement that only reads can be sent
//! again without changing anything, so when its connection turns out broken
//! (the server behind the pooler was killed or demoted, and the pool had not
//! noticed yet) it is tried once more on a fresh one. Statements that write
//! are never retried here: whether a broken one committed is the caller's
//! question (see the README's "Retrying after a 503").

use std::future::Future;
use std::time::Duration;

use super::StoreError;

/// Long enough for the pool to see the other broken connections closed, short
/// against a request's budget.
const PAUSE: Duration = Duration::from_millis(100);

/// Runs `attempt`, and once more after a short pause when the database was
/// unavailable. Only for statements that read.
pub(crate) async fn read<T, F, Fut>(attempt: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    match attempt().await {
        Err(StoreError::Unavailable(e)) => {
            tracing::debug!(error = %e, "read failed for want of a database; once more");
            tokio::time::sleep(PAUSE).await;
            attempt().await
        }
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable("connection closed".into())
    }

    #[tokio::test]
    async fn an_unavailable_read_is_tried_once_more() {
        let tries = AtomicUsize::new(0);
        let out = read(|| async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 => Err(unavailable()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_is_tried_at_most_twice() {
        let tries = AtomicUsize::new(0);
        let out: Result<(), _> = read(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert!(matches!(out, Err(StoreError::Unavailable(_))));
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn other_errors_are_not_retried() {
        let tries = AtomicUsize::new(0);
        let out: Result<(), _> = read(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Database("syntax error".into()))
        })
        .await;
        assert!(matches!(out, Err(StoreError::Database(_))));
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
