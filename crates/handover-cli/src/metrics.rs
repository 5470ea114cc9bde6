//! `--metrics HOST:PORT`: Prometheus metrics (OpenMetrics text format, `prometheus-client`) on a
//! tiny HTTP/1.x listener that answers `GET /metrics`, and `GET /ready` for load balancers and
//! orchestrators (200 when ready to serve, 503 otherwise; see [`readiness`]).
//!
//! Almost everything is read at scrape time from the same status the control socket reports,
//! so the dispatch path pays nothing for it. Per-worker series are labelled by program and
//! slot (not pid, so restarts do not create series without end); a slot's per-worker counters
//! start again from zero when its worker is replaced. The one exception is the hand-off latency
//! histogram, observed by the prefork engine when a worker acknowledges a connection: a lock
//! and a bucket scan, no allocation.

use std::rc::Rc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::model::Mode;
use crate::restart::Cause;
use crate::status::{ProgramState, Status, SupervisorState, WorkerState};

type Labels = Vec<(String, String)>;

pub(crate) struct Metrics {
    registry: Registry,
    accepted: Counter,
    dispatched: Counter,
    redispatched: Counter,
    refused: Counter,
    lost: Counter,
    handled: Counter,
    restarts: Counter,
    upgrades: Counter,
    upgrades_failed: Counter,
    log_writes_dropped: Counter,
    generation: Gauge,
    build_info: Family<Labels, Gauge>,
    live: Gauge,
    timed_out: Counter,
    proxy_refused: Counter,
    workers: Family<Labels, Gauge>,
    workers_wanted: Family<Labels, Gauge>,
    queue: Family<Labels, Gauge>,
    restarts_by_cause: Family<Labels, Counter>,
    worker_live: Family<Labels, Gauge>,
    worker_busy: Family<Labels, Gauge>,
    worker_handled: Family<Labels, Counter>,
    worker_rss: Family<Labels, Gauge>,
    /// Seconds from sending a connection to a worker to its acknowledgement (prefork).
    pub(crate) handoff_latency: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("handover"),
            accepted: Counter::default(),
            dispatched: Counter::default(),
            redispatched: Counter::default(),
            refused: Counter::default(),
            lost: Counter::default(),
            handled: Counter::default(),
            restarts: Counter::default(),
            upgrades: Counter::default(),
            upgrades_failed: Counter::default(),
            log_writes_dropped: Counter::default(),
            generation: Gauge::default(),
            build_info: Family::default(),
            live: Gauge::default(),
            timed_out: Counter::default(),
            proxy_refused: Counter::default(),
            workers: Family::default(),
            workers_wanted: Family::default(),
            queue: Family::default(),
            restarts_by_cause: Family::default(),
            worker_live: Family::default(),
            worker_busy: Family::default(),
            worker_handled: Family::default(),
            worker_rss: Family::default(),
            // 10µs .. ~1.3s
            handoff_latency: Histogram::new(exponential_buckets(1e-5, 2.0, 18)),
        };
        let r = &mut m.registry;
        r.register(
            "connections_accepted",
            "Connections accepted by the supervisor (prefork, spawn)",
            m.accepted.clone(),
        );
        r.register(
            "connections_dispatched",
            "Hand-offs of connections to workers (a re-dispatch counts again)",
            m.dispatched.clone(),
        );
        r.register(
            "connections_redispatched",
            "Connections given to another worker because theirs died, was killed or rejected them before acknowledging",
            m.redispatched.clone(),
        );
        r.register(
            "connections_refused",
            "Accepted connections closed without being served (drain cut short, no worker left, spawn failed)",
            m.refused.clone(),
        );
        r.register(
            "connections_lost_mid_request",
            "Connections reset because the worker that acknowledged them died before finishing",
            m.lost.clone(),
        );
        r.register("connections_handled", "Connections finished by a worker", m.handled.clone());
        r.register(
            "connections_live",
            "Connections held by workers or waiting for one",
            m.live.clone(),
        );
        r.register(
            "connections_timed_out",
            "Connections reset because a worker held them past --connection-timeout",
            m.timed_out.clone(),
        );
        r.register(
            "proxy_headers_refused",
            "Connections closed because their PROXY protocol header was missing, malformed, too long or too late",
            m.proxy_refused.clone(),
        );
        r.register(
            "worker_restarts",
            "Workers started again after they died, or replaced by recycling",
            m.restarts.clone(),
        );
        r.register(
            "worker_restarts_by_cause",
            "Worker restarts by program and cause (exit, signal, hung, misbehaved, max_requests, max_memory, crash_loop); they add up to handover_worker_restarts_total",
            m.restarts_by_cause.clone(),
        );
        r.register("workers", "Workers by program and state", m.workers.clone());
        r.register(
            "workers_wanted",
            "Workers a program runs (--workers, then handover scale); spawn: the most children at once",
            m.workers_wanted.clone(),
        );
        r.register(
            "queue_length",
            "Connections accepted and waiting for a worker, by program (not the kernel's backlog)",
            m.queue.clone(),
        );
        r.register(
            "worker_connections",
            "prefork: connections a worker holds, by program and slot",
            m.worker_live.clone(),
        );
        r.register(
            "worker_busy",
            "prefork: 1 if a worker holds a connection, 0 if it is idle, by program and slot",
            m.worker_busy.clone(),
        );
        r.register(
            "worker_connections_handled",
            "prefork: connections the slot's current worker finished (from zero for each new worker)",
            m.worker_handled.clone(),
        );
        r.register(
            "worker_resident_memory_bytes",
            "Resident memory of each worker, by program and slot (read at scrape time)",
            m.worker_rss.clone(),
        );
        r.register(
            "upgrades",
            "Zero-downtime upgrades completed in this supervisor's lineage",
            m.upgrades.clone(),
        );
        r.register(
            "upgrades_failed",
            "Upgrades abandoned by this generation",
            m.upgrades_failed.clone(),
        );
        r.register(
            "log_writes_dropped",
            "Writes of log lines or worker output dropped because the stream or log file failed (a closed stderr)",
            m.log_writes_dropped.clone(),
        );
        r.register(
            "generation",
            "This supervisor's generation (1, plus one per upgrade)",
            m.generation.clone(),
        );
        r.register(
            "build_info",
            "1, labelled with this generation's version and the binary it was started from (as invoked)",
            m.build_info.clone(),
        );
        r.register(
            "handoff_latency_seconds",
            "prefork: time from sending a connection to a worker to reading its acknowledgement (worker channels are read 1 ms to 32 ms late)",
            m.handoff_latency.clone(),
        );
        m
    }

    /// Brings the series up to date with a status report.
    fn update(&self, s: &Status) {
        let advance = |c: &Counter, to: u64| {
            let _ = c.inc_by(to.saturating_sub(c.get()));
        };
        let t = &s.totals;
        advance(&self.accepted, t.accepted);
        advance(&self.dispatched, t.dispatched);
        advance(&self.redispatched, t.redispatched);
        advance(&self.refused, t.dropped);
        advance(&self.lost, t.lost_mid_request);
        advance(&self.handled, t.handled);
        advance(&self.restarts, t.restarts);
        advance(&self.upgrades, s.upgrades);
        advance(&self.upgrades_failed, s.upgrades_failed);
        advance(&self.log_writes_dropped, s.log_writes_dropped);
        advance(&self.timed_out, t.timed_out);
        advance(&self.proxy_refused, t.proxy_refused);
        self.generation.set(s.generation as i64);
        self.build_info.clear();
        let build = vec![
            ("version".to_owned(), s.version.clone()),
            ("binary".to_owned(), s.binary.clone()),
        ];
        self.build_info.get_or_create(&build).set(1);
        self.live.set(t.live as i64);
        self.workers.clear();
        self.restarts_by_cause.clear();
        for f in [&self.worker_live, &self.worker_busy, &self.worker_rss] {
            f.clear();
        }
        self.worker_handled.clear();
        self.workers_wanted.clear();
        self.queue.clear();
        for p in &s.programs {
            let program = || ("program".to_owned(), p.name.clone());
            // Every state, even with no worker in it (so a series drops to 0 instead of
            // vanishing).
            for state in WorkerState::ALL {
                let n = p.workers.iter().filter(|w| w.state == state).count();
                let labels = vec![program(), ("state".to_owned(), state.name().to_owned())];
                self.workers.get_or_create(&labels).set(n as i64);
            }
            self.workers_wanted.get_or_create(&vec![program()]).set(p.workers_wanted as i64);
            self.queue.get_or_create(&vec![program()]).set(p.queue as i64);
            for c in Cause::ALL {
                let labels = vec![program(), ("cause".to_owned(), c.name().to_owned())];
                let _ = self
                    .restarts_by_cause
                    .get_or_create(&labels)
                    .inc_by(p.totals.restarts_by_cause.get(c));
            }
            // Per slot: a slot's two workers during a reload are added up. (Spawn mode's
            // children are connections, not slots.)
            let per_slot = p.mode != Mode::Spawn;
            for w in p.workers.iter().filter(|w| w.pid.is_some() && per_slot) {
                let labels = vec![program(), ("slot".to_owned(), w.slot.to_string())];
                if let Some(live) = w.live.filter(|_| w.busy.is_some()) {
                    self.worker_live.get_or_create(&labels).inc_by(live as i64);
                }
                if let Some(busy) = w.busy {
                    let g = self.worker_busy.get_or_create(&labels);
                    g.set(g.get().max(i64::from(busy)));
                }
                if let Some(handled) = w.handled {
                    let _ = self.worker_handled.get_or_create(&labels).inc_by(handled);
                }
                if let Some(rss) = w.rss_bytes {
                    self.worker_rss.get_or_create(&labels).inc_by(rss as i64);
                }
            }
        }
    }

    pub(crate) fn render(&self, s: &Status) -> String {
        self.update(s);
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!("cannot encode metrics: {e}");
        }
        out
    }
}

/// Where the supervisor's status comes from (the same report as `handover status`).
pub(crate) trait StatusSource {
    async fn status(&self) -> Status;
}

/// How long one metrics connection may take, from accept to the last byte of the answer: a
/// client that sends half a request and waits is cut off then.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections answered at once; more get `503` at once instead of holding a descriptor.
const MAX_IN_FLIGHT: usize = 64;

/// Serves `GET /metrics` and `GET /ready` until the task is dropped.
pub(crate) async fn serve<S: StatusSource + 'static>(
    listener: tokio::net::TcpListener,
    metrics: Rc<Metrics>,
    source: Rc<S>,
) {
    let in_flight = Rc::new(std::cell::Cell::new(0usize));
    let mut errors = crate::listener::AcceptErrors::default();
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                errors.failed("metrics listener", &e);
                crate::engine::sleep_until(errors.resume_at()).await;
                continue;
            }
        };
        if in_flight.get() >= MAX_IN_FLIGHT {
            tokio::task::spawn_local(async move {
                let busy = respond(&mut stream, "503 Service Unavailable", "text/plain", "busy\n");
                let _ = tokio::time::timeout(Duration::from_secs(1), busy).await;
            });
            continue;
        }
        in_flight.set(in_flight.get() + 1);
        let (metrics, source, in_flight) =
            (Rc::clone(&metrics), Rc::clone(&source), Rc::clone(&in_flight));
        tokio::task::spawn_local(async move {
            match tokio::time::timeout(REQUEST_DEADLINE, answer(stream, &metrics, &*source)).await {
                Ok(Err(e)) => debug!("metrics request: {e}"),
                Err(_) => debug!("metrics request: no whole request within {REQUEST_DEADLINE:?}"),
                Ok(Ok(())) => {}
            }
            in_flight.set(in_flight.get() - 1);
        });
    }
}

async fn answer<S: StatusSource>(
    mut stream: tokio::net::TcpStream,
    metrics: &Metrics,
    source: &S,
) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    let mut n = 0;
    let head_end = loop {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            return Ok(());
        }
        n += read;
        if let Some(i) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if n == buf.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "")
                .await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await;
    }
    let path = path.split('?').next().unwrap_or("");
    if path == "/ready" {
        let (status, body) = match readiness(&source.status().await) {
            Ok(()) => ("200 OK", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        };
        let body = if method == "HEAD" { String::new() } else { body };
        return respond(&mut stream, status, "text/plain", &body).await;
    }
    if path != "/metrics" && path != "/" {
        return respond(&mut stream, "404 Not Found", "text/plain", "see /metrics or /ready\n")
            .await;
    }
    let body = metrics.render(&source.status().await);
    let body = if method == "HEAD" { String::new() } else { body };
    respond(
        &mut stream,
        "200 OK",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        &body,
    )
    .await
}

/// `GET /ready`: whether this supervisor should get traffic (a Kubernetes readiness probe, an
/// HAProxy `option httpchk`). Ready when it serves (not starting as a new generation that has
/// not taken over, not draining, not superseded by an upgrade) and every program has a worker
/// ready to take a connection (prefork: said hello; shared: stayed up `--min-uptime`; spawn:
/// a child starts per connection, so always). Otherwise the reason.
fn readiness(s: &Status) -> Result<(), String> {
    if !matches!(s.state, SupervisorState::Running | SupervisorState::Upgrading) {
        return Err(format!("the supervisor is {}", s.state));
    }
    for p in &s.programs {
        if p.state == ProgramState::Draining {
            return Err(format!("program {:?} is draining", p.name));
        }
        let ready = p.mode == Mode::Spawn
            || p.workers
                .iter()
                .any(|w| matches!(w.state, WorkerState::Ready | WorkerState::Running));
        if !ready {
            return Err(format!("program {:?} has no ready worker yet", p.name));
        }
    }
    Ok(())
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ProgramStatus, WorkerStatus};

    use WorkerState::{Backoff, CrashLooping, Ready, Running, Starting};

    fn program(mode: Mode, state: ProgramState, workers: &[WorkerState]) -> ProgramStatus {
        ProgramStatus {
            name: mode.name().to_owned(),
            mode,
            state,
            workers: workers
                .iter()
                .map(|&state| WorkerStatus { state, ..WorkerStatus::default() })
                .collect(),
            ..ProgramStatus::default()
        }
    }

    fn status(state: SupervisorState, programs: Vec<ProgramStatus>) -> Status {
        Status { state, programs, ..Status::default() }
    }

    #[test]
    fn ready_once_every_program_has_a_ready_worker_and_not_while_draining() {
        let serving = || {
            vec![
                program(Mode::Prefork, ProgramState::Running, &[Starting, Ready]),
                program(Mode::Shared, ProgramState::Running, &[Running, Backoff]),
                program(Mode::Spawn, ProgramState::Running, &[]),
            ]
        };
        let running = SupervisorState::Running;
        assert_eq!(readiness(&status(running, serving())), Ok(()));
        let upgrading = status(SupervisorState::Upgrading, serving());
        assert_eq!(readiness(&upgrading), Ok(()), "still serving");
        use SupervisorState as S;
        for state in [S::Draining, S::Starting, S::Upgraded] {
            let e = readiness(&status(state, serving())).unwrap_err();
            assert!(e.contains(state.name()), "{e}");
        }
        let mut p = serving();
        p[0] = program(Mode::Prefork, ProgramState::Running, &[Starting, Starting]);
        let e = readiness(&status(running, p)).unwrap_err();
        assert!(e.contains("\"prefork\" has no ready worker"), "{e}");
        let mut p = serving();
        p[1] = program(Mode::Shared, ProgramState::Running, &[Starting, CrashLooping]);
        assert!(readiness(&status(running, p)).is_err());
        let mut p = serving();
        p[2] = program(Mode::Spawn, ProgramState::Draining, &[]);
        assert!(readiness(&status(running, p)).unwrap_err().contains("draining"));
    }

    #[test]
    fn state_names_are_the_ones_status_json_always_showed() {
        let names = |all: &[&str]| all.join(" ");
        let w: Vec<_> = WorkerState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names(&w),
            "starting ready running serving draining stopping backoff crash-looping"
        );
        let p: Vec<_> = ProgramState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names(&p), "running reloading draining");
        let s: Vec<_> = SupervisorState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names(&s), "starting running upgrading upgraded draining");
        for state in WorkerState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.name()));
            assert_eq!(serde_json::from_str::<WorkerState>(&json).unwrap(), state);
        }
        let json = serde_json::to_string(&Mode::Spawn).unwrap();
        assert_eq!(json, format!("\"{}\"", Mode::Spawn.name()));
    }
}
