//! A loop that has a thread and a current-thread tokio runtime of its own (the SFU's media loop,
//! the TURN relay): its sockets, timers and tasks are polled there, so a datagram does not wake
//! the shared runtime's other threads on its way through.

use std::future::Future;
use std::io;

/// Start a thread called `name` with a current-thread runtime, run `setup` on it (bind sockets
/// there so they belong to that runtime), and hand back the handle it returns; the loop it also
/// returns then runs on that thread until it ends. Blocks the caller only for `setup`.
pub fn spawn<T, S, F, L>(name: &str, setup: S) -> io::Result<T>
where
    T: Send + 'static,
    S: FnOnce() -> F + Send + 'static,
    F: Future<Output = io::Result<(T, L)>>,
    L: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match setup().await {
                    Ok((handle, looping)) => {
                        let _ = tx.send(Ok(handle));
                        // the loop as a task: waking block_on's own future from the I/O driver
                        // would write the runtime's eventfd on every datagram
                        let _ = tokio::spawn(looping).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    rx.recv()
        .map_err(|_| io::Error::other(format!("the {name} thread ended during setup")))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn setup_result_comes_back_and_the_loop_runs_on_the_named_thread() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let port = super::spawn("own-thread-test", move || async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            let port = socket.local_addr()?.port();
            let looping = async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = done_tx.send((name, socket.local_addr().ok()));
            };
            Ok((port, looping))
        })
        .expect("setup");
        let (name, addr) = done_rx.recv().expect("loop ran");
        assert_eq!(name.as_deref(), Some("own-thread-test"));
        assert_eq!(addr.map(|a| a.port()), Some(port));
        let err = super::spawn("own-thread-fail", || async {
            Err::<((), std::future::Ready<()>), _>(std::io::Error::other("bind failed"))
        })
        .expect_err("setup error comes back");
        assert!(err.to_string().contains("bind failed"));
    }
}
